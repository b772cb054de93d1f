"""Provider tips: the import page, the holder lists (all, review, unrouted), the holder page and
the lead agency's decisions. Thin views over app/services/tips/.

An upload starts the import in the background (app/web/tips/background.py) and answers with
the import's status page, which refreshes itself until the import ends and then shows its
summary or its problems, with the reject file to download (its own route, audited).
"""

from __future__ import annotations

from flask import Response, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from app.extensions import db
from app.models import RISK_FLAGS, HolderRouting, Operation, Priority
from app.models.tip import TipImport
from app.services import Conflict, DomainError, NotFound, countries
from app.services.access import get_visible_holder, led_operations, visible_operations
from app.services.tips import holders as service
from app.services.tips import files, imports
from app.services.tips.reader import RowError
from app.services.tips.routing import RISK_COLUMNS
from app.web import current_actor, filter_args, flash_refused, form_refused
from app.web.tips import background, bp
from app.web.tips.forms import HolderFilterForm, JurisdictionForm, LeaveClosedForm, RiskForm, UploadForm

# The importer's stages, as the status page names them.
STAGES = {
    "queued": "Starting",
    "validate": "Checking every row",
    "cluster": "Finding the account holders",
    "route": "Placing, triaging and routing the holders",
    "write": "Writing accounts, holders and identifiers",
    "match": "Deconfliction matching",
    "done": "Done",
}

# The upload's size is bounded by MAX_CONTENT_LENGTH (config; HANDOFF_MAX_CONTENT_LENGTH), and a
# bigger request gets the friendly 413 page of app/web/errors.py; a bigger tip goes through
# `flask import-tip`.


def _require_worker() -> None:
    if not current_user.can_work_referrals:
        abort(403)


@bp.context_processor
def _work_lists() -> dict:
    """Whether the tip pages offer the lead agency's work (review, unrouted, import): to another
    agency's people they would only say it leads no operation. Asked once a request (a work
    list that read the led operations already knows)."""
    def leads_an_operation() -> bool:
        if "leads_an_operation" not in g:
            g.leads_an_operation = bool(db.session.scalar(select(led_operations(current_user).exists())))
        return g.leads_an_operation
    return {"leads_an_operation": leads_an_operation}


@bp.route("/")
@login_required
def index():
    summaries, tips = service.overview(db.session, current_user)
    return render_template("tips/index.html", summaries=summaries, tips=tips,
                           uploads=imports.recent_imports(db.session, current_user))


@bp.route("/import", methods=["GET", "POST"])
@login_required
def upload():
    _require_worker()
    operations = db.session.scalars(led_operations(current_user).order_by(Operation.code)).all()
    form = UploadForm()
    form.operation.choices = [("", "Choose...")] + [(op.id, op.code) for op in operations]
    if request.method == "GET" and request.args.get("operation", type=int):
        form.operation.data = request.args.get("operation", type=int)
    if form.validate_on_submit():
        running = _still_running()
        if running is not None:
            return _show_running(running, form, operations)
        storage = form.file.data
        data = storage.read()
        try:
            record = imports.start(db.session, current_actor(), form.operation.data, storage.filename or "", data,
                                   form.skip_invalid.data)
        except Conflict as exc:  # the other request of a double click started an import just now
            db.session.rollback()
            running = _still_running()
            if running is not None:
                return _show_running(running, form, operations)
            form_refused(form, exc)
        except DomainError as exc:
            form_refused(form, exc)
            if isinstance(exc, imports.FileRefused):  # an image, say: on the trail all the same
                imports.record_file_refusal(db.session, current_actor(), exc)
                db.commit_request()
        else:
            background.start_after_commit(db.session, current_app._get_current_object(), record.id, data,
                                          current_user.id, request.remote_addr)
            return redirect(url_for("tips.import_status", import_id=record.id), 303)
    status = 422 if (form.errors or form.form_errors) else 200
    return render_template("tips/upload.html", form=form, operations=operations), status


def _show_running(running: TipImport, form: UploadForm, operations: list[Operation]):
    """A second click, or a second file: one import at a time each (each holds its file in
    memory and keeps a worker process per core busy). The running import's page, if still
    theirs to read."""
    flash(imports.STILL_RUNNING, "error")
    try:
        imports.get_import(db.session, current_user, running.id)
    except NotFound:  # in an operation their agency no longer leads
        return render_template("tips/upload.html", form=form, operations=operations), 409
    return redirect(url_for("tips.import_status", import_id=running.id), 303)


