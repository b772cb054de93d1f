"""Normalisation of suspects' online-account identifiers for deconfliction.

Two referrals concern the same account when their identifiers normalise to the
same ``(kind, platform, value)``. Matching is done on :func:`match_key`, a keyed
HMAC of that triple, so the match index never needs the plain values.

Canonical forms, by kind:

* ``email``: NFKC, checked by ``email_validator`` (no DNS look-ups); the local
  part is case-folded and the domain is its lower-case ASCII (IDNA) form, so
  ``User@Bücher.example`` equals ``user@xn--bcher-kva.example``. There are
  deliberately **no provider-specific rules**: Gmail-style dot removal or
  ``+tag`` stripping would be guesses about one provider's policy, and a wrong
  guess merges two different people. ``a.b@gmail.com`` and ``ab@gmail.com``
  therefore do not match.
* ``phone``: NFKC (full-width digits become ASCII), parsed by ``phonenumbers``
  with the jurisdiction as the region hint, stored as E.164. A number is
  accepted when it is *possible* (right length for its country), not when it
  is *valid* (in an allocated range): synthetic and newly allocated numbers must
  still be recordable. Numbers that are only dialable locally (missing an area
  code) are refused, because their E.164 form would be wrong. Extensions are
  dropped.
* ``ip``: ``ipaddress`` form (IPv6 compressed); an IPv4-mapped IPv6 address is
  the IPv4 address. Zone ids and CIDR prefixes are refused.
* ``username``: compatibility caseless form (NFKC + case folding); one leading
  ``@`` is dropped, since "@alice" on a platform is the handle "alice".
* ``account_id``: the same caseless form; platform account ids are treated as
  case-insensitive.

``username`` and ``account_id`` are scoped by a platform slug from
:data:`PLATFORMS`; the other kinds are global and take no platform.
"""

import enum
import functools
import hmac
import importlib
import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import email_validator
import phonenumbers
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import DOT_ATOM_TEXT, EMAIL_MAX_LENGTH, LOCAL_PART_MAX_LENGTH

# A tip holds 150,000 addresses on a few hundred domains, and checking a domain (IDNA) is
# most of email-validator's cost: remember each domain's verdict. The function is pure;
# a refused domain raises and is not cached.
_email_validator_internals = importlib.import_module("email_validator.validate_email")
_email_validator_internals.validate_email_domain_name = functools.lru_cache(maxsize=65536)(
    _email_validator_internals.validate_email_domain_name
)

MAX_LENGTH = 320  # the longest possible e-mail address; nothing else comes close


