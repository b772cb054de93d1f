from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from app.db import utcnow
from app.extensions import db
from app.models import TLP, Agency, HandlingCode, Priority, Status
from app.services import Conflict, DomainError, countries, deconfliction
from app.services import referrals as service
from app.services import subjects as subjects_service
from app.services.access import get_visible_referral, visible_operations
from app.services.identifiers import IdentifierKind
from app.services.tips import holders as holder_service
from app.web import current_actor, filter_args, flash_refused, form_refused, form_status
from app.web.referrals import bp
from app.web.referrals.forms import (
    ActionForm,
    IdentifiersForm,
    ListFilterForm,
    OutcomeForm,
    ReferralForm,
    SubjectForm,
    TransferForm,
)


@bp.route("/")
@login_required
def home():
    return redirect(url_for("referrals.index"))


def _other_agencies():
    return db.session.scalars(
        select(Agency).where(Agency.id != current_user.agency_id).order_by(Agency.name)
    ).all()


def _operations():
    return db.session.scalars(visible_operations(current_user).order_by("code")).all()


@bp.route("/referrals")
@login_required
def index():
    form = ListFilterForm(formdata=request.args)
    form.status.choices = [("", "Any")] + [(s.value, s.value) for s in Status]
    form.jurisdiction.choices = [("", "Any")] + countries.choices()
    form.priority.choices = [("", "Any")] + [(p.value, p.value) for p in Priority]
    form.operation.choices = [("", "Any")] + [(o.id, o.code) for o in _operations()]
    form.sort.choices = [(key, key.capitalize()) for key in service.SORTS]
    if not form.validate():
        flash("Some filters were not understood and were ignored.", "error")
        for field in form:
            if field.errors:  # ignored: the control shows what the list applies instead
                field.data = field.default
    data = {name: field.data for name, field in form._fields.items()}
    filters = service.ListFilters(
        status=Status(data["status"]) if data["status"] else None,
        jurisdiction=data["jurisdiction"] or None,
        priority=Priority(data["priority"]) if data["priority"] else None,
        overdue=bool(data["overdue"]),
        operation_id=data["operation"],
        direction=data["direction"] or None,
        sort=data["sort"] or "updated",
        descending=data["order"] != "asc",
        page=data["page"] or 1,
    )
    page = service.list_referrals(db.session, current_user, filters, per_page=current_app.config["PAGE_SIZE"])
    return render_template("referrals/index.html", form=form, page=page, args=filter_args(form))


def _data_from(form: ReferralForm) -> service.ReferralData:
    return service.ReferralData(
        receiver_agency_id=form.receiver_agency_id.data,
        jurisdiction=form.jurisdiction.data,
        priority=Priority(form.priority.data),
        operation_id=form.operation_id.data,
        risk_access_to_children=form.risk_access_to_children.data,
        risk_position_of_authority=form.risk_position_of_authority.data,
        risk_previous_convictions=form.risk_previous_convictions.data,
        risk_plans_to_meet=form.risk_plans_to_meet.data,
        risk_contact_offending=form.risk_contact_offending.data,
        grade_a=form.grade_a.data,
        grade_b=form.grade_b.data,
        grade_c=form.grade_c.data,
        material_description=(form.material_description.data or "").strip(),
        tlp=TLP(form.tlp.data),
        handling_code=HandlingCode(form.handling_code.data),
        summary=(form.summary.data or "").strip(),
    )


@bp.route("/referrals/new", methods=["GET", "POST"])
@login_required
def new():
    if not current_user.can_work_referrals:
        abort(403)
    form = ReferralForm()
    form.set_choices(_other_agencies(), _operations())
    if form.validate_on_submit():
        try:
            referral = service.create_draft(db.session, current_actor(), _data_from(form))
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"Draft {referral.reference} saved.")
            return redirect(url_for("referrals.detail", referral_id=referral.id), 303)
    return render_template("referrals/form.html", form=form, referral=None), form_status(form)


