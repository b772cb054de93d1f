"""Deconfliction pages: hits (list, detail, acknowledge, resolve), the blind check,
notifications and, for admins, common identifiers. Thin views over
app/services/deconfliction.py."""


from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.extensions import db
from app.models import HitStatus, Role
from app.services import Conflict, DomainError
from app.services import deconfliction as service
from app.services.access import get_visible_hit
from app.services.identifiers import IdentifierKind
from app.web import current_actor, filter_args, flash_refused, form_refused, form_status, roles_required
from app.web.hits import bp
from app.web.hits.forms import AcknowledgeForm, BlindCheckForm, HitFilterForm, RecheckCommonForm, ResolveForm
from app.web.referrals.forms import STALE_PAGE


@bp.route("/hits")
@login_required
def index():
    form = HitFilterForm(formdata=request.args)
    if not form.validate():
        flash("Some filters were not understood and were ignored.", "error")
    data = {name: (None if field.errors else field.data) for name, field in form._fields.items()}
    filters = service.HitFilters(
        status=HitStatus(data["status"]) if data["status"] else None,
        kind=IdentifierKind(data["kind"]) if data["kind"] else None,
        page=data["page"] or 1,
    )
    page = service.list_hits(db.session, current_user, filters, per_page=current_app.config["PAGE_SIZE"])
    return render_template("hits/index.html", form=form, page=page, args=filter_args(form))


def _forms_for(hit, ack_form=None, resolve_form=None):
    ack_form = ack_form or AcknowledgeForm(formdata=None, version=hit.version)
    resolve_form = resolve_form or ResolveForm(formdata=None, version=hit.version)
    resolve_form.lead_agency_id.choices = [("", "Choose...")] + hit.lead_choices
    return ack_form, resolve_form


def _render_detail(hit_id: int, resolve_form=None):
    hit = service.view_hit(db.session, current_actor(), hit_id)
    ack_form, resolve_form = _forms_for(hit, resolve_form=resolve_form)
    return render_template("hits/detail.html", hit=hit, ack_form=ack_form, resolve_form=resolve_form), \
        form_status(resolve_form)


@bp.route("/hits/<int:hit_id>")
@login_required
def detail(hit_id: int):
    return _render_detail(hit_id)


def _notified(hit) -> str:
    """Who heard of the step: the service tells the other party, and a possible duplicate has
    none (both referrals are the acting agency's)."""
    return "" if hit.is_duplicate else " The other agency has been notified."


@bp.route("/hits/<int:hit_id>/acknowledge", methods=["POST"])
@login_required
def acknowledge(hit_id: int):
    hit = get_visible_hit(db.session, current_user, hit_id)  # a foreign id answers 404, not a form error
    if not current_user.can_work_referrals:
        abort(403)
    form = AcknowledgeForm()
    back = url_for("hits.detail", hit_id=hit_id)
    if not form.validate_on_submit():  # a version that is no number is a stale page (page_version)
        flash(STALE_PAGE if STALE_PAGE in form.version.errors else "The form expired or was incomplete; try again.",
              "error")
        return redirect(back, 303)
    try:
        service.acknowledge(db.session, current_actor(), hit_id, int(form.version.data))
    except DomainError as exc:  # refused or stale: nothing is written
        flash_refused(exc)
        return redirect(back, 303)
    flash("Acknowledged." + _notified(hit))
    return redirect(back, 303)


@bp.route("/hits/<int:hit_id>/resolve", methods=["POST"])
@login_required
def resolve(hit_id: int):
    hit = get_visible_hit(db.session, current_user, hit_id)  # 404 first, then the role
    if not current_user.can_work_referrals:
        abort(403)
    form = ResolveForm()
    form.lead_agency_id.choices = [("", "Choose...")] + [
        (a, "") for a in dict.fromkeys((hit.agency_low_id, hit.agency_high_id))
    ]
    if form.validate_on_submit():
        try:
            service.resolve(db.session, current_actor(), hit_id, int(form.version.data), form.lead_agency_id.data,
                            form.note.data or "")
        except Conflict as exc:  # reload the page to see the change and the current version
            flash_refused(exc)
            return redirect(url_for("hits.detail", hit_id=hit_id), 303)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("Resolved." + _notified(hit))
            return redirect(url_for("hits.detail", hit_id=hit_id), 303)
    if not form.errors and not form.form_errors:
        form.form_errors.append("The form could not be read; try again.")
    return _render_detail(hit_id, resolve_form=form)


@bp.route("/check", methods=["GET", "POST"])
@login_required
def check():
    if not current_user.can_work_referrals:
        abort(403)
    form = BlindCheckForm()
    form.set_choices()
    result = None
    if form.validate_on_submit():
        try:
            result = service.blind_check(
                db.session, current_actor(), form.identifiers.data,
                kind=IdentifierKind(form.kind.data) if form.kind.data else None,
                platform=form.platform.data or None,
                region=form.jurisdiction.data or None,
            )
        except DomainError as exc:
            form_refused(form, exc)
    return render_template("hits/check.html", form=form, result=result), form_status(form)


LIST_PAGE_SIZE = 50  # notifications and common identifiers per page


@bp.route("/notifications")
@login_required
def notifications():
    page = max(1, request.args.get("page", 1, type=int) or 1)
    items, total = service.list_notifications(db.session, current_user, page=page, per_page=LIST_PAGE_SIZE)
    pages = max(1, -(-total // LIST_PAGE_SIZE))
    return render_template("hits/notifications.html", items=items, total=total, page=min(page, pages), pages=pages)


admin_required = roles_required(Role.ADMIN)


@bp.route("/admin/common-identifiers")
@admin_required
def common_identifiers():
    page = max(1, request.args.get("page", 1, type=int) or 1)
    items, total = service.list_common_identifiers(db.session, current_actor(), page=page, per_page=LIST_PAGE_SIZE)
    pages = max(1, -(-total // LIST_PAGE_SIZE))
    return render_template("hits/common.html", items=items, total=total, page=min(page, pages), pages=pages,
                           threshold=current_app.config["COMMON_IDENTIFIER_THRESHOLD"], recheck=RecheckCommonForm())


@bp.route("/admin/common-identifiers/recheck", methods=["POST"])
@admin_required
def recheck_common_identifiers():
    if not RecheckCommonForm().validate_on_submit():
        flash("The form could not be read; try again.", "error")
    else:
        flash(service.recheck_common(db.session, current_actor()).summary)
    return redirect(url_for("hits.common_identifiers"), 303)
