from datetime import date

from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import Optional, ValidationError
from wtforms.widgets import DateInput

from app.models import Priority
from app.web import plausible_date

DATE_MESSAGE = "Write the date as YYYY-MM-DD."


def optional_int(value):
    if value in (None, "", "None"):
        return None
    return int(value)


def iso_date(form, field) -> None:
    """Parse YYYY-MM-DD into `field.parsed` (None when empty); the typed text stays as data."""
    field.parsed = None
    text = (field.data or "").strip()
    if not text:
        return
    try:
        parsed = date.fromisoformat(text)
    except ValueError:
        raise ValidationError(DATE_MESSAGE) from None
    if len(text) != 10:  # fromisoformat also takes 20260301
        raise ValidationError(DATE_MESSAGE)
    field.parsed = parsed


class DashboardFilterForm(FlaskForm):
    """GET filters shared by every dashboard (no CSRF: reading only)."""

    class Meta:
        csrf = False

    operation = SelectField("Operation", coerce=optional_int, validators=[Optional()])
    sent_from = StringField("Sent from (UTC)", widget=DateInput(), validators=[iso_date, plausible_date])
    sent_to = StringField("Sent to (UTC)", widget=DateInput(), validators=[iso_date, plausible_date])
    priority = SelectField("Priority", choices=[("", "Any")] + [(p.value, p.value) for p in Priority],
                           validators=[Optional()])

    def set_operations(self, operations) -> None:
        self.operation.choices = [("", "Any")] + [(o.id, o.code) for o in operations]

    def parsed_date(self, name: str) -> date | None:
        field = getattr(self, name)
        return None if field.errors else getattr(field, "parsed", None)

    def refine_messages(self) -> None:
        """Plain words for what WTForms calls an invalid choice."""
        if self.operation.errors:
            self.operation.errors = ["Unknown operation."]
        if self.priority.errors:
            self.priority.errors = ["Choose P1, P2, P3 or P4."]