@bp.route("/referrals/<int:referral_id>/edit", methods=["GET", "POST"])
@login_required
def edit(referral_id: int):
    referral = get_visible_referral(db.session, current_user, referral_id)
    if not current_user.can_work_referrals or referral.sender_agency_id != current_user.agency_id:
        abort(403)
    if referral.status is not Status.DRAFT:  # sent on: no form to fill in that could not be saved
        flash(f"{referral.reference} was sent; only drafts are edited.")
        return redirect(url_for("referrals.detail", referral_id=referral_id), 303)
    form = ReferralForm(obj=referral if request.method == "GET" else None)
    form.set_choices(_other_agencies(), _operations())
    if request.method == "GET":
        form.version.data = referral.version
    if form.validate_on_submit():
        try:
            service.update_draft(db.session, current_actor(), referral_id, int(form.version.data or 0), _data_from(form))
        except Conflict as exc:
            flash_refused(exc)
            return redirect(url_for("referrals.detail", referral_id=referral_id), 303)
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("Draft saved.")
            return redirect(url_for("referrals.detail", referral_id=referral_id), 303)
    status = form_status(form)
    holders, carried = holder_service.on_referral(db.session, current_user, referral.id)
    return render_template("referrals/form.html", form=form, referral=referral, holders=holders,
                           carried=carried), status


@bp.route("/referrals/<int:referral_id>")
@login_required
def detail(referral_id: int):
    referral = service.view(db.session, current_actor(), referral_id)
    now = utcnow()
    actions = service.allowed_actions(referral, current_user)
    action_form = ActionForm(formdata=None, version=referral.version)
    transfer_form = None
    if "transfer" in actions:
        transfer_form = TransferForm(formdata=None, version=referral.version)
        transfer_form.set_choices(
            [a for a in _other_agencies() if a.id != referral.sender_agency_id]
        )
    outcome_form = (OutcomeForm(formdata=None, version=referral.version)
                    if service.can_record_outcome(referral, current_user) else None)
    awaiting, awaiting_total = (holder_service.on_referral(db.session, current_user, referral.id, awaiting_review=True)
                                if "send" in actions else ([], 0))
    return render_template(
        "referrals/detail.html",
        referral=referral,
        history=service.history(referral, current_user),
        now=now,
        actions=actions,
        action_form=action_form,
        transfer_form=transfer_form,
        outcome_form=outcome_form,
        can_consent=service.can_grant_consent(referral, current_user),
        transfer_waits=service.transfer_waits_for_consent(referral, current_user),
        can_edit=referral.status is Status.DRAFT and current_user.can_work_referrals
        and referral.sender_agency_id == current_user.agency_id,
        awaiting=awaiting,
        awaiting_total=awaiting_total,
        **_deconfliction_context(referral),
    )


def _workable(referral_id: int) -> None:
    """404 outside the user's scope first (so ids cannot be probed), then 403 for roles that
    only read; which side may take a step is the service's to say."""
    get_visible_referral(db.session, current_user, referral_id)
    if not current_user.can_work_referrals:
        abort(403)


@bp.route("/referrals/<int:referral_id>/<any(send, withdraw, acknowledge, accept, decline, transfer, close):action>",
          methods=["POST"])
@login_required
def act(referral_id: int, action: str):
    _workable(referral_id)
    form = TransferForm() if action == "transfer" else ActionForm()
    if action == "transfer":
        form.set_choices(_other_agencies())
    back = url_for("referrals.detail", referral_id=referral_id)
    if not form.validate_on_submit():
        for errors in form.errors.values():
            for error in errors:
                flash(error, "error")
        return redirect(back, 303)
    if action == "send" and not request.form.get("send_awaiting_review"):
        # Once sent, a holder stays with the receiver whatever its review decides: the person
        # sends such a draft knowingly, or decides the holders first.
        _awaiting, waiting = holder_service.on_referral(db.session, current_user, referral_id, 0, awaiting_review=True)
        if waiting:
            flash(f"Not sent: {waiting:,} account holder{' awaits' if waiting == 1 else 's await'} a jurisdiction "
                  "review on this draft. Decide them first, or tick that they go as they are.", "error")
            return redirect(back, 303)
    try:
        result = service.transition(
            db.session, current_actor(), referral_id, action, int(form.version.data),
            form.note.data or "",
            transfer_to_agency_id=getattr(form, "transfer_to_agency_id", None) and form.transfer_to_agency_id.data,
        )
    except DomainError as exc:  # a refused step or a conflict: nothing is written
        flash_refused(exc)
        return redirect(back, 303)
    if action == "transfer":
        flash(f"Transferred as {result.reference}.")
    else:
        flash(f"Referral {result.reference} is now {result.status.value}.")
    return redirect(back, 303)