def _still_running() -> TipImport | None:
    """The user's import that still runs, in whichever operation, once one whose process
    stopped is recorded as such."""
    running = imports.own_running_import(db.session, current_user)
    # Asked after reading the record: an outcome committed in between is never overwritten.
    if running is None or _settled(running, background.running_here(current_app, running.id)).finished:
        return None
    return running


def _settled(record: TipImport, running_here: bool) -> TipImport:
    """The import's record, recorded as interrupted first if the process running it stopped."""
    if imports.runner_stopped(record, running_here=running_here):
        if background.record_interrupted(current_app._get_current_object(), record.id):
            imports.record_interruption(db.session, current_actor(), record)
            # The record is marked on a connection of its own, for good: its audit entry stands
            # with it, whatever this request answers (an upload refused next rolls back).
            db.commit_request()
        db.session.refresh(record)
    return record


@bp.route("/imports/<int:import_id>")
@login_required
def import_status(import_id: int):
    running_here = background.running_here(current_app, import_id)  # asked first: see runner_stopped
    record = _settled(imports.get_import(db.session, current_user, import_id), running_here)
    errors = [RowError(*error) for error in record.errors or []]
    progress = ((running_here and background.progress_here(current_app, import_id))
                or background.Progress(record.stage, record.done, record.total))
    return render_template("tips/import_status.html", record=record, progress=progress, errors=errors,
                           error_count=record.error_count, stages=STAGES)


