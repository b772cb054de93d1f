from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, HiddenField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, StopValidation

from app.models import RISK_FLAGS, TLP, HandlingCode, Priority
from app.services import countries
from app.services.deconfliction import KIND_LABELS
from app.services.identifiers import PLATFORMS
from app.services.referrals import MATERIAL_MAX, NOTE_MAX, OUTCOME_COUNT_MAX, SUMMARY_MAX
from app.services.subjects import LABEL_MAX
from app.web import country_code, plain_text, plausible_date


def optional_int(value):
    if value in (None, "", "None"):
        return None
    return int(value)


STALE_PAGE = "This page was out of date. Reload it and try again."


def page_version(form, field) -> None:
    """The version the page showed: a whole number (the referral's), or the page is not ours."""
    if field.data and not (field.data.isascii() and field.data.isdigit() and len(field.data) <= 18):
        raise StopValidation(STALE_PAGE)


COUNT = [InputRequired(), NumberRange(min=0, max=10_000_000, message="Enter a whole number, 0 or more.")]


class ReferralForm(FlaskForm):
    version = HiddenField(validators=[page_version])
    receiver_agency_id = SelectField("Receiving agency", coerce=optional_int, validators=[DataRequired()])
    jurisdiction = SelectField("Jurisdiction", validators=[DataRequired()])
    operation_id = SelectField("Operation", coerce=optional_int, validators=[Optional()])
    # The defaults preselect a choice on the page; a post without one is refused, not defaulted.
    priority = SelectField("Priority", choices=[(p.value, p.value) for p in Priority], default=Priority.P3.value,
                           validators=[InputRequired()])
    risk_access_to_children = BooleanField(RISK_FLAGS["risk_access_to_children"])
    risk_position_of_authority = BooleanField(RISK_FLAGS["risk_position_of_authority"])
    risk_previous_convictions = BooleanField(RISK_FLAGS["risk_previous_convictions"])
    risk_plans_to_meet = BooleanField(RISK_FLAGS["risk_plans_to_meet"])
    risk_contact_offending = BooleanField(RISK_FLAGS["risk_contact_offending"])
    grade_a = IntegerField("Category A", default=0, validators=COUNT)
    grade_b = IntegerField("Category B", default=0, validators=COUNT)
    grade_c = IntegerField("Category C", default=0, validators=COUNT)
    material_description = TextAreaField("Material description", validators=[Length(max=MATERIAL_MAX), plain_text])
    tlp = SelectField("TLP", choices=[(t.value, f"TLP:{t.value}") for t in TLP], default=TLP.RED.value,
                      validators=[InputRequired()])
    handling_code = SelectField(
        "Handling code", choices=[(h.value, h.label) for h in HandlingCode],
        default=HandlingCode.CONSENT_REQUIRED.value, validators=[InputRequired()],
    )
    summary = TextAreaField("Summary", validators=[Length(max=SUMMARY_MAX), plain_text])

    def set_choices(self, agencies, operations) -> None:
        self.receiver_agency_id.choices = [("", "Choose...")] + [(a.id, _agency_label(a)) for a in agencies]
        self.jurisdiction.choices = [("", "Choose...")] + countries.choices()
        self.operation_id.choices = [("", "None")] + [(o.id, o.code) for o in operations]


def _agency_label(agency) -> str:
    return f"{agency.name} ({agency.country_code or 'international'})"


class ActionForm(FlaskForm):
    """One lifecycle step; the version guards against acting on a stale page."""

    version = HiddenField(validators=[DataRequired(), page_version])
    note = TextAreaField("Note", validators=[Length(max=NOTE_MAX), plain_text])


class TransferForm(ActionForm):
    transfer_to_agency_id = SelectField("Transfer to", coerce=optional_int, validators=[DataRequired()])

    def set_choices(self, agencies) -> None:
        self.transfer_to_agency_id.choices = [("", "Choose...")] + [(a.id, _agency_label(a)) for a in agencies]


OUTCOME_COUNT = [InputRequired(), NumberRange(min=0, max=OUTCOME_COUNT_MAX,
                                              message=f"Enter a whole number from 0 to {OUTCOME_COUNT_MAX:,}.")]


class OutcomeForm(FlaskForm):
    version = HiddenField(validators=[DataRequired(), page_version])  # a second submission is stale
    # InputRequired, not DataRequired: that one would replace "Not a valid date value" (30 February)
    # with "This field is required".
    occurred_on = DateField("Date", validators=[InputRequired(), plausible_date])
    arrests = IntegerField("Arrests", default=0, validators=OUTCOME_COUNT)
    charges = IntegerField("Charges", default=0, validators=OUTCOME_COUNT)
    children_safeguarded = IntegerField("Children safeguarded", default=0, validators=OUTCOME_COUNT)
    note = TextAreaField("Note", validators=[Length(max=NOTE_MAX), plain_text])


class ListFilterForm(FlaskForm):
    """GET filters of the referral list (no CSRF: reading only)."""

    class Meta:
        csrf = False

    status = SelectField("Status", validators=[Optional()])
    jurisdiction = SelectField("Jurisdiction", validators=[Optional()], filters=[country_code])
    priority = SelectField("Priority", validators=[Optional()])
    operation = SelectField("Operation", coerce=optional_int, validators=[Optional()])
    direction = SelectField("Direction", choices=[("", "All"), ("in", "Received"), ("out", "Sent")],
                            validators=[Optional()])
    overdue = BooleanField("Overdue only")
    sort = SelectField("Sort", default="updated", validators=[Optional()])
    order = SelectField("Order", choices=[("desc", "Descending"), ("asc", "Ascending")], validators=[Optional()])
    page = IntegerField("Page", default=1, validators=[Optional(), NumberRange(min=1)])


# --- subjects (deconfliction) ---------------------------------------------------------------

IDENTIFIER_HELP = ("One per line. A line may name its kind: 'email: ...', 'phone: ...', 'ip: ...', "
                   "'username/discord: ...', 'account_id/steam: ...'; otherwise the kind below applies.")


class IdentifiersForm(FlaskForm):
    identifiers = TextAreaField("Identifiers", description=IDENTIFIER_HELP,
                                validators=[DataRequired(message="Give at least one identifier."),
                                            Length(max=200_000)])
    kind = SelectField("Kind", choices=[("", "Detect (e-mail, phone, IP)")]
                       + [(k.value, label) for k, label in KIND_LABELS.items()], validators=[Optional()])
    platform = SelectField("Platform (usernames and account ids)", choices=[("", "None")] + list(PLATFORMS.items()),
                           validators=[Optional()])


class SubjectForm(IdentifiersForm):
    label = StringField("Name or label of the account holder", validators=[Length(max=LABEL_MAX), plain_text])
