"""Sign-in (password, then second factor or enrolment), sign-out, re-authentication and the
account page."""

from __future__ import annotations

import time
from functools import wraps

import segno
from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_required, login_user, logout_user

from app.extensions import db, limiter
from app.models import User
from app.services import DomainError, security
from app.web import current_actor, form_refused, form_status, passwords, safe_next
from app.web.auth import bp
from app.web.auth.forms import (
    ConfirmForm,
    EmailChangeForm,
    EnrolForm,
    LoginForm,
    PasswordChangeForm,
    ReauthForm,
    SecondFactorForm,
)

# Same words whether the account exists, is locked, disabled or the password is wrong.
LOGIN_FAILED = "Invalid e-mail or password."
PENDING_SECONDS = 300


def _policy() -> security.Policy:
    return current_app.extensions["handoff_security_policy"]


def _login_limit() -> str:
    return current_app.config["LOGIN_RATE_LIMIT"]


def recent_auth_required(view):
    """Ask for the password (and second factor) again before a sensitive change."""

    @wraps(view)
    @login_required
    def wrapper(*args, **kwargs):
        window = current_app.config["REAUTH_WINDOW"].total_seconds()
        if time.time() - session.get("auth_at", 0) > window:
            flash("Confirm it is you to continue.")
            return redirect(url_for("auth.reauth", next=request.path))
        return view(*args, **kwargs)

    return wrapper


def _finish_sign_in(user: User):
    next_path = session.get("pending_next")
    session.clear()  # a fresh session: nothing from before sign-in carries over
    security.start_session(db.session, user, request.remote_addr)
    login_user(user)
    session.permanent = True
    session["auth_at"] = time.time()
    return redirect(safe_next(next_path) or url_for("referrals.index"))


def _pending_user() -> User | None:
    user_id, started = session.get("pending_user"), session.get("pending_at", 0)
    if user_id is None or time.time() - started > PENDING_SECONDS:
        return None
    user = db.session.get(User, user_id)
    return user if user is not None and user.is_active else None


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("referrals.index"))
    form = LoginForm()
    if form.validate_on_submit():
        result = security.authenticate(db.session, passwords(), _policy(), form.email.data, form.password.data,
                                       request.remote_addr)
        if result.outcome is security.Outcome.SIGNED_IN:
            session["pending_next"] = request.args.get("next")
            return _finish_sign_in(result.user)
        if result.outcome is security.Outcome.REFUSED:
            # Failures, counters and locks belong on the record although the answer is a refusal.
            db.commit_request()
            form.form_errors.append(LOGIN_FAILED)
            return render_template("auth/login.html", form=form, banner=current_app.config["LOGON_BANNER"]), 401
        session.clear()
        session.update(pending_user=result.user.id, pending_at=time.time(), pending_next=request.args.get("next"))
        target = "auth.second_factor" if result.outcome is security.Outcome.NEEDS_SECOND_FACTOR else "auth.enrol"
        return redirect(url_for(target))
    status = form_status(form)
    return render_template("auth/login.html", form=form, banner=current_app.config["LOGON_BANNER"]), status