@bp.route("/imports/<int:import_id>/rejects.csv")
@login_required
def reject_file(import_id: int):
    record = imports.get_import(db.session, current_user, import_id)
    body = files.reject_file_bytes(imports.record_reject_download(db.session, current_actor(), record))
    return Response(body, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="handoff-import-{record.id}-rejects.csv"'})


def _filters(form: HolderFilterForm) -> service.HolderFilters:
    if not form.validate():
        flash("Some filters were not understood and were ignored.", "error")
    data = {name: (None if field.errors else field.data) for name, field in form._fields.items()}
    return service.HolderFilters(
        operation_id=data["operation"],
        country=data["country"] or None,
        priority=Priority(data["priority"]) if data["priority"] else None,
        routing=HolderRouting(data["routing"]) if data["routing"] else None,
        review=bool(data["review"]),
        max_confidence=float(data["max_confidence"]) if data["max_confidence"] else None,
        page=data["page"] or 1,
    )


@bp.route("/holders")
@login_required
def holders():
    form = HolderFilterForm(formdata=request.args)
    form.set_choices(db.session.scalars(visible_operations(current_user).order_by(Operation.code)).all())
    page = service.list_holders(db.session, current_user, _filters(form), per_page=current_app.config["PAGE_SIZE"])
    return render_template("tips/holders.html", form=form, page=page, args=filter_args(form), title="Account holders",
                           endpoint="tips.holders",
                           references=service.list_referral_references(db.session, current_user, page.items))


def _led_holder_filters() -> HolderFilterForm:
    """The filters of a work list of the operations the user's agency leads."""
    form = HolderFilterForm(formdata=request.args)
    led = db.session.scalars(led_operations(current_user).order_by(Operation.code)).all()
    form.set_choices(led)
    g.leads_an_operation = bool(led)  # for the pages (`_work_lists`)
    return form


@bp.route("/review")
@login_required
def review():
    form = _led_holder_filters()
    page = service.review_list(db.session, current_user, _filters(form), per_page=current_app.config["PAGE_SIZE"])
    reasons = service.review_reasons(db.session, current_user, page.items)
    return render_template("tips/review.html", form=form, page=page, reasons=reasons, args=filter_args(form))


@bp.route("/unrouted")
@login_required
def unrouted():
    form = _led_holder_filters()
    summary, page = service.unrouted(db.session, current_user, _filters(form),
                                     per_page=current_app.config["PAGE_SIZE"])
    return render_template("tips/unrouted.html", form=form, page=page, summary=summary, args=filter_args(form),
                           references=service.list_referral_references(db.session, current_user,
                                                                                    page.items))


def _render_holder(subject_id: int, jurisdiction_form=None, risk_form=None, leave_form=None, status: int = 200):
    view = service.view_holder(db.session, current_actor(), subject_id)
    jurisdiction_form = jurisdiction_form or JurisdictionForm(formdata=None)
    jurisdiction_form.set_choices(view.evidence_countries)
    risk_form = risk_form or RiskForm(formdata=None, obj=view.holder)
    leave_form = leave_form or LeaveClosedForm(formdata=None)
    for form in (jurisdiction_form, risk_form, leave_form):
        form.show(view.holder)  # what the page shows now, also after a refused decision
    return render_template("tips/holder.html", view=view, holder=view.holder, jurisdiction_form=jurisdiction_form,
                           risk_form=risk_form, leave_form=leave_form, risk_flags=RISK_FLAGS), status


@bp.route("/holders/<int:subject_id>")
@login_required
def holder(subject_id: int):
    return _render_holder(subject_id)


def _decided(decision: service.Decision, what: str) -> None:
    """Says what was decided, of which holder, and where it went: from a list, the row is gone."""
    holder = decision.holder
    db.session.refresh(holder)  # routing wrote where it went in bulk
    if decision.stays_sent is not None:
        sent = decision.stays_sent  # raised already if the holder became more urgent than it
        flash(f"{what} Its referral {sent.reference} was sent already and stays with {sent.receiver.name}, "
              f"at priority {sent.priority.value}.")
    elif decision.moved:
        if holder.receiver is None:  # worked in house, or waiting for a receiver
            flash(f"{what} The holder was routed again ({holder.routing.label.lower()}).")
        else:
            on = f", on draft {holder.referral.reference}" if holder.referral else ""
            flash(f"{what} The holder was routed again, to {holder.receiver.name}{on}.")
    else:
        flash(what)


@bp.route("/holders/<int:subject_id>/jurisdiction", methods=["POST"])
@login_required
def set_jurisdiction(subject_id: int):
    get_visible_holder(db.session, current_user, subject_id)  # a foreign id answers 404 first
    _require_worker()
    form = JurisdictionForm()
    form.set_choices()
    if form.validate_on_submit():
        try:
            decision = service.set_jurisdiction(db.session, current_actor(), subject_id, form.country.data,
                                                form.note.data or "", seen_at=form.seen_at())
        except DomainError as exc:
            form_refused(form, exc)
        else:
            _decided(decision, f"Jurisdiction of {decision.holder.label} set to "
                               f"{countries.name(decision.holder.jurisdiction)}.")
            return _back_after_decision(subject_id)
    if not form.errors and not form.form_errors:
        form.form_errors.append("The form could not be read; try again.")
    return _render_holder(subject_id, jurisdiction_form=form, status=422)


@bp.route("/holders/<int:subject_id>/leave-closed", methods=["POST"])
@login_required
def leave_closed(subject_id: int):
    get_visible_holder(db.session, current_user, subject_id)  # a foreign id answers 404 first
    _require_worker()
    form = LeaveClosedForm()
    if form.validate_on_submit():
        try:
            service.leave_with_closed_case(db.session, current_actor(), subject_id, form.note.data or "",
                                           seen_at=form.seen_at())
        except DomainError as exc:
            flash_refused(exc)
        else:
            flash("Left with its closed case, off the review list. New material from a later import puts it back.")
        return _back_after_decision(subject_id)
    if not form.errors and not form.form_errors:
        form.form_errors.append("The form could not be read; try again.")
    return _render_holder(subject_id, leave_form=form, status=422)


def _back_after_decision(subject_id: int):
    """Back to where the decision was taken: the review list (its `back_` fields: the person
    goes on working the list as they had it), else the holder's page."""
    if request.form.get("back") == "review":
        names = HolderFilterForm(formdata=None)._fields
        return redirect(url_for("tips.review", **{name: request.form[f"back_{name}"] for name in names
                                                   if request.form.get(f"back_{name}")}), 303)
    return redirect(url_for("tips.holder", subject_id=subject_id), 303)


@bp.route("/holders/<int:subject_id>/risk", methods=["POST"])
@login_required
def set_risk(subject_id: int):
    get_visible_holder(db.session, current_user, subject_id)
    _require_worker()
    form = RiskForm()
    if form.validate_on_submit():
        try:
            decision = service.set_risk_flags(db.session, current_actor(), subject_id,
                                              {name: bool(getattr(form, name).data) for name in RISK_COLUMNS},
                                              seen_at=form.seen_at())
        except DomainError as exc:
            form_refused(form, exc)
        else:
            _decided(decision, f"Risk flags of {decision.holder.label} recorded; it is now "
                               f"{decision.holder.priority.value}.")
            return redirect(url_for("tips.holder", subject_id=subject_id), 303)
    if not form.errors and not form.form_errors:
        form.form_errors.append("The form could not be read; try again.")
    return _render_holder(subject_id, risk_form=form, status=422)