class IdentifierKind(enum.StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    USERNAME = "username"
    ACCOUNT_ID = "account_id"
    IP = "ip"


# Slug -> display label. Slugs end up inside match keys: never rename one.
PLATFORMS: dict[str, str] = {
    "facebook": "Facebook",
    "instagram": "Instagram",
    "whatsapp": "WhatsApp",
    "snapchat": "Snapchat",
    "tiktok": "TikTok",
    "discord": "Discord",
    "telegram": "Telegram",
    "signal": "Signal",
    "kik": "Kik",
    "x": "X (Twitter)",
    "reddit": "Reddit",
    "skype": "Skype",
    "roblox": "Roblox",
    "twitch": "Twitch",
    "steam": "Steam",
    "youtube": "YouTube",
    "google": "Google",
    "microsoft": "Microsoft",
    "apple": "Apple",
    "yahoo": "Yahoo",
    "other": "Other",
}

_PLATFORM_KINDS = frozenset({IdentifierKind.USERNAME, IdentifierKind.ACCOUNT_ID})

_LABELS = {
    IdentifierKind.EMAIL: "e-mail address",
    IdentifierKind.PHONE: "phone number",
    IdentifierKind.USERNAME: "username",
    IdentifierKind.ACCOUNT_ID: "account id",
    IdentifierKind.IP: "IP address",
}


class InvalidIdentifier(ValueError):
    """The input cannot be normalised; ``reason`` is a sentence fit for a form error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NormalisedIdentifier:
    kind: IdentifierKind
    platform: str | None
    raw: str  # the input with surrounding whitespace stripped, nothing else
    value: str  # canonical form


def normalise(
    kind: IdentifierKind | str,
    raw: str,
    *,
    platform: str | None = None,
    region: str | None = None,
) -> NormalisedIdentifier:
    """Normalise ``raw`` as an identifier of ``kind``.

    ``region`` is the ISO 3166 alpha-2 code of the jurisdiction, used only to
    read phone numbers written without a country code. Raises
    :class:`InvalidIdentifier`.
    """
    kind = _parse_kind(kind)
    label = _LABELS[kind]
    if not isinstance(raw, str):
        # Not a TypeError: JSON input may carry numbers, and callers should be
        # able to report every bad identifier the same way.
        raise InvalidIdentifier(f"{label} must be text, not {type(raw).__name__}")
    raw = raw.strip()  # str.strip() also removes Unicode spaces such as U+00A0
    if not raw:
        raise InvalidIdentifier(f"empty {label}")
    if len(raw) > MAX_LENGTH:
        raise InvalidIdentifier(f"{label} too long: {len(raw)} characters (at most {MAX_LENGTH})")
    slug = _parse_platform(kind, platform)

    # Matched by value (a StrEnum member equals it): on Python 3.11 a `case IdentifierKind.X`
    # pattern pays for an enum attribute look-up on every call.
    match kind:
        case "email":
            value = _canonical_email(raw)
        case "phone":
            value = _canonical_phone(raw, region)
        case "ip":
            value = _canonical_ip(raw)
        case "username":
            value = _canonical_handle(raw)
        case "account_id":
            value = _canonical_account_id(raw)
        case _:
            raise ValueError(f"unknown identifier kind {kind!r}")
    if not value:
        raise InvalidIdentifier(f"empty {label}")
    # Compatibility decomposition can expand text (one ligature -> several
    # letters); keep stored values within the same bound as the input.
    if len(value) > MAX_LENGTH:
        raise InvalidIdentifier(f"{label} too long once normalised (at most {MAX_LENGTH} characters)")
    # Positional: keyword arguments double the cost of this (generated) constructor.
    return NormalisedIdentifier(kind, slug, raw, value)


def detect_kind(raw: str) -> IdentifierKind | None:
    """Guess the kind of ``raw``; ``None`` when it looks like none of ip/email/phone.

    Usernames and account ids cannot be told apart from arbitrary text, so the
    caller must choose those explicitly. A detected kind is a hint only:
    :func:`normalise` may still refuse the value.
    """
    if not isinstance(raw, str):
        return None
    text = _nfkc(raw.strip())
    if not text or len(text) > MAX_LENGTH:
        return None
    try:
        _canonical_ip(text)
    except InvalidIdentifier:
        pass
    else:
        return IdentifierKind.IP
    local, at, domain = text.rpartition("@")
    if at and local and domain:
        return IdentifierKind.EMAIL
    if _PHONEISH.fullmatch(text) and len(_DIGIT.findall(text)) >= 6:
        return IdentifierKind.PHONE
    return None


def match_key(secret: bytes, ident: NormalisedIdentifier) -> str:
    """Hex HMAC-SHA256 of the identifier, for storage and equality look-ups."""
    if not secret:
        # An empty key would make the "keyed" hash guessable by anyone.
        raise ValueError("match key secret must not be empty")
    # U+001F cannot occur in kind or platform, so the fields cannot run together. (join, not
    # an f-string: formatting the kind, an enum, costs more than the rest of the message.)
    message = "\x1f".join((ident.kind, ident.platform or "", ident.value)).encode("utf-8")
    mac = _keyed_hmac(secret).copy()
    mac.update(message)
    return mac.hexdigest()


@functools.lru_cache(maxsize=8)
def _keyed_hmac(secret: bytes):
    """An HMAC keyed with the secret, to copy: its key is hashed into the pads once, and a copy
    costs half of keying a new one (or of hmac.digest) for every identifier. Where the hmac
    module keeps OpenSSL's HMAC object inside its own, that object is the one copied: it has
    the same copy/update/hexdigest and copies without a Python-level wrapper (a third faster)."""
    keyed = hmac.new(secret, digestmod="sha256")
    return getattr(keyed, "_hmac", None) or keyed


# --- helpers ---------------------------------------------------------------

# Digits with an optional leading "+" (or "(+"), and the usual separators.
_PHONEISH = re.compile(r"\(?\+?[\d\s().\-]+")
_DIGIT = re.compile(r"\d")


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _caseless(text: str) -> str:
    """Compatibility caseless form (Unicode 3.13, D146), recomposed with NFKC.

    The nested case folding is the standard's fix for characters whose folding
    yields unnormalised text; it keeps the result stable when fed back in.
    """
    if text.isascii():
        # Every normalisation leaves ASCII as it is, and ASCII case folding is lower().
        return text.lower()
    nfd = unicodedata.normalize("NFD", text)
    return _nfkc(unicodedata.normalize("NFKD", nfd.casefold()).casefold())


def _parse_kind(kind: IdentifierKind | str) -> IdentifierKind:
    if isinstance(kind, IdentifierKind):
        return kind
    try:
        return IdentifierKind(kind.strip().lower() if isinstance(kind, str) else kind)
    except ValueError:
        raise InvalidIdentifier(f"unknown identifier kind {kind!r}") from None


def _parse_platform(kind: IdentifierKind, platform: str | None) -> str | None:
    if platform is not None and not isinstance(platform, str):
        raise InvalidIdentifier(f"platform must be text, not {type(platform).__name__}")
    slug = (platform or "").strip().lower()
    if kind not in _PLATFORM_KINDS:
        if slug:
            raise InvalidIdentifier("only usernames and account ids belong to a platform")
        return None
    if not slug:
        raise InvalidIdentifier(f"{_LABELS[kind]} needs a platform")
    if slug not in PLATFORMS:
        raise InvalidIdentifier(f"unknown platform {slug!r}")
    return slug


def _canonical_email(text: str) -> str:
    common = _canonical_common_email(text)
    if common is not None:
        return common
    try:
        result = validate_email(_nfkc(text), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentifier(f"not a valid e-mail address: {exc}") from None
    # Local parts are case-sensitive in theory but not at any real provider.
    return f"{_caseless(result.local_part)}@{result.ascii_domain.lower()}"


_ASCII_HOST_CHARACTERS = re.compile(r"[A-Za-z0-9.\-]+")


def _canonical_common_email(text: str) -> str | None:
    """The canonical form of an address of the common shape (an ASCII dot-atom before the @,
    ASCII host-name characters after it), or None for anything else, and for any address
    email-validator would refuse (so that its message is the one given).

    For this shape ``validate_email`` only checks the local part against ``DOT_ATOM_TEXT`` and
    its length, then the domain (its cached check, called alike), then the three lengths of
    the address; the same checks are made here, without its character-by-character split.
    The text is ASCII, so NFKC leaves it as it is."""
    local, at, domain = text.partition("@")
    if not (at and len(local) <= LOCAL_PART_MAX_LENGTH and DOT_ATOM_TEXT.match(local)
            and _ASCII_HOST_CHARACTERS.fullmatch(domain)):
        return None
    try:
        checked = _email_validator_internals.validate_email_domain_name(
            domain, test_environment=email_validator.TEST_ENVIRONMENT,
            globally_deliverable=email_validator.GLOBALLY_DELIVERABLE)
    except EmailNotValidError:
        return None
    ascii_domain = checked["ascii_domain"]
    for address in (text, f"{local}@{checked['domain']}", f"{local}@{ascii_domain}"):
        if len(address.encode("utf-8")) > EMAIL_MAX_LENGTH:
            return None
    return f"{local.lower()}@{ascii_domain.lower()}"


_POSSIBLE_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too few digits",
    phonenumbers.ValidationResult.TOO_LONG: "too many digits",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong number of digits for its country",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "the area code is missing",
}


def _canonical_phone(text: str, region: str | None) -> str:
    text = _nfkc(text)
    region = (region or "").strip().upper() or None
    try:
        number = _parse_phone(text, region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not text.startswith("+"):
            if region is None:
                raise InvalidIdentifier(
                    "phone number has no country code: write it with +<country code>, "
                    "or give the jurisdiction"
                ) from None
            if region not in phonenumbers.SUPPORTED_REGIONS:
                raise InvalidIdentifier(
                    f"no phone numbering plan known for jurisdiction {region!r}: "
                    "write the number with +<country code>"
                ) from None
        raise InvalidIdentifier(f"not a valid phone number: {exc.args[0]}") from None
    verdict = phonenumbers.is_possible_number_with_reason(number)
    if verdict != phonenumbers.ValidationResult.IS_POSSIBLE:
        reason = _POSSIBLE_REASONS.get(verdict, "not a possible number")
        raise InvalidIdentifier(f"not a valid phone number: {reason}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse_phone(text: str, region: str | None) -> phonenumbers.PhoneNumber:
    """Parse with ``region``, reading a leading "00" as "+" where the region would not."""
    if text.startswith("00"):
        if region is not None:
            # The region's own international prefix wins where it covers "00..."
            # (e.g. "0011" in AU, carrier-selecting "0021" in BR).
            try:
                number = phonenumbers.parse(text, region, keep_raw_input=True)
            except phonenumbers.NumberParseException:
                pass
            else:
                if number.country_code_source == phonenumbers.CountryCodeSource.FROM_NUMBER_WITH_IDD:
                    return number
        # Elsewhere (e.g. US, whose prefix is 011) "00" still means international.
        text = "+" + text[2:]
    return phonenumbers.parse(text, region)


# A dotted quad without leading zeros: exactly the IPv4 text ipaddress accepts and prints back
# unchanged, so it is its own canonical form.
_CANONICAL_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                             r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


# IPv6 text of hex digits and colons only (no embedded IPv4, zone or prefix).
_PLAIN_IPV6 = re.compile(r"[0-9A-Fa-f:]+")
_IPV4_MAPPED_HEAD = ["0"] * 5 + ["ffff"]
_ZERO_RUNS = [(length, "z" * length) for length in range(8, 1, -1)]


def _canonical_ip(text: str) -> str:
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    if _PLAIN_IPV6.fullmatch(text):
        canonical = _canonical_plain_ipv6(text)
        if canonical is not None:
            return canonical
    text = _nfkc(text)
    try:
        # What ip_address() does, without its failed IPv4 attempt on every IPv6 address: a
        # colon is never valid in IPv4 text, and IPv6 text always holds one.
        address = ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
    except ValueError:
        raise InvalidIdentifier("not a valid IP address (one address, without a /prefix)") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            # "%eth0" names an interface on the recording machine, not the suspect's.
            raise InvalidIdentifier("not a valid IP address: remove the %zone suffix")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _canonical_plain_ipv6(text: str) -> str | None:
    """The compressed form ipaddress gives plain IPv6 text (RFC 5952: lower case, no leading
    zeros, the first longest run of two or more zero groups as "::"), at half its cost; None
    for text it would refuse and for IPv4-mapped addresses, which ipaddress itself handles (the
    caller has checked that the text is hex digits and colons only: _PLAIN_IPV6). In
    Python rather than the C library's inet_ntop, whose output has differed between systems
    and versions (musl once compressed a single zero group, and weighed a leading run of zeros
    differently): match keys must not depend on the machine."""
    text = text.lower()
    if "::" in text:
        head, _, tail = text.partition("::")
        left = head.split(":") if head else []
        right = tail.split(":") if tail else []
        missing = 8 - len(left) - len(right)
        if missing < 1:  # more than seven groups beside the "::"
            return None
        groups = left + ["0"] * missing + right
    else:
        groups = text.split(":")
        if len(groups) != 8:
            return None
    hextets = []
    for group in groups:
        if not 0 < len(group) <= 4:  # empty: a stray colon, or a second "::"
            return None
        hextets.append(group.lstrip("0") or "0")  # lower-case hex digits without leading zeros
    if hextets[:6] == _IPV4_MAPPED_HEAD:
        return None
    zeros = "".join(["z" if hextet == "0" else "." for hextet in hextets])
    if "zz" in zeros:
        for length, run in _ZERO_RUNS:
            start = zeros.find(run)
            if start >= 0:
                return ":".join(hextets[:start]) + "::" + ":".join(hextets[start + length:])
    return ":".join(hextets)


def _canonical_handle(text: str) -> str:
    value = _caseless(text).strip()
    value = value.removeprefix("@").strip()
    _refuse_control_characters(value, IdentifierKind.USERNAME)
    return value


def _canonical_account_id(text: str) -> str:
    value = _caseless(text).strip()
    _refuse_control_characters(value, IdentifierKind.ACCOUNT_ID)
    return value


def _refuse_control_characters(value: str, kind: IdentifierKind) -> None:
    # Tabs, newlines etc. inside a handle are paste accidents, never part of it.
    if value.isascii() and value.isprintable():  # ASCII's control characters are its unprintable ones
        return
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise InvalidIdentifier(f"{_LABELS[kind]} contains control characters")

