"""All models, imported here so that metadata is complete for alembic and create_all."""

from app.models.agency import Agency, AgencyKind
from app.models.audit import AuditEntry, AuditHead
from app.models.cache import DASHBOARDS, DataVersion
from app.models.hit import (
    CommonIdentifier,
    Hit,
    HitMatch,
    HitSide,
    HitStatus,
    Notification,
    NotificationCursor,
    NotificationKind,
)
from app.models.operation import Operation
from app.models.security import RecoveryCode, UserSession
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
    came_in_on_select,
)
from app.models.subject import Identifier, Subject, referral_subjects
from app.models.tip import (
    UNROUTED,
    Holder,
    HolderRouting,
    JurisdictionSource,
    Tip,
    TipAccount,
    TipCommonIdentifier,
    TipFormat,
)
from app.models.user import Role, User

__all__ = [
    "Agency", "AgencyKind", "AuditEntry", "AuditHead", "HandlingCode", "Operation", "Outcome",
    "Priority", "RISK_FLAGS", "ReferenceCounter", "Referral", "ReferralEvent", "Role", "Status",
    "TLP", "User", "came_in_on_select",
    "RecoveryCode", "UserSession",
    "DASHBOARDS", "DataVersion",
    # deconfliction
    "CommonIdentifier", "Hit", "HitMatch", "HitSide", "HitStatus", "Identifier", "Notification",
    "NotificationCursor", "NotificationKind", "Subject", "referral_subjects",
    # provider tips
    "Holder", "HolderRouting", "JurisdictionSource", "Tip", "TipAccount", "TipCommonIdentifier", "TipFormat",
    "UNROUTED",
]
