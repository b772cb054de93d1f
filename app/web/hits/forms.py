from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, SelectField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from app.models import HitStatus
from app.services import countries
from app.services.deconfliction import KIND_LABELS, NOTE_MAX
from app.services.identifiers import PLATFORMS
from app.web import plain_text
from app.web.referrals.forms import optional_int, page_version

KIND_CHOICES = [("", "Detect (e-mail, phone, IP)")] + [(k.value, label) for k, label in KIND_LABELS.items()]
PLATFORM_CHOICES = [("", "None")] + list(PLATFORMS.items())

# The identifiers of one check; the service counts the lines against BLIND_CHECK_LIMIT.
CHECK_TEXT_MAX = 4_000_000


class HitFilterForm(FlaskForm):
    """GET filters of the hits list (no CSRF: reading only)."""

    class Meta:
        csrf = False

    status = SelectField("Status", choices=[("", "Any")] + [(s.value, s.value) for s in HitStatus],
                         validators=[Optional()])
    kind = SelectField("Identifier kind", choices=[("", "Any")] + KIND_CHOICES[1:], validators=[Optional()])
    page = IntegerField("Page", default=1, validators=[Optional(), NumberRange(min=1)])


class AcknowledgeForm(FlaskForm):
    version = HiddenField(validators=[DataRequired(), page_version])


class ResolveForm(FlaskForm):
    version = HiddenField(validators=[DataRequired(), page_version])
    lead_agency_id = SelectField("Agreed lead agency", coerce=optional_int, validators=[DataRequired()])
    note = TextAreaField("How it was agreed", validators=[DataRequired(), Length(max=NOTE_MAX), plain_text])


class RecheckCommonForm(FlaskForm):
    """One button: bring every common mark in line with the threshold."""


class BlindCheckForm(FlaskForm):
    identifiers = TextAreaField(
        "Identifiers, one per line",
        description="A line may name its kind: 'email: ...', 'phone: ...', 'ip: ...', "
                    "'username/discord: ...', 'account_id/steam: ...'.",
        validators=[DataRequired(message="Paste at least one identifier."), Length(max=CHECK_TEXT_MAX)],
    )
    kind = SelectField("Kind of every line", choices=KIND_CHOICES, validators=[Optional()])
    platform = SelectField("Platform (usernames and account ids)", choices=PLATFORM_CHOICES, validators=[Optional()])
    jurisdiction = SelectField("Jurisdiction (phone numbers without a country code)", validators=[Optional()])

    def set_choices(self) -> None:
        self.jurisdiction.choices = [("", "None")] + countries.choices()
