"""Phone numbers for synthetic data that belong to nobody.

Each country gets a range of numbers of its mobile numbers' length that its numbering plan
does not assign: phonenumbers finds them possible (the right length, so the tip reader takes
them) but valid for no kind of line, so no subscriber can hold one. Only a few countries
reserve numbers for fiction, and a real country's example number with other last digits may
well be someone's.
"""

from __future__ import annotations

import functools

import phonenumbers
from phonenumbers import PhoneNumberType, ValidationResult

# How many suffixes of a candidate range are checked, spread over it (its first and last
# included): numbering plans assign by leading digits, so these cover every pattern.
SAMPLES = 1000


@functools.cache
def free_range(country: str) -> tuple[int, str, int]:
    """(country calling code, national prefix, digits after it) of an unassigned range of the
    country's mobile length, the first found in order, so always the same one."""
    example = phonenumbers.example_number_for_type(country, PhoneNumberType.MOBILE)
    if example is None:
        raise LookupError(f"no numbering plan for {country}")
    length = len(phonenumbers.national_significant_number(example))
    free = min(6, length - 2)
    size = 10 ** free
    step = max(1, size // SAMPLES)
    suffixes = sorted({*range(0, size, step), size - 1})
    # A national number does not start with 0 (a trunk prefix in most plans).
    for lead in range(10 ** (length - free - 1), 10 ** (length - free)):
        prefix = str(lead)
        if all(_nobodys(example.country_code, f"{prefix}{suffix:0{free}d}") for suffix in suffixes):
            return example.country_code, prefix, free
    raise LookupError(f"no unassigned range of {length} digits for {country}")


def _nobodys(country_code: int, national: str) -> bool:
    number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
    return (phonenumbers.is_possible_number_with_reason(number) == ValidationResult.IS_POSSIBLE
            and not phonenumbers.is_valid_number(number))


def unassigned(country: str, serial: int) -> str:
    """A number of the country's free range in E.164, one per serial (modulo the range)."""
    code, prefix, free = free_range(country)
    return f"+{code}{prefix}{serial % 10 ** free:0{free}d}"
