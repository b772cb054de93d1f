"""All models, imported here so that metadata is complete for alembic and create_all."""

from app.models.agency import Agency, AgencyKind
from app.models.audit import AuditEntry, AuditHead
from app.models.operation import Operation
from app.models.referral import (
    RISK_FLAGS,
    TLP,
    HandlingCode,
    Outcome,
    Priority,
    ReferenceCounter,
    Referral,
    ReferralEvent,
    Status,
)
from app.models.user import Role, User

__all__ = [
    "Agency", "AgencyKind", "AuditEntry", "AuditHead", "HandlingCode", "Operation", "Outcome",
    "Priority", "RISK_FLAGS", "ReferenceCounter", "Referral", "ReferralEvent", "Role", "Status",
    "TLP", "User",
]