@bp.route("/login/second-factor", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def second_factor():
    user = _pending_user()
    if user is None or not user.mfa_enabled:
        return redirect(url_for("auth.login"))
    form = SecondFactorForm()
    if form.validate_on_submit():
        actor = security.Actor(user, request.remote_addr)
        if security.verify_second_factor(db.session, actor, user, form.code.data):
            return _finish_sign_in(user)
        db.commit_request()
        form.code.errors = ["That code is not valid."]
        return render_template("auth/second_factor.html", form=form), 401
    return render_template("auth/second_factor.html", form=form)


def _qr(user: User) -> str:
    uri = security.provisioning_uri(user.mfa_secret, user.email, current_app.config["MFA_ISSUER"])
    return segno.make(uri, error="m").svg_data_uri(scale=5)


@bp.route("/login/enrol", methods=["GET", "POST"])
@limiter.limit(_login_limit, methods=["POST"])
def enrol():
    """Users whose role requires a second factor set one up before their first session."""
    user = _pending_user()
    if user is None or user.mfa_enabled:
        return redirect(url_for("auth.login"))
    return _enrolment(user, finish=lambda codes: _show_codes_then_sign_in(user, codes))


def _enrolment(user: User, finish):
    if not user.mfa_secret:
        user.mfa_secret = security.new_mfa_secret()  # pending until a code proves the app has it
        db.session.flush()
        db.commit_request()
    form = EnrolForm()
    if form.validate_on_submit():
        try:
            codes = security.enable_mfa(db.session, security.Actor(user, request.remote_addr), user,
                                        user.mfa_secret, form.code.data)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            return finish(codes)
    status = form_status(form)
    return render_template("auth/enrol.html", form=form, qr=_qr(user), secret=user.mfa_secret), status


def _show_codes_then_sign_in(user: User, codes: list[str]):
    _finish_sign_in(user)
    return render_template("auth/recovery_codes.html", codes=codes)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    security.end_session(db.session, current_user.session_token)
    security.audit.record(db.session, current_actor(), "auth.logout", "user", current_user.id)
    logout_user()
    session.clear()
    flash("You are signed out.")
    return redirect(url_for("auth.login"))


@bp.route("/reauth", methods=["GET", "POST"])
@login_required
@limiter.limit(_login_limit, methods=["POST"])
def reauth():
    form = ReauthForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        if security.reauthenticate(db.session, passwords(), _policy(), user, form.password.data,
                                   form.code.data or "", request.remote_addr):
            session["auth_at"] = time.time()
            return redirect(safe_next(request.args.get("next")) or url_for("auth.account"))
        db.commit_request()
        form.form_errors.append("That did not match.")
        return render_template("auth/reauth.html", form=form), 401
    return render_template("auth/reauth.html", form=form), form_status(form)


@bp.route("/account")
@login_required
def account():
    return render_template(
        "auth/account.html", password_form=PasswordChangeForm(formdata=None),
        email_form=EmailChangeForm(formdata=None), confirm_form=ConfirmForm(formdata=None),
        mfa_required=current_user.role.value in _policy().mfa_required_roles,
    )


@bp.route("/account/password", methods=["GET", "POST"])
@recent_auth_required
def change_password():
    form = PasswordChangeForm()
    if form.validate_on_submit():
        try:
            security.change_password(db.session, current_actor(), passwords(), current_user._get_current_object(),
                                     form.password.data, keep_token=current_user.session_token)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("Password changed. Your other sessions were signed out.")
            return redirect(url_for("auth.account"), 303)
    return render_template("auth/change.html", form=form, title="Change password"), form_status(form)


@bp.route("/account/email", methods=["GET", "POST"])
@recent_auth_required
def change_email():
    form = EmailChangeForm()
    if form.validate_on_submit():
        try:
            security.change_email(db.session, current_actor(), current_user._get_current_object(), form.email.data)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("E-mail changed.")
            return redirect(url_for("auth.account"), 303)
    return render_template("auth/change.html", form=form, title="Change e-mail"), form_status(form)


@bp.route("/account/mfa", methods=["GET", "POST"])
@recent_auth_required
def account_mfa():
    user = current_user._get_current_object()
    if user.mfa_enabled:
        return redirect(url_for("auth.account"))
    return _enrolment(user, finish=lambda codes: render_template("auth/recovery_codes.html", codes=codes))


@bp.route("/account/mfa/reset", methods=["POST"])
@recent_auth_required
def reset_mfa():
    form = ConfirmForm()
    if form.validate_on_submit():
        security.reset_mfa(db.session, current_actor(), current_user._get_current_object())
        flash("Second factor removed. Set up a new one now.")
        return redirect(url_for("auth.account_mfa"), 303)
    return redirect(url_for("auth.account"), 303)
