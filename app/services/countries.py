"""Country names and codes from pycountry (ISO 3166-1)."""

from __future__ import annotations

from functools import lru_cache

import pycountry


@lru_cache(maxsize=1)
def choices() -> list[tuple[str, str]]:
    """(alpha-2, name) pairs sorted by name, for pickers."""
    return sorted(((c.alpha_2, c.name) for c in pycountry.countries), key=lambda pair: pair[1])


# Pure look-ups that pages and tip imports make for every row, on a few hundred distinct
# values: each answered once.
@lru_cache(maxsize=1024)
def is_valid(code: str | None) -> bool:
    return bool(code) and len(code) == 2 and pycountry.countries.get(alpha_2=code.upper()) is not None


@lru_cache(maxsize=1024)
def name(code: str | None) -> str:
    if not code:
        return "-"
    country = pycountry.countries.get(alpha_2=code.upper())
    return country.name if country else code


@lru_cache(maxsize=4096)
def lookup(text: str) -> str | None:
    """Alpha-2 code for an alpha-2 code or an English country name, else None."""
    text = text.strip()
    if not text:
        return None
    if len(text) == 2:
        country = pycountry.countries.get(alpha_2=text.upper())
        return country.alpha_2 if country else None
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return None
