"""Dashboards: the global view, a country's view and an operation's funnel, with exports.

Thin views: the filters are read here, every figure comes from app/services/stats.py
(which starts each query from the access scope), and exports are recorded on the audit
trail there. A filter that cannot be understood is named on the page and ignored; an export
under such a filter is refused (400), so a file never claims a filter it did not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from app.db import utcnow
from app.extensions import db
from app.models import Operation, Priority
from app.services import DomainError, countries, stats
from app.web import current_actor, filter_args
from app.web.dashboards import bp, charts, worldmap
from app.web.dashboards.forms import DashboardFilterForm
from app.web.filters import duration

CHOOSE_OPERATION = "Choose an operation to export its funnel."
COUNTRY_TABLES = ("funnel", "timeline", "priorities", "overdue", "receivers", "outcomes", "hits")
SORT_COLUMNS = [
    ("country", "Country"), ("referrals", "Referrals"), ("open", "Open"), ("overdue", "Overdue"),
    ("median_ack", "Median time to acknowledge"), ("median_accept", "Median time to accept"),
    ("declined", "Declined"), ("transferred", "Transferred"), ("arrests", "Arrests"),
    ("children_safeguarded", "Children safeguarded"),
]
EXPORT_REFUSED = "The export was refused: some filters were not understood."


@dataclass
class FilterState:
    filters: stats.Filters
    form: DashboardFilterForm
    problems: list[str] = field(default_factory=list)
    operations: list[Operation] = field(default_factory=list)  # those the user may filter by

    @property
    def args(self) -> dict[str, str]:
        """The filters in force, as query arguments for links (map, sorting, exports)."""
        f = self.filters
        args = {}
        if f.operation_id is not None:
            args["operation"] = str(f.operation_id)
        if f.sent_from:
            args["sent_from"] = f.sent_from.isoformat()
        if f.sent_to:
            args["sent_to"] = f.sent_to.isoformat()
        if f.priority:
            args["priority"] = f.priority.value
        return args


def _operations() -> list[Operation]:
    return stats.filter_operations(db.session, current_user)


def _read_filters() -> FilterState:
    form = DashboardFilterForm(formdata=request.args)
    operations = _operations()
    form.set_operations(operations)
    form.validate()
    form.refine_messages()
    priority = form.priority.data if not form.priority.errors else None
    filters = stats.Filters(
        operation_id=None if form.operation.errors else form.operation.data,
        sent_from=form.parsed_date("sent_from"),
        sent_to=form.parsed_date("sent_to"),
        priority=Priority(priority) if priority else None,
    )
    try:
        stats.check_filters(db.session, current_user, filters)
    except DomainError as exc:
        target = getattr(form, exc.field or "", None)
        if target is not None:
            target.errors = list(target.errors) + [exc.message]
        if exc.field == "operation":
            filters = replace(filters, operation_id=None)
        else:
            filters = replace(filters, sent_from=None, sent_to=None)
    problems = [f"{f.label.text}: {error}" for f in form for error in f.errors]
    return FilterState(filters, form, problems, operations)


def _refuse_export(state: FilterState) -> None:
    if state.problems:
        abort(400, description=" ".join([EXPORT_REFUSED, *state.problems]))


def _country_code(code: str) -> str:
    if not countries.is_valid(code):
        abort(404)
    return code.upper()


@bp.context_processor
def helpers():
    def span(seconds: float | None) -> str:
        return "-" if seconds is None else duration(timedelta(seconds=seconds))

    return {"span": span, "country_name": countries.name}


def _export(dashboard: str, table: stats.Table, fmt: str, filters: stats.Filters, context: dict,
            now: datetime) -> Response:
    stats.record_export(db.session, current_actor(), dashboard, table, fmt, filters, context)
    if fmt == "csv":
        body, mimetype = stats.to_csv(table), "text/csv"
    else:
        body, mimetype = stats.to_json(table, dashboard, context, filters, now), "application/json"
    name = "-".join(["handoff", dashboard, *(str(v) for v in context.values()), table.name,
                     now.strftime("%Y%m%dT%H%MZ")])
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})


# --- global ---------------------------------------------------------------------------------

def _sort() -> tuple[str, bool]:
    key = request.args.get("sort", "referrals")
    if key not in stats.COUNTRY_SORTS:
        key = "referrals"
    order = request.args.get("order")
    descending = order != "asc" if order in ("asc", "desc") else key != "country"
    return key, descending


@bp.route("/")
@login_required
def global_view():
    state = _read_filters()
    sort, descending = _sort()
    cache = current_app.extensions["handoff_dashboard_cache"]
    dashboard = cache.global_dashboard(db.session, current_user, state.filters, now=utcnow(), sort=sort,
                                       descending=descending)
    values = dashboard.referrals_by_country()
    world = worldmap.render(
        values,
        href=lambda code: url_for(".country_view", code=code, **state.args),
        label=lambda code, n: f"{countries.name(code)}: {n} referral{'' if n == 1 else 's'}",
        title="Referrals by jurisdiction country",
    )
    breaks = worldmap.shade_breaks(values)
    off_map = sorted(code for code in values if code not in worldmap.codes_on_map())
    return render_template(
        "dashboards/global.html", state=state, dashboard=dashboard, world=world,
        legend=worldmap.legend(breaks), off_map=off_map, sort=sort, descending=descending,
        sort_columns=SORT_COLUMNS,
    )


@bp.route("/<any(headline, countries):table>.<any(csv, json):fmt>")
@login_required
def global_export(table: str, fmt: str):
    state = _read_filters()
    _refuse_export(state)
    sort, descending = _sort()
    now = utcnow()
    dashboard = stats.global_dashboard(db.session, current_user, state.filters, now=now, sort=sort,
                                       descending=descending)
    return _export("global", dashboard.tables()[table], fmt, state.filters, {}, now)


# --- country --------------------------------------------------------------------------------

@bp.route("/country/<code>")
@login_required
def country_view(code: str):
    canonical = _country_code(code)
    if code != canonical:
        # The filters as typed (the page names any it cannot read), and no other argument.
        return redirect(url_for(".country_view", code=canonical, **filter_args(DashboardFilterForm(formdata=None))),
                        301)
    state = _read_filters()
    now = utcnow()
    dashboard = stats.country_dashboard(db.session, current_user, canonical, state.filters, now=now)
    funnel_chart = charts.hbars(
        [charts.Bar(s.label, s.count, "stage") for s in dashboard.funnel]
        + [charts.Bar(s.label, s.count, "exit") for s in dashboard.exits],
        f"Status funnel, {dashboard.name}", scale_max=dashboard.totals.referrals or 1, chart_id="funnel",
    )
    series = [charts.Series("sent", "sent", "s-sent"), charts.Series("acknowledged", "acknowledged", "s-ack"),
              charts.Series("accepted", "accepted", "s-accept")]
    timeline_chart = charts.columns(
        [m.month for m in dashboard.months], series,
        [[m.sent, m.acknowledged, m.accepted] for m in dashboard.months],
        f"Handoffs per month, {dashboard.name}", chart_id="timeline",
    )
    priority_chart = charts.hbars(
        [charts.Bar(p.priority, p.referrals, f"prio-{p.priority}") for p in dashboard.priorities],
        f"Priority mix, {dashboard.name}", chart_id="priorities",
    )
    outcomes = dashboard.outcome_totals
    outcome_chart = charts.hbars(
        [charts.Bar("Investigations", outcomes.investigations, "stage"),
         charts.Bar("Arrests", outcomes.arrests, "outcome"),
         charts.Bar("Charges", outcomes.charges, "outcome"),
         charts.Bar("Children safeguarded", outcomes.children_safeguarded, "outcome")],
        f"Outcomes, {dashboard.name}", chart_id="outcomes",
    )
    return render_template(
        "dashboards/country.html", state=state, dashboard=dashboard, funnel_chart=funnel_chart,
        timeline_chart=timeline_chart, priority_chart=priority_chart, outcome_chart=outcome_chart,
        series=series, overdue_list=_overdue_list_url(canonical, state.filters),
    )


def _overdue_list_url(code: str, filters: stats.Filters) -> str:
    """The referral list showing every overdue referral of the country, the longest overdue
    first (it has no date filter: the dashboard's date range is not carried over)."""
    args = {"jurisdiction": code, "overdue": "y", "sort": "sent", "order": "asc"}
    if filters.operation_id is not None:
        args["operation"] = filters.operation_id
    if filters.priority:
        args["priority"] = filters.priority.value
    return url_for("referrals.index", **args)


@bp.route("/country/<code>/<any(" + ", ".join(COUNTRY_TABLES) + "):table>.<any(csv, json):fmt>")
@login_required
def country_export(code: str, table: str, fmt: str):
    canonical = _country_code(code)
    state = _read_filters()
    _refuse_export(state)
    now = utcnow()
    dashboard = stats.country_dashboard(db.session, current_user, canonical, state.filters, now=now,
                                        overdue_limit=None)
    tables = dashboard.tables()
    if table not in tables:
        abort(404)
    return _export("country", tables[table], fmt, state.filters, {"country": canonical}, now)


# --- operation ------------------------------------------------------------------------------

@bp.route("/operation")
@login_required
def operation_view():
    state = _read_filters()
    dashboard = chart = None
    if state.filters.operation_id is not None:
        dashboard = stats.operation_dashboard(db.session, current_user, state.filters)
        chart = charts.hbars(
            [charts.Bar(s.label, s.count, "outcome" if s.key in ("arrests", "children_safeguarded")
                        else "tip" if s.key in ("accounts", "holders") else "stage")
             for s in dashboard.funnel],
            f"Operation {dashboard.operation_code}: funnel", chart_id="opfunnel",
        )
    return render_template("dashboards/operation.html", state=state, dashboard=dashboard, chart=chart,
                           operations=state.operations, unplaced=stats.UNPLACED)


@bp.route("/operation/<any(funnel):table>.<any(csv, json):fmt>")
@login_required
def operation_export(table: str, fmt: str):
    state = _read_filters()
    _refuse_export(state)
    if state.filters.operation_id is None:
        if fmt == "json":
            abort(400, description=CHOOSE_OPERATION)
        flash(CHOOSE_OPERATION, "error")
        return redirect(url_for(".operation_view", **state.args), 303)
    now = utcnow()
    dashboard = stats.operation_dashboard(db.session, current_user, state.filters)
    return _export("operation", dashboard.tables()[table], fmt, state.filters,
                   {"operation": dashboard.operation_id}, now)
