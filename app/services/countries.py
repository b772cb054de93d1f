"""Country names and codes from pycountry (ISO 3166-1)."""

from __future__ import annotations

import re
import unicodedata
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


# Names and codes in common use that ISO 3166-1 spells otherwise (providers write what their
# users and geolocation databases write). Kosovo's XK is no ISO code and stays unknown.
ALIASES = {
    "uk": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB", "wales": "GB",
    "northern ireland": "GB", "russia": "RU", "turkey": "TR", "turkiye": "TR", "ivory coast": "CI",
    "burma": "MM", "swaziland": "SZ", "macedonia": "MK", "cape verde": "CV", "east timor": "TL",
    "holland": "NL", "america": "US", "uae": "AE", "palestine": "PS", "vatican": "VA", "vatican city": "VA",
    "brunei": "BN", "dr congo": "CD", "drc": "CD", "democratic republic of the congo": "CD",
    "micronesia": "FM", "the gambia": "GM", "the bahamas": "BS", "the netherlands": "NL", "macau": "MO",
}


def _folded(text: str) -> str:
    """A name as providers may write it: accents dropped (Cote d'Ivoire, Curacao), any
    apostrophe a plain one, case and spacing ignored."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
    return " ".join("".join(c for c in text if not unicodedata.combining(c)).casefold().split())


@lru_cache(maxsize=1)
def _names() -> dict[str, str]:
    """Each country's ISO names folded, also without their parenthesis ("Falkland Islands
    (Malvinas)", "Holy See (Vatican City State)"): the first country to claim a name keeps it."""
    names: dict[str, str] = {}
    for country in pycountry.countries:
        for attribute in ("name", "official_name", "common_name"):
            value = getattr(country, attribute, None)
            if value:
                for variant in (value, re.sub(r"\s*\([^)]*\)", "", value)):
                    names.setdefault(_folded(variant), country.alpha_2)
    return names


@lru_cache(maxsize=4096)
def lookup(text: str) -> str | None:
    """Alpha-2 code for an ISO code (alpha-2, alpha-3 or numeric) or an English country name,
    with or without its accents or its parenthesis (or a common alias, such as UK or Russia),
    else None."""
    text = text.strip()
    if not text:
        return None
    alias = ALIASES.get(" ".join(text.lower().split()))
    if alias:
        return alias
    if len(text) == 2:
        country = pycountry.countries.get(alpha_2=text.upper())
        return country.alpha_2 if country else None
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        return _names().get(_folded(text))


@lru_cache(maxsize=1024)
def code(text: str) -> str | None:
    """Alpha-2 code for an alpha-2 code or a two-letter alias (`UK`, as some geolocation data
    write GB), else None."""
    text = text.strip()
    text = ALIASES.get(text.lower(), text.upper()) if len(text) == 2 else text.upper()
    return text if is_valid(text) else None
