"""Extension objects, not yet bound to an app (see create_app)."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from app.db import Database

db = Database()
login_manager = LoginManager()
csrf = CSRFProtect()
# Storage comes from RATELIMIT_STORAGE_URI: memory:// for one process, redis:// for several workers.
limiter = Limiter(key_func=get_remote_address, default_limits=[])
