"""Flask CLI commands: migrate, demo, users, audit, deconfliction, import-tip."""

from __future__ import annotations

import math
import signal
import sys
from contextlib import contextmanager

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from app.extensions import db
from app.models import Agency, Role
from app.services import DomainError, audit
from app.services.audit import SYSTEM


def register(app: Flask) -> None:
    app.cli.add_command(migrate_command)
    app.cli.add_command(demo_command)
    app.cli.add_command(users_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(deconfliction_cli)
    app.cli.add_command(import_tip_command)


def upgrade_database(url: str) -> None:
    from alembic import command

    from migrations.config import alembic_config

    command.upgrade(alembic_config(url), "head")


def _require_latest_schema() -> None:
    """The demo and an import write to most tables: on a database not brought up to date (a new
    one, named by HANDOFF_DATABASE_URL, say) they broke off with a traceback."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from migrations.config import alembic_config

    latest = set(ScriptDirectory.from_config(alembic_config(current_app.config["DATABASE_URL"])).get_heads())
    current = set(MigrationContext.configure(db.session.connection()).get_current_heads())
    if current != latest:
        raise click.ClickException(
            f"The database is not at the latest schema (revision {', '.join(sorted(current)) or 'none'}; this "
            f"version of Handoff needs {', '.join(sorted(latest))}): run `flask --app wsgi migrate` first.")


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    upgrade_database(current_app.config["DATABASE_URL"])
    click.echo("Database is at the latest revision.")


def _finite(_context, param, value: float) -> float:
    """FloatRange lets NaN through: every comparison with it is false."""
    if math.isnan(value):
        raise click.BadParameter("is not a number.", param=param)
    return value


@click.command("demo")
@click.option("--if-empty", is_flag=True, help="Do nothing when agencies exist already.")
@click.option("--scenario", type=click.Choice(["basic", "operation-h"]), default="basic", show_default=True,
              help="basic: about 30 referrals; operation-h: a provider tip at the real operation's scale, "
                   "imported and handed off over two years.")
@click.option("--scale", type=click.FloatRange(min=0.0001, max=10.0), default=1.0, show_default=True,
              callback=_finite,
              help="operation-h: scale every count (0.01 loads in seconds).")
@click.option("--seed", type=click.IntRange(min=0), default=2019, show_default=True,
              help="operation-h: random seed (-7 would give the data of 7).")
@with_appcontext
def demo_command(if_empty: bool, scenario: str = "basic", scale: float = 1.0, seed: int = 2019) -> None:
    """Load the demo: agencies in several countries, users of every role, about 30 referrals."""
    from app.demo import DEMO_PASSWORD, demo_logins, load_demo

    context = click.get_current_context()
    given = [f"--{name}" for name in ("scale", "seed")
             if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if scenario == "basic" and given:
        raise click.UsageError(f"{' and '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to "
                               "--scenario operation-h.")

    _require_latest_schema()
    session = db.session
    has_data = session.query(Agency.id).first() is not None
    if has_data and if_empty:
        click.echo("Demo data present already." if demo_logins(session) else
                   "The database holds data already, not the demo's: the demo was not loaded.")
    elif has_data:
        click.echo("The database is not empty; the demo loads into an empty database only: point "
                   "HANDOFF_DATABASE_URL at a new one (and run `flask --app wsgi migrate`), or give --if-empty "
                   "to leave this one as it is.", err=True)
        sys.exit(1)
    elif scenario == "operation-h":
        from app.demo.operation_h import load_scenario

        progress = _stage_printer()
        try:
            summary = load_scenario(session, current_app.extensions["handoff_passwords"], scale=scale, seed=seed,
                                    progress=progress)
        finally:
            progress.finish()
        session.commit()
        click.echo(summary.report())
    else:
        load_demo(session, current_app.extensions["handoff_passwords"])
        session.commit()
        click.echo("Demo loaded.")
    logins = demo_logins(session)
    if logins:
        click.echo(f"\nDemo sign-ins (password for all: {DEMO_PASSWORD}):")
    for email, role, agency in logins:
        click.echo(f"  {email:34} {role:8} {agency}")


users_cli = AppGroup("users", help="Manage user accounts.")


@users_cli.command("disable-inactive")
def users_disable_inactive() -> None:
    """Disable accounts unused for longer than HANDOFF_INACTIVE_ACCOUNT_DAYS (run daily)."""
    from app.services import security

    disabled = security.disable_inactive(db.session, current_app.extensions["handoff_security_policy"])
    db.session.commit()
    click.echo(f"Disabled {len(disabled)} inactive account(s).")
    for user in disabled:
        click.echo(f"  {user.email}")


@users_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--agency", "agency_name", required=True, help="The agency's exact name.")
@click.password_option(help="At least 12 characters; asked for when not given.")
def users_create(email: str, name: str, role: str, agency_name: str, password: str) -> None:
    """Create a user."""
    from app.services.users import create_user

    session = db.session
    agency = session.query(Agency).filter(Agency.name == agency_name).one_or_none()
    if agency is None:
        raise click.ClickException(f"No agency named {agency_name!r}.")
    try:
        user = create_user(session, SYSTEM, current_app.extensions["handoff_passwords"], email=email,
                           name=name, password=password, role=Role(role), agency_id=agency.id)
    except DomainError as exc:
        raise click.ClickException(f"{exc.field or 'error'}: {exc.message}") from exc
    session.commit()
    click.echo(f"Created {user.email} ({role}, {agency.name}).")


audit_cli = AppGroup("audit", help="The audit trail.")


@audit_cli.command("prune")
def audit_prune() -> None:
    """Delete entries older than the retention period (HANDOFF_AUDIT_RETENTION_DAYS)."""
    from datetime import timedelta

    from app.db import utcnow

    days = current_app.config["AUDIT_RETENTION_DAYS"]
    removed = audit.prune(db.session, utcnow() - timedelta(days=days))
    db.session.commit()
    click.echo(f"Removed {removed} entries older than {days} days; the chain is re-anchored.")


@audit_cli.command("verify")
def audit_verify() -> None:
    """Check the whole hash chain; name the first broken entry."""
    result = audit.verify(db.session)
    if result.ok:
        click.echo(f"Audit trail intact: {result.checked} entries verified.")
    else:
        click.echo(f"Audit trail BROKEN at entry {result.first_broken_seq}: {result.reason} "
                   f"({result.checked} entries verified before it).", err=True)
        sys.exit(1)


deconfliction_cli = AppGroup("deconfliction", help="Matching identifiers across referrals.")


@deconfliction_cli.command("recheck-common")
def deconfliction_recheck_common() -> None:
    """Bring the common-identifier marks in line with HANDOFF_COMMON_IDENTIFIER_THRESHOLD and
    with what referrals hold now; keys no longer common raise their hits."""
    from app.services import deconfliction

    result = deconfliction.recheck_common(db.session, SYSTEM)
    db.session.commit()
    click.echo(result.summary)


# --- provider tips ----------------------------------------------------------------------------

def _stage_printer():
    """A progress callback for the tip pipeline: a bar while rows are validated, then one line
    per stage with its count. Its `finish()` ends a bar still open (the pipeline stopped while
    it read the rows): on a terminal the bar hides the cursor, and what is printed next would
    go on the bar's line."""
    state: dict = {}
    labels = {"cluster": "Clustering {total:,} accounts into holders", "route": "Placing, triaging and routing "
              "{total:,} holders", "write": "Writing {total:,} new accounts", "match": "Deconfliction matching",
              "simulate": "Simulating handoffs of {total:,} referrals"}

    def progress(stage: str, done: int, total: int) -> None:
        if stage == "validate":
            bar = state.get("bar")
            if bar is None:
                bar = state["bar"] = click.progressbar(length=max(total, 1), label="Validating rows",
                                                       file=sys.stdout, show_percent=True)
                bar.__enter__()
                state["done"] = 0
            bar.update(done - state["done"])
            state["done"] = done
            if done >= total:
                bar.__exit__(None, None, None)
                state.pop("bar")
            return
        if done == 0 and state.get("stage") != stage:
            state["stage"] = stage
            click.echo(labels.get(stage, stage).format(total=total) + " ...")

    def finish() -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.__exit__(None, None, None)

    progress.finish = finish
    return progress


@click.command("import-tip")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--operation", "operation_code", required=True, help="The operation's code.")
@click.option("--skip-invalid", is_flag=True, help="Import the good rows; the bad ones go to the reject file.")
@click.option("--reject-file", type=click.Path(dir_okay=False, writable=True),
              help="Write the bad rows here (CSV: their tip fields, then line, field, reason).")
@click.option("--as", "as_email", help="Import as this user (a liaison officer or manager of the lead agency); "
                                       "without it the import runs as the system for the lead agency.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes validating rows (default: one per core).")
@with_appcontext
def import_tip_command(file: str, operation_code: str, skip_invalid: bool, reject_file: str | None,
                       as_email: str | None, workers: int | None) -> None:
    """Import a provider tip (CSV or JSON Lines; docs/tip-format.md) into an operation."""
    import os
    import time

    from sqlalchemy import select

    from app.models import Operation
    from app.services import Forbidden, NotFound, users
    from app.services.audit import Actor
    from app.services.tips import files, importer

    _require_latest_schema()
    if reject_file:
        folder = os.path.dirname(os.path.abspath(reject_file))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise click.BadParameter(f"cannot write a file in {folder}.", param_hint="--reject-file")
        if os.path.exists(reject_file):
            # A device reads as empty (/dev/null) and a pipe waits for a writer: neither is a
            # file to remove and write again.
            if not os.path.isfile(reject_file):
                raise click.BadParameter("is not a regular file (a device or a pipe); name a file, or leave "
                                         "--reject-file out to write none.", param_hint="--reject-file")
            if os.path.samefile(reject_file, file):
                raise click.BadParameter("is the tip itself: its bad rows would overwrite it.",
                                         param_hint="--reject-file")
            if not _is_reject_file(reject_file):
                raise click.BadParameter("exists and is neither empty nor a reject file (its first line does not "
                                         "end in line,field,reason); name a new file, or remove this one first.",
                                         param_hint="--reject-file")
            os.remove(reject_file)  # an earlier import's: whatever becomes of this one, it is not its
    session = db.session
    operation = session.scalar(select(Operation).where(Operation.code == operation_code.strip().upper()))
    if operation is None:
        codes = session.scalars(select(Operation.code).order_by(Operation.code).limit(21)).all()
        known = (f"the operations are: {', '.join(codes[:20])}{', ...' if len(codes) > 20 else ''}" if codes else
                 "none is open yet: an administrator or a manager opens one on the Operations page")
        raise click.ClickException(f"No operation with the code {operation_code!r}; {known}.")
    actor = Actor(None, "cli")
    if as_email:
        user = users.find_by_email(session, as_email)  # as sign-in finds it
        if user is None or not user.is_active:
            raise click.ClickException(f"No active user {as_email!r}.")
        actor = Actor(user, "cli")
        if user.agency_id != operation.lead_agency_id:  # (the web does not say the operation exists)
            refused = Forbidden(f"{user.email} is not of {operation.code}'s lead agency "
                                f"({operation.lead_agency.name}), which alone imports its tips.")
            _refused(operation, file, actor, refused)
            raise click.ClickException(refused.message)
    with open(file, "rb") as handle:
        data = handle.read()
    click.echo(f"{os.path.basename(file)}: {len(data):,} bytes, operation {operation.code} "
               f"(lead agency {operation.lead_agency.name}).")
    started = time.perf_counter()
    progress = _stage_printer()
    try:
        with _stopping_at_the_next_step() as stop:
            try:
                result = importer.import_tip(session, actor, operation.id, data, file, skip_invalid=skip_invalid,
                                             workers=workers, progress=stop.checking(progress))
            finally:
                progress.finish()
            stop.check()
            stop.committing = True  # the commit runs to its end: a signal now comes too late
            session.commit()
        if stop.received:
            click.echo(f"\n{signal.Signals(stop.received[0]).name} came as the import was committed: it stands.",
                       err=True)
    except importer.TipRejected as exc:
        _refused(operation, file, actor, exc)
        _print_row_errors(exc.errors)
        if reject_file and exc.reject_csv:
            _write_reject_file(reject_file, exc.reject_csv)
        # (A file refused for its header has no rows to reject, nor to skip.)
        helps = ([] if skip_invalid or not exc.validation.accounts else ["--skip-invalid imports the good rows"]) + (
            [] if reject_file or not exc.reject_csv else ["--reject-file PATH writes the bad ones"])
        raise click.ClickException(exc.message + (f" ({'; '.join(helps)})" if helps else ""))
    except (NotFound, Forbidden, DomainError) as exc:
        _refused(operation, file, actor, exc)
        raise click.ClickException(exc.message) from exc
    except _Stopped as stopped:  # Ctrl-C or SIGTERM: on record, as any import broken off
        _refused(operation, file, actor, None)
        click.echo(f"\nThe import was stopped ({stopped.signal.name}): nothing of it was written.", err=True)
        sys.exit(128 + stopped.signal)  # the shell's status for a command a signal ended
    except Exception:  # broken off (as it committed, too): on record, then the traceback
        _refused(operation, file, actor, None)
        raise
    if result.errors:
        _print_row_errors(result.errors)
        if not reject_file:
            click.echo(f"{result.rejected:,} invalid rows were skipped; --reject-file PATH would have kept them.")
    if reject_file:  # of no rows too: the import read the file
        _write_reject_file(reject_file, result.reject_csv or files.reject_csv([], [], {}))
    if result.ignored_columns:
        click.echo(f"Columns not read, as they are no tip field: {', '.join(result.ignored_columns)}.", err=True)
    if result.differing_known:
        click.echo(f"{result.differing_known:,} known accounts are given other identifiers, countries or counts in "
                   "this file; they are kept as first imported.", err=True)
    merged = sum(len(absorbed) for _, absorbed in result.merges)
    click.echo(
        f"Imported in {time.perf_counter() - started:.1f} s: {result.rows:,} rows, {result.rejected:,} rejected; "
        f"{result.new_accounts:,} new accounts ({result.known_accounts:,} already known); "
        f"{result.new_holders:,} new holders, {result.joined_holders:,} joined by new accounts, {merged:,} merged; "
        f"{result.common_identifiers:,} common identifiers; {len(result.routing.created):,} draft referrals created, "
        f"{len(result.routing.changed):,} updated; "
        f"{len(result.hits.created) if result.hits else 0:,} new deconfliction hits."
    )


class _Stopped(BaseException):
    """Ctrl-C or SIGTERM during an import (no Exception, which the import's own handlers would
    catch)."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal = signal.Signals(signal_number)


class _StopRequests:
    """Ctrl-C or SIGTERM received during an import, acted on at its next step."""

    def __init__(self):
        self.received: list[int] = []
        self.committing = False

    def check(self) -> None:
        if self.received:
            raise _Stopped(self.received[0])

    def checking(self, progress):
        """The progress callback, checking first: the import's steps report progress."""
        def report(stage: str, done: int, total: int) -> None:
            self.check()
            progress(stage, done, total)
        return report


@contextmanager
def _stopping_at_the_next_step():
    """Ctrl-C or SIGTERM (a service manager stopping the command) inside the block stops the
    import at its next step (a progress report, or the commit), raising _Stopped there, so that
    it is rolled back and its failure recorded. Raised at once, inside a statement, it left the
    connection broken with the database still locked (SQLite) or the audit chain held
    (PostgreSQL), and the failure could not be recorded. A second signal stops it at once,
    unless the commit has begun: that runs to its end. A SIGINT that was ignored (a background
    job's) stays ignored."""
    requests = _StopRequests()

    def note(signal_number, _frame):
        if not requests.committing:
            if requests.received:
                raise _Stopped(signal_number)
            click.echo(f"\n{signal.Signals(signal_number).name}: stopping at the import's next step "
                       "(again to stop at once) ...", err=True)
        requests.received.append(signal_number)

    signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {number: signal.signal(number, note) for number in signals}
    try:
        yield requests
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _refused(operation, file: str, actor, refused) -> None:
    """An import that wrote nothing: rolled back, and only its refusal committed (audited)."""
    from app.services.tips import files, importer

    db.session.rollback()
    importer.record_refusal(db.session, actor, operation, files.stored_name(file), refused)
    db.session.commit()


def _print_row_errors(errors, limit: int = 50) -> None:
    for error in errors[:limit]:
        click.echo(f"  {error}", err=True)
    if len(errors) > limit:
        click.echo(f"  ... and {len(errors) - limit:,} more", err=True)


def _is_reject_file(path: str) -> bool:
    """Whether a file is empty or a reject file an import wrote, and may be written over: a
    database, or the tip, is not."""
    from app.services.tips import files

    try:
        with open(path, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return False
    return not first or first.rstrip(b"\r\n").endswith(",".join(files.REJECT_COLUMNS).encode())


def _write_reject_file(path: str, text: str) -> None:
    """Checked before the import, the path can still fail (a full disk): say so and go on, as
    the import's outcome stands either way."""
    from app.services.tips import files

    try:
        with open(path, "wb") as handle:
            handle.write(files.reject_file_bytes(text))
    except OSError as exc:
        click.echo(f"The reject file could not be written ({exc.strerror}: {path}); the rows above are the "
                   f"rejected ones.", err=True)
        return
    click.echo(f"Reject file written: {path}")
