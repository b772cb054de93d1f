from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from app.db import utcnow
from app.extensions import db
from app.services import audit
from app.services.audit import Actor
from app.services.users import find_by_email
from app.web import passwords, safe_next
from app.web.auth import bp
from app.web.auth.forms import LoginForm

# Same words whether the account exists, is disabled or the password is wrong.
LOGIN_FAILED = "Invalid e-mail or password."


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("referrals.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = find_by_email(db.session, form.email.data)
        ok = passwords().verify(user.password_hash if user else None, form.password.data)
        if user is not None and ok and user.is_active:
            login_user(user)
            user.last_login_at = utcnow()
            audit.record(db.session, Actor(user, request.remote_addr), "auth.login", "user", user.id)
            return redirect(safe_next(request.args.get("next")) or url_for("referrals.index"))
        audit.record(
            db.session, Actor(None, request.remote_addr), "auth.login", "user",
            user.id if user else None, outcome="failure", detail={"email": form.email.data[:254]},
        )
        # The failure is committed although the answer is a refusal: it belongs on the trail.
        db.commit_request()
        form.form_errors.append(LOGIN_FAILED)
        return render_template("auth/login.html", form=form), 401
    return render_template("auth/login.html", form=form), 422 if form.errors else 200


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    audit.record(db.session, Actor(current_user._get_current_object(), request.remote_addr), "auth.logout",
                 "user", current_user.id)
    logout_user()
    flash("You are signed out.")
    return redirect(url_for("auth.login"))