@bp.route("/referrals/<int:referral_id>/consent", methods=["POST"])
@login_required
def consent(referral_id: int):
    _workable(referral_id)
    form = ActionForm()
    back = url_for("referrals.detail", referral_id=referral_id)
    if not form.validate_on_submit():
        flash("The form was incomplete; try again.", "error")
        return redirect(back, 303)
    try:
        service.grant_transfer_consent(db.session, current_actor(), referral_id, int(form.version.data))
    except DomainError as exc:  # a refused step or a conflict: nothing is written
        flash_refused(exc)
        return redirect(back, 303)
    flash("Consent to onward transfer recorded.")
    return redirect(back, 303)


@bp.route("/referrals/<int:referral_id>/outcomes", methods=["POST"])
@login_required
def outcome(referral_id: int):
    _workable(referral_id)
    form = OutcomeForm()
    back = url_for("referrals.detail", referral_id=referral_id)
    if form.validate_on_submit():
        try:
            service.record_outcome(
                db.session, current_actor(), referral_id,
                service.OutcomeData(form.occurred_on.data, form.arrests.data, form.charges.data,
                                    form.children_safeguarded.data, (form.note.data or "").strip()),
                int(form.version.data),
            )
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash("Outcome recorded.")
            return redirect(back, 303)
    for name, errors in form.errors.items():
        for error in errors:
            flash(f"{getattr(form, name).label.text}: {error}" if hasattr(form, name) else error, "error")
    for error in form.form_errors:
        flash(error, "error")
    return redirect(back, 303)


# --- subjects and deconfliction -------------------------------------------------------------

def _deconfliction_context(referral) -> dict:
    """The subjects section and the hits of the referral (for the viewer's agency only)."""
    can_add = subjects_service.can_add_subjects(referral, current_user)
    subjects = subjects_service.subjects_page(db.session, current_user, referral.id,
                                              max(1, request.args.get("subjects_page", 1, type=int)))
    return dict(
        subjects=subjects,
        holder_pages=holder_service.holder_pages(db.session, current_user, [s.id for s in subjects.items]),
        can_add_subjects=can_add,
        subject_form=SubjectForm(formdata=None) if can_add else None,
        hits=deconfliction.hits_for_referral(db.session, current_user, referral.id),
        kind_labels=deconfliction.KIND_LABELS,
    )


def _identifier_options(form: IdentifiersForm) -> dict:
    return dict(kind=IdentifierKind(form.kind.data) if form.kind.data else None, platform=form.platform.data or None)


@bp.route("/referrals/<int:referral_id>/subjects", methods=["GET", "POST"])
@login_required
def add_subject(referral_id: int):
    referral = get_visible_referral(db.session, current_user, referral_id)
    if not subjects_service.can_add_subjects(referral, current_user):
        abort(403)
    form = SubjectForm()
    if form.validate_on_submit():
        try:
            subject = subjects_service.add_subject(db.session, current_actor(), referral_id, form.label.data or "",
                                                   form.identifiers.data, **_identifier_options(form))
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"{subject.label} saved with {len(subject.identifiers)} identifier"
                  f"{'' if len(subject.identifiers) == 1 else 's'}, and matched.")
            return redirect(url_for("referrals.detail", referral_id=referral_id) + "#subjects", 303)
    status = form_status(form)
    return render_template("hits/subject_form.html", form=form, referral=referral, subject=None), status


@bp.route("/referrals/<int:referral_id>/subjects/<int:subject_id>/identifiers", methods=["GET", "POST"])
@login_required
def add_identifiers(referral_id: int, subject_id: int):
    referral = get_visible_referral(db.session, current_user, referral_id)
    subject = subjects_service.subject_on_referral(db.session, referral, subject_id)
    if not subjects_service.can_add_subjects(referral, current_user) or subject.agency_id != current_user.agency_id:
        abort(403)
    form = IdentifiersForm()
    if form.validate_on_submit():
        try:
            added = subjects_service.add_identifiers(db.session, current_actor(), referral_id, subject_id,
                                                     form.identifiers.data, **_identifier_options(form))
        except DomainError as exc:
            form_refused(form, exc)
        else:
            flash(f"{len(added)} new identifier{'' if len(added) == 1 else 's'} saved, and matched.")
            return redirect(url_for("referrals.detail", referral_id=referral_id) + "#subjects", 303)
    status = form_status(form)
    return render_template("hits/subject_form.html", form=form, referral=referral, subject=subject), status
