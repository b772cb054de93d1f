from flask_wtf import FlaskForm
from wtforms import (
    BooleanField, DateField, EmailField, IntegerField, PasswordField, SelectField, StringField, TextAreaField,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from app.models import AgencyKind, Role
from app.services import countries
from app.services.directory import time_zones
from app.services.users import MIN_PASSWORD_LENGTH
from app.web import plain_text, plausible_date


# The ids an INTEGER column holds (as `<int:...>` in a URL): a number past them fails in the query.
USER_ID_RANGE = NumberRange(min=1, max=2**31 - 1, message="No user has this id.")


def optional_int(value):
    if value in (None, "", "None"):
        return None
    return int(value)


class AgencyForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200), plain_text])
    kind = SelectField("Kind", choices=[(k.value, k.label) for k in AgencyKind])
    country_code = SelectField("Country", validators=[Optional()])
    desk_email = EmailField("Liaison desk e-mail", validators=[DataRequired(), Length(max=254)])
    desk_phone = StringField("Liaison desk phone", validators=[DataRequired(), Length(max=32), plain_text])
    timezone = SelectField("Time zone", default="UTC")
    is_focal_point = BooleanField("Focal point: receives referrals for its country")

    def set_choices(self) -> None:
        self.country_code.choices = [("", "None (international body)")] + countries.choices()
        self.timezone.choices = sorted(time_zones())


class UserCreateForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    name = StringField("Name", validators=[DataRequired(), Length(max=200), plain_text])
    role = SelectField("Role", choices=[(r.value, r.value) for r in Role], default=Role.VIEWER.value)
    agency_id = SelectField("Agency", coerce=optional_int, validators=[DataRequired()])
    password = PasswordField("Initial password", validators=[DataRequired(), Length(min=MIN_PASSWORD_LENGTH, max=1024)])


class UserEditForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=200), plain_text])
    role = SelectField("Role", choices=[(r.value, r.value) for r in Role])
    agency_id = SelectField("Agency", coerce=optional_int, validators=[DataRequired()])
    is_active = BooleanField("Active")


class OperationForm(FlaskForm):
    code = StringField("Code name", validators=[DataRequired(), Length(max=64), plain_text])
    lead_agency_id = SelectField("Lead agency", coerce=optional_int, validators=[DataRequired()])
    # InputRequired: DataRequired would replace DateField's "Not a valid date value" (2026-02-30) with "required".
    opened_on = DateField("Opened", validators=[InputRequired(), plausible_date])
    description = TextAreaField("Description", validators=[Length(max=1000), plain_text])


class AuditFilterForm(FlaskForm):
    """GET filters of the audit page (reading only: no CSRF)."""

    class Meta:
        csrf = False

    action = StringField("Action starts with", validators=[Optional(), Length(max=64), plain_text])
    outcome = SelectField("Outcome", choices=[("", "Any"), ("success", "success"), ("failure", "failure")],
                          validators=[Optional()])
    user_id = IntegerField("User id", validators=[Optional(), USER_ID_RANGE])
    date_from = DateField("From", validators=[Optional(), plausible_date])
    date_to = DateField("To", validators=[Optional(), plausible_date])
    page = IntegerField("Page", default=1, validators=[Optional()])

    def filter_problems(self) -> list[str]:
        """What was not understood, filter by filter, after `validate` (a bad page number is no
        filter: the page shows the first)."""
        return [f"{f.label.text}: {error}" for f in self if f is not self.page for error in f.errors]
