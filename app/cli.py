"""Flask CLI commands: migrate, demo, users, audit."""

from __future__ import annotations

import sys

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


def upgrade_database(url: str) -> None:
    from alembic import command

    from migrations.config import alembic_config

    command.upgrade(alembic_config(url), "head")


@click.command("migrate")
@with_appcontext
def migrate_command() -> None:
    """Bring the database schema up to date (alembic upgrade head)."""
    upgrade_database(current_app.config["DATABASE_URL"])
    click.echo("Database is at the latest revision.")


@click.command("demo")
@click.option("--if-empty", is_flag=True, help="Do nothing when agencies exist already.")
@with_appcontext
def demo_command(if_empty: bool) -> None:
    """Load the demo: agencies in several countries, users of every role, about 30 referrals."""
    from app.demo import DEMO_PASSWORD, load_demo

    session = db.session
    has_data = session.query(Agency.id).first() is not None
    if has_data and if_empty:
        click.echo("Demo data present already.")
    elif has_data:
        click.echo("The database is not empty; the demo loads into an empty database only.", err=True)
        sys.exit(1)
    else:
        load_demo(session, current_app.extensions["handoff_passwords"])
        session.commit()
        click.echo("Demo loaded.")
    from app.demo import demo_logins

    click.echo(f"\nDemo sign-ins (password for all: {DEMO_PASSWORD}):")
    for email, role, agency in demo_logins(session):
        click.echo(f"  {email:34} {role:8} {agency}")


users_cli = AppGroup("users", help="Manage user accounts.")


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
