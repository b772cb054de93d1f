from flask import Blueprint

bp = Blueprint("hits", __name__)

from app.web.hits import views  # noqa: E402,F401
