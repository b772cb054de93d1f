from datetime import datetime, timezone

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, HiddenField, IntegerField, SelectField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from app.models import HolderRouting, Priority
from app.services import countries
from app.services.tips.holders import NOTE_MAX
from app.web import country_code, plain_text
from app.web.referrals.forms import optional_int

class UploadForm(FlaskForm):
    operation = SelectField("Operation (led by your agency)", coerce=optional_int,
                            validators=[DataRequired("Choose the operation to import into.")])
    # The file's name and content are checked by the import service (files.check_name), which
    # puts a refusal (an image, say) on the audit trail; `accept` only narrows the browser's picker.
    file = FileField("Tip file", description="CSV or JSON Lines, UTF-8 (docs/tip-format.md).",
                     validators=[FileRequired("Choose the tip file.")],
                     render_kw={"accept": ".csv,.jsonl,.ndjson,text/csv"})
    skip_invalid = BooleanField("Skip invalid rows: import the good rows and download the bad ones as a reject file")


class HolderFilterForm(FlaskForm):
    """GET filters of the holder lists (no CSRF: reading only)."""

    class Meta:
        csrf = False

    operation = SelectField("Operation", coerce=optional_int, validators=[Optional()])
    country = SelectField("Jurisdiction", validators=[Optional()], filters=[country_code])
    priority = SelectField("Priority", choices=[("", "Any")] + [(p.value, p.value) for p in Priority],
                           validators=[Optional()])
    routing = SelectField("Routing", choices=[("", "Any")] + [(r.value, r.label) for r in HolderRouting],
                          validators=[Optional()])
    review = BooleanField("Needs review only")
    max_confidence = SelectField("Confidence at most", choices=[
        ("", "Any"), ("0.5", "50%"), ("0.67", "67%"), ("0.8", "80%"), ("0.99", "99%")], validators=[Optional()])
    page = IntegerField("Page", default=1, validators=[Optional(), NumberRange(min=1)])

    def set_choices(self, operations) -> None:
        self.operation.choices = [("", "Any")] + [(op.id, op.code) for op in operations]
        self.country.choices = [("", "Any")] + countries.choices()


NOT_SHOWN = datetime.min.replace(tzinfo=timezone.utc)


class SeenHolder:
    """When the holder last changed, as the page showed it: a decision on a holder changed
    since (by a person or an import) is refused instead of overwriting what it did not see."""

    seen = HiddenField()

    def seen_at(self) -> datetime:
        """A form that does not say (not drawn by the page) names no time the holder had: the
        decision is refused as on a stale page, once the deciding person may decide at all."""
        try:
            seen = datetime.fromisoformat(self.seen.data or "")
        except ValueError:
            return NOT_SHOWN
        return seen if seen.tzinfo else NOT_SHOWN

    def show(self, holder) -> None:
        self.seen.data = holder.updated_at.isoformat()


class JurisdictionForm(SeenHolder, FlaskForm):
    country = SelectField("Jurisdiction", validators=[DataRequired(message="Choose a country.")])
    note = TextAreaField("Why (for the audit trail)", validators=[Optional(), Length(max=NOTE_MAX), plain_text])

    def set_choices(self, first: list[tuple[str, int]] | None = None) -> None:
        named = [(code, f"{countries.name(code)} (evidence {weight})") for code, weight in (first or [])]
        self.country.choices = [("", "Choose...")] + named + countries.choices()


class LeaveClosedForm(SeenHolder, FlaskForm):
    # Beside the jurisdiction's note on the holder page: an id of its own, for its label.
    note = TextAreaField("Why (for the audit trail)", id="leave_note",
                         validators=[Optional(), Length(max=NOTE_MAX), plain_text])


class RiskForm(SeenHolder, FlaskForm):
    risk_access_to_children = BooleanField("Access to children")
    risk_position_of_authority = BooleanField("Position of authority")
    risk_previous_convictions = BooleanField("Previous convictions")
    risk_plans_to_meet = BooleanField("Plans to meet a child")
    risk_contact_offending = BooleanField("Indications of contact offending")
