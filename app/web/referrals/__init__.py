from flask import Blueprint

bp = Blueprint("referrals", __name__)

from app.web.referrals import views  # noqa: E402,F401
