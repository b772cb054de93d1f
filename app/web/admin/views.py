from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from app.db import utcnow
from app.extensions import db
from app.models import Agency, AgencyKind, Operation, Role, User
from app.services import DomainError, audit, directory, users
from app.services.exports import to_csv
from app.services.access import listed_operations, visible_audit_entries
from app.web import current_actor, filter_args, form_refused, form_status, passwords, roles_required
from app.web.admin import bp
from app.web.admin.forms import AgencyForm, AuditFilterForm, OperationForm, UserCreateForm, UserEditForm
from app.web.auth.forms import ConfirmForm
from app.web.auth.views import recent_auth_required
from app.web.filters import viewer_zone


admin_required = roles_required(Role.ADMIN)


def admin_recent_auth_required(view):
    """Admin actions on other people's accounts need a fresh confirmation of identity."""
    return admin_required(recent_auth_required(view))


def _agencies():
    return db.session.scalars(select(Agency).order_by(Agency.name)).all()


@bp.route("/agencies")
@admin_required
def agencies():
    return render_template("admin/agencies.html", agencies=_agencies())


def _agency_data(form: AgencyForm) -> directory.AgencyData:
    return directory.AgencyData(
        name=form.name.data, kind=AgencyKind(form.kind.data), country_code=form.country_code.data or None,
        desk_email=form.desk_email.data, desk_phone=form.desk_phone.data, timezone=form.timezone.data,
        is_focal_point=form.is_focal_point.data,
    )


@bp.route("/agencies/new", methods=["GET", "POST"])
@admin_required
def agency_new():
    form = AgencyForm()
    form.set_choices()
    if form.validate_on_submit():
        try:
            agency = directory.create_agency(db.session, current_actor(), _agency_data(form))
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"Agency {agency.name} created.")
            return redirect(url_for("admin.agencies"), 303)
    return render_template("admin/agency_form.html", form=form, agency=None), form_status(form)


@bp.route("/agencies/<int:agency_id>", methods=["GET", "POST"])
@admin_required
def agency_edit(agency_id: int):
    agency = db.session.get(Agency, agency_id) or abort(404)
    form = AgencyForm(obj=agency)
    form.set_choices()
    if form.validate_on_submit():
        try:
            directory.update_agency(db.session, current_actor(), agency_id, _agency_data(form))
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("Agency saved.")
            return redirect(url_for("admin.agencies"), 303)
    return render_template("admin/agency_form.html", form=form, agency=agency), form_status(form)


@bp.route("/users")
@admin_required
def users_index():
    rows = db.session.scalars(select(User).order_by(User.email)).all()
    return render_template("admin/users.html", users=rows)


@bp.route("/users/new", methods=["GET", "POST"])
@admin_recent_auth_required
def user_new():
    form = UserCreateForm()
    form.agency_id.choices = [("", "Choose...")] + [(a.id, a.name) for a in _agencies()]
    if form.validate_on_submit():
        try:
            user = users.create_user(
                db.session, current_actor(), passwords(), email=form.email.data, name=form.name.data,
                password=form.password.data, role=Role(form.role.data), agency_id=form.agency_id.data,
            )
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"User {user.email} created.")
            return redirect(url_for("admin.users_index"), 303)
    return render_template("admin/user_form.html", form=form, user=None), form_status(form)


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
@admin_recent_auth_required
def user_edit(user_id: int):
    user = db.session.get(User, user_id) or abort(404)
    form = UserEditForm(obj=user)
    form.agency_id.choices = [(a.id, a.name) for a in _agencies()]
    if form.validate_on_submit():
        try:
            directory.update_user(db.session, current_actor(), user_id, role=Role(form.role.data),
                                  is_active=form.is_active.data, agency_id=form.agency_id.data, name=form.name.data)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("User saved.")
            return redirect(url_for("admin.users_index"), 303)
    return render_template("admin/user_form.html", form=form, user=user, confirm_form=ConfirmForm(formdata=None),
                           locked=user.locked_at is not None), form_status(form)


@bp.route("/users/<int:user_id>/unlock", methods=["POST"])
@admin_recent_auth_required
def user_unlock(user_id: int):
    if ConfirmForm().validate_on_submit():
        user = directory.unlock_user(db.session, current_actor(), user_id)
        flash(f"{user.email} unlocked.")
    return redirect(url_for("admin.user_edit", user_id=user_id), 303)


