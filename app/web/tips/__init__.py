from flask import Blueprint

bp = Blueprint("tips", __name__)

from app.web.tips import views  # noqa: E402,F401
