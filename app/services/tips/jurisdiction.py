"""Where an account holder lives, from the evidence of their accounts.

A country hint (what the provider knew of the user) weighs 2, an IP geolocation 1. The
jurisdiction is the heaviest country; the confidence is its share of the weight. Holders
whose evidence names more than one country are listed for review.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

HINT_WEIGHT = 2
IP_WEIGHT = 1


@dataclass(frozen=True)
class Placement:
    country: str | None
    confidence: float
    needs_review: bool
    evidence: dict[str, int]


def place(evidence: Iterable[tuple[str | None, str | None]]) -> Placement:
    """`evidence`: (country_hint, ip_country) of each account of the holder."""
    weights: Counter[str] = Counter()
    for hint, ip_country in evidence:
        if hint:
            weights[hint] += HINT_WEIGHT
        if ip_country:
            weights[ip_country] += IP_WEIGHT
    if not weights:
        return Placement(None, 0.0, True, {})
    total = sum(weights.values())
    # Ties go to the alphabetically first code so the result never depends on row order.
    country, weight = min(weights.items(), key=lambda item: (-item[1], item[0]))
    return Placement(country, round(weight / total, 3), len(weights) > 1, dict(weights))
