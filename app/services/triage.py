"""Triage: the priority of a suspect from risk flags and graded material. The one place the
rule is written; docs/tip-format.md quotes it.

P1  plans to meet a child, or indications of contact offending, or access to children
    together with any category A material
P2  access to children, a position of authority or previous convictions, or 10 or more
    category A items
P3  any category A or B material, or 50 or more items in all
P4  everything else

P1 referrals must be acknowledged within 24 hours, the others within 72.

A referral already sent follows its holder up, never down: when investigators' flags (or the
accounts of a later tip) make a holder more urgent than the sent referral it sits on, the
referral's priority is raised (`referrals.escalate_priority`); its acknowledgement clock still
counts from when it was sent, so a P1 escalation more than 24 hours after sending is overdue at
once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

from app.models import RISK_FLAGS, Priority

# RiskProfile's flag fields, in the order of RISK_FLAGS.
_FLAG_FIELDS = tuple(column.removeprefix("risk_") for column in RISK_FLAGS)


class RiskProfile(NamedTuple):
    """What triage reads of a suspect. Immutable: a named tuple, because an import builds one for
    each of 90,000 holders and a frozen dataclass costs twice as much to build."""

    access_to_children: bool = False
    position_of_authority: bool = False
    previous_convictions: bool = False
    plans_to_meet: bool = False
    contact_offending: bool = False
    grade_a: int = 0
    grade_b: int = 0
    grade_c: int = 0

    @classmethod
    def from_flags(cls, flags: Iterable[bool], *, grade_a: int = 0, grade_b: int = 0, grade_c: int = 0) -> RiskProfile:
        """From flags in the order of RISK_FLAGS (the risk_* columns of referrals and holders),
        matched by name, not by position in this class."""
        named = dict(zip(_FLAG_FIELDS, map(bool, flags), strict=True))
        return cls(**named, grade_a=grade_a, grade_b=grade_b, grade_c=grade_c)


def priority(profile: RiskProfile) -> Priority:
    if profile.plans_to_meet or profile.contact_offending or (profile.access_to_children and profile.grade_a > 0):
        return Priority.P1
    if (profile.access_to_children or profile.position_of_authority or profile.previous_convictions
            or profile.grade_a >= 10):
        return Priority.P2
    if profile.grade_a > 0 or profile.grade_b > 0 or profile.grade_a + profile.grade_b + profile.grade_c >= 50:
        return Priority.P3
    return Priority.P4


@functools.lru_cache(maxsize=65_536)
def priority_from_flags(flags: tuple[bool, ...], grade_a: int, grade_b: int, grade_c: int) -> Priority:
    """`priority` of a suspect with these flags (in the order of RISK_FLAGS) and grade counts,
    remembered: the 90,000 holders of a full tip share a few thousand combinations."""
    return priority(RiskProfile.from_flags(flags, grade_a=grade_a, grade_b=grade_b, grade_c=grade_c))


def more_urgent(candidate: Priority, than: Priority) -> bool:
    """P1 is the most urgent, P4 the least."""
    return _URGENCY.index(candidate) < _URGENCY.index(than)


_URGENCY = (Priority.P1, Priority.P2, Priority.P3, Priority.P4)