@bp.route("/users/<int:user_id>/reset-mfa", methods=["POST"])
@admin_recent_auth_required
def user_reset_mfa(user_id: int):
    if ConfirmForm().validate_on_submit():
        user = directory.reset_user_mfa(db.session, current_actor(), user_id)
        flash(f"Second factor of {user.email} removed; they set up a new one at their next sign-in.")
    return redirect(url_for("admin.user_edit", user_id=user_id), 303)


@bp.route("/operations")
@login_required
def operations():
    rows = db.session.execute(listed_operations(current_user).order_by(Operation.code)).all()
    can_open = current_user.role in (Role.ADMIN, Role.MANAGER)
    return render_template("admin/operations.html", operations=rows, can_open=can_open)


@bp.route("/operations/new", methods=["GET", "POST"])
@login_required
def operation_new():
    if current_user.role not in (Role.ADMIN, Role.MANAGER):
        abort(403)
    form = OperationForm()
    agencies = _agencies() if current_user.role is Role.ADMIN else [current_user.agency]
    form.lead_agency_id.choices = [(a.id, a.name) for a in agencies]
    if not form.is_submitted():
        form.opened_on.data = utcnow().astimezone(viewer_zone()).date()  # today where the viewer is
        form.lead_agency_id.data = current_user.agency_id
    if form.validate_on_submit():
        try:
            operation = directory.create_operation(
                db.session, current_actor(),
                directory.OperationData(form.code.data, form.lead_agency_id.data, form.opened_on.data,
                                        form.description.data or ""),
            )
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"Operation {operation.code} opened.")
            return redirect(url_for("admin.operations"), 303)
    return render_template("admin/operation_form.html", form=form), form_status(form)


_manager_or_admin = roles_required(Role.ADMIN, Role.MANAGER)

AUDIT_PAGE_SIZE = 50


def _audit_query():
    """The filter form and the entries it selects; a filter not understood is left out."""
    form = AuditFilterForm(formdata=request.args)
    form.validate()
    value = lambda f: None if f.errors else f.data  # noqa: E731
    filters = audit.TrailFilters(
        action=(value(form.action) or "").strip() or None, outcome=value(form.outcome) or None,
        user_id=value(form.user_id), date_from=value(form.date_from), date_to=value(form.date_to),
        zone=viewer_zone(),  # where the page shows the times, so the days are there too
    )
    return form, audit.filtered(visible_audit_entries(current_user), filters)


@bp.route("/audit")
@_manager_or_admin
def audit_trail():
    form, query = _audit_query()
    if form.errors:
        flash("Some filters were not understood and were ignored.", "error")
    page = audit.trail_page(db.session, query, 1 if form.page.errors else form.page.data or 1, AUDIT_PAGE_SIZE)
    return render_template("admin/audit.html", form=form, page=page, args=filter_args(form))


# Entries in one export: a file a spreadsheet opens, built within a request.
AUDIT_EXPORT_MAX = 100_000
EXPORT_REFUSED = "The export was refused: some filters were not understood."


@bp.route("/audit.csv")
@_manager_or_admin
def audit_export():
    form, query = _audit_query()
    problems = form.filter_problems()
    if problems:  # the page ignores such a filter and says so; a file would pass for the filtered trail
        abort(400, description=" ".join([EXPORT_REFUSED, *problems]))
    rows = db.session.execute(audit.with_names(query).limit(AUDIT_EXPORT_MAX + 1)).all()
    if len(rows) > AUDIT_EXPORT_MAX:  # a cut trail would pass for the whole one
        flash(f"More than {AUDIT_EXPORT_MAX:,} entries match these filters. Narrow the dates or the action, "
              "and export each part.", "error")
        return redirect(url_for("admin.audit_trail", **filter_args(form)), 303)
    detail = {"rows": len(rows), "filters": filter_args(form), "timezone": viewer_zone().key}  # the days' zone
    audit.record(db.session, current_actor(), "audit.export", detail=detail)
    body = to_csv(
        ["seq", "at_utc", "user_id", "user", "agency_id", "agency", "address", "action", "object_type", "object_id",
         "outcome", "detail", "hash"],
        ([e.seq, e.at.isoformat(), e.user_id, user_name, e.agency_id, agency_name, e.address, e.action,
          e.object_type, e.object_id, e.outcome, e.detail, e.hash] for e, user_name, agency_name in rows),
    )
    return Response(body, mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=handoff-audit.csv"})
