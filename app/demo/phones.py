"""Phone numbers for synthetic data that belong to nobody.

Each country gets a range of numbers of its mobile numbers' length that its numbering plan
does not assign: phonenumbers finds them possible (the right length, so the tip reader takes
them) but valid for no kind of line, so no subscriber can hold one. Only a few countries
reserve numbers for fiction, and a real country's example number with other last digits may
well be someone's. Each range starts with the agencies' desk phones (`desk`); the people a
scenario invents take the numbers after them, so no desk shares a number with a suspect.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import phonenumbers
from phonenumbers import PhoneNumberType, ValidationResult

# How many suffixes of a candidate range are checked, spread over it (its first and last
# included). Numbering plans assign by leading digits, and these take every value of the
# suffix's first three; the tests check every number of a small scenario besides.
SAMPLES = 1000
# The first numbers of each range, kept for desk phones.
DESKS = 100


@functools.cache
def free_range(country: str) -> tuple[int, str, int]:
    """(country calling code, national prefix, digits after it) of an unassigned range of the
    country's mobile length, the first found in order, so always the same one."""
    example = phonenumbers.example_number_for_type(country, PhoneNumberType.MOBILE)
    if example is None:
        raise LookupError(f"no numbering plan for {country}")
    length = len(phonenumbers.national_significant_number(example))
    # Countries sharing a calling code (+1, +7, +44) share its free ranges: each takes its own,
    # by its place in the code's list of regions.
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(example.country_code, (country,))
    place = regions.index(country) if country in regions else 0
    scan, found = _scans.setdefault((example.country_code, length), (_free_ranges(example.country_code, length), []))
    while len(found) <= place:
        try:
            found.append(next(scan))
        except StopIteration:
            raise LookupError(f"no unassigned range of {length} digits for {country}") from None
    prefix, free = found[place]
    return example.country_code, prefix, free


# The scan of each calling code and length, and the ranges it found so far: the countries that
# share a code take the ranges one after another, and a scan checks thousands of numbers.
_scans: dict[tuple[int, int], tuple[Iterator[tuple[str, int]], list[tuple[str, int]]]] = {}


def _free_ranges(country_code: int, length: int) -> Iterator[tuple[str, int]]:
    """(national prefix, digits after it) of each unassigned range of national numbers of this
    length, in order."""
    # The largest range first (up to a million numbers; a small plan, as Tokelau's 4 digits,
    # still gets 1,000), then smaller ones behind longer prefixes.
    for free in range(min(6, length - 1), 0, -1):
        size = 10 ** free
        step = max(1, size // SAMPLES)
        suffixes = sorted({*range(0, size, step), size - 1})
        # A national number does not start with 0 (a trunk prefix in most plans).
        for lead in range(10 ** (length - free - 1), 10 ** (length - free)):
            prefix = str(lead)
            if all(_nobodys(country_code, f"{prefix}{suffix:0{free}d}") for suffix in suffixes):
                yield prefix, free


def _nobodys(country_code: int, national: str) -> bool:
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    return (phonenumbers.is_possible_number_with_reason(number) == ValidationResult.IS_POSSIBLE
            and not phonenumbers.is_valid_number(number))


def capacity(country: str) -> int:
    """How many numbers the country's free range holds."""
    return 10 ** free_range(country)[2]


def desk(country: str, index: int = 0) -> str:
    """A desk phone in the country: index 0 is its focal point's, the next ones its other agencies'."""
    if not 0 <= index < DESKS:
        raise ValueError(f"{DESKS} desk numbers per country")
    return unassigned(country, index)


def unassigned(country: str, serial: int) -> str:
    """The `serial`th number of the country's free range, in E.164."""
    code, prefix, free = free_range(country)
    if not 0 <= serial < 10 ** free:
        raise ValueError(f"{country}'s free range holds {10 ** free:,} numbers")
    return f"+{code}{prefix}{serial:0{free}d}"
