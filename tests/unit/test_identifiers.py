"""Tests for app.services.identifiers.

All values are synthetic: example.* domains, documentation IP ranges
(192.0.2.0/24, 2001:db8::/32) and fictional-use phone numbers.
"""

import dataclasses
import hmac
import ipaddress
import random
import unicodedata

import pytest
from email_validator import EmailNotValidError, validate_email

from app.services import identifiers
from app.services.identifiers import (
    MAX_LENGTH,
    PLATFORMS,
    IdentifierKind,
    InvalidIdentifier,
    NormalisedIdentifier,
    detect_kind,
    match_key,
    normalise,
)

EMAIL = IdentifierKind.EMAIL
PHONE = IdentifierKind.PHONE
USERNAME = IdentifierKind.USERNAME
ACCOUNT_ID = IdentifierKind.ACCOUNT_ID
IP = IdentifierKind.IP

SECRET = b"test-secret-not-for-production"
NBSP = "\u00a0"
IDEOGRAPHIC_SPACE = "\u3000"


def spec(kind, raw, platform=None, region=None):
    """One call to normalise(), as a readable test-table row."""
    return (kind, raw, platform, region)


def run(row):
    kind, raw, platform, region = row
    return normalise(kind, raw, platform=platform, region=region)


# --- inputs that must normalise to the same canonical value -----------------

EQUIVALENT = [
    # (expected value, [inputs])
    pytest.param(
        "alice@example.org",
        [
            spec(EMAIL, "alice@example.org"),
            spec(EMAIL, "Alice@Example.ORG"),
            spec(EMAIL, "  alice@example.org\t"),
            spec(EMAIL, f"{NBSP}alice@example.org{NBSP}"),
            spec(EMAIL, "alice＠example.org"),  # full-width @
            spec(EMAIL, "ＡＬＩＣＥ＠ＥＸＡＭＰＬＥ．ＯＲＧ"),  # all full-width
            spec("email", "ALICE@example.org"),  # kind given as a string
        ],
        id="email-case-space-fullwidth",
    ),
    pytest.param(
        "fiona@example.com",
        [
            spec(EMAIL, "ﬁona@example.com"),  # U+FB01 ligature
            spec(EMAIL, "FIONA@EXAMPLE.COM"),
        ],
        id="email-ligature",
    ),
    pytest.param(
        "user@xn--bcher-kva.example",
        [
            spec(EMAIL, "user@Bücher.example"),
            spec(EMAIL, "user@xn--bcher-kva.example"),
            spec(EMAIL, "USER@BÜCHER.EXAMPLE"),
            spec(EMAIL, "User@XN--BCHER-KVA.example"),
        ],
        id="email-idna-domain",
    ),
    pytest.param(
        "зоя@example.org",
        [
            spec(EMAIL, "Зоя@example.org"),  # non-ASCII local part is case-folded too
            spec(EMAIL, "ЗОЯ@example.org"),
        ],
        id="email-non-ascii-local",
    ),
    pytest.param(
        "strasse@example.org",
        [spec(EMAIL, "Straße@example.org"), spec(EMAIL, "STRASSE@example.org")],
        id="email-casefold-sharp-s",
    ),
    pytest.param(
        "+64215550123",
        [
            spec(PHONE, "+64 21 555 0123"),
            spec(PHONE, "+64-21-555-0123"),
            spec(PHONE, "+64.21.555.0123"),
            spec(PHONE, "(+64) 21 555 0123"),
            spec(PHONE, "+64 (21) 555-0123"),
            spec(PHONE, "0064 21 555 0123"),  # 00 = international, no region needed
            spec(PHONE, "0064215550123"),
            spec(PHONE, f"\t+64 21 555 0123{NBSP}"),
            spec(PHONE, "＋６４ ２１ ５５５ ０１２３"),  # full-width digits and plus
            spec(PHONE, "021 555 0123", region="NZ"),
            spec(PHONE, "021-555-0123", region="NZ"),
            spec(PHONE, "(021) 555.0123", region="NZ"),
            spec(PHONE, "０２１ ５５５ ０１２３", region="NZ"),
            spec(PHONE, "021 555 0123", region=" nz "),  # region hint is tidied
            spec(PHONE, "+64 21 555 0123", region="GB"),  # country code beats the hint
            spec(PHONE, "0064 21 555 0123", region="US"),  # US dials 011, but 00 still works
            spec(PHONE, "0011 64 21 555 0123", region="AU"),  # AU's own 0011 prefix
            spec(PHONE, "tel:+64-21-555-0123"),
        ],
        id="phone-nz",
    ),
    pytest.param(
        "+442079460018",
        [
            spec(PHONE, "020 7946 0018", region="GB"),
            spec(PHONE, "(020) 7946-0018", region="GB"),
            spec(PHONE, "+44 20 7946 0018"),
            spec(PHONE, "+44 (0)20 7946 0018"),
            spec(PHONE, "0044 20 7946 0018", region="GB"),
            spec(PHONE, "0044 20 7946 0018"),
        ],
        id="phone-gb",
    ),
    pytest.param(
        "+12025550143",
        [
            spec(PHONE, "(202) 555-0143", region="US"),
            spec(PHONE, "202.555.0143", region="US"),
            spec(PHONE, "1-202-555-0143", region="US"),
            spec(PHONE, "+1 202 555 0143"),
            spec(PHONE, "+1 (202) 555-0143", region="NZ"),
            spec(PHONE, "001 202 555 0143", region="NZ"),
        ],
        id="phone-us",
    ),
    pytest.param(
        "2001:db8::1",
        [
            spec(IP, "2001:db8::1"),
            spec(IP, "2001:0db8:0000:0000:0000:0000:0000:0001"),
            spec(IP, "2001:DB8::1"),
            spec(IP, "2001:db8:0:0:0:0:0:1"),
            spec(IP, " 2001:db8::1\n"),
        ],
        id="ipv6-short-long",
    ),
    pytest.param(
        "192.0.2.1",
        [
            spec(IP, "192.0.2.1"),
            spec(IP, "::ffff:192.0.2.1"),  # IPv4-mapped IPv6
            spec(IP, "::FFFF:C000:0201"),
            spec(IP, f"{NBSP}192.0.2.1 "),
            spec(IP, "１９２．０．２．１"),  # full-width
        ],
        id="ipv4-and-mapped",
    ),
    pytest.param(
        "alice",
        [
            spec(USERNAME, "alice", "instagram"),
            spec(USERNAME, "Alice", "instagram"),
            spec(USERNAME, "ALICE", "instagram"),
            spec(USERNAME, "ＡＬＩＣＥ", "instagram"),  # full-width
            spec(USERNAME, "@alice", "instagram"),  # handle prefix dropped
            spec(USERNAME, "＠ａｌｉｃｅ", "instagram"),
            spec(USERNAME, " @Alice\t", "instagram"),
            spec(USERNAME, f"{NBSP}alice{IDEOGRAPHIC_SPACE}", "instagram"),
            spec(USERNAME, "alice", "Instagram"),  # platform slug is tidied
            spec(USERNAME, "alice", " INSTAGRAM "),
            spec("USERNAME", "alice", "instagram"),
        ],
        id="username-case-space-fullwidth-at",
    ),
    pytest.param(
        "fiona",
        [
            spec(USERNAME, "ﬁona", "tiktok"),  # ligature
            spec(USERNAME, "FIONA", "tiktok"),
        ],
        id="username-ligature",
    ),
    pytest.param(
        "strasse",
        [spec(USERNAME, "Straße", "x"), spec(USERNAME, "STRASSE", "x")],
        id="username-casefold",
    ),
    pytest.param(
        "100012345678901",
        [
            spec(ACCOUNT_ID, "100012345678901", "facebook"),
            spec(ACCOUNT_ID, " 100012345678901\t", "facebook"),
            spec(ACCOUNT_ID, "１０００１２３４５６７８９０１", "facebook"),
        ],
        id="account-id-digits",
    ),
    pytest.param(
        "abc123xyz",
        [
            spec(ACCOUNT_ID, "AbC123xyz", "google"),
            spec(ACCOUNT_ID, "abc123XYZ", "google"),
            spec(ACCOUNT_ID, "ABC123XYZ", "google"),
        ],
        id="account-id-case",
    ),
]


@pytest.mark.parametrize(("expected", "rows"), EQUIVALENT)
def test_equivalent_inputs_normalise_alike(expected, rows):
    results = [run(row) for row in rows]
    assert {r.value for r in results} == {expected}
    # Same value, kind and platform means the same match key.
    assert len({match_key(SECRET, r) for r in results}) == 1


@pytest.mark.parametrize(("expected", "rows"), EQUIVALENT)
def test_canonical_value_is_stable(expected, rows):
    kind, _, platform, _ = rows[0]
    assert normalise(kind, expected, platform=platform).value == expected


# --- inputs that must NOT match ---------------------------------------------

DISTINCT = [
    pytest.param(
        spec(USERNAME, "alice", "instagram"), spec(USERNAME, "alice", "tiktok"), id="platform"
    ),
    pytest.param(
        spec(USERNAME, "alice", "instagram"), spec(ACCOUNT_ID, "alice", "instagram"), id="kind"
    ),
    pytest.param(
        spec(USERNAME, "alice", "instagram"), spec(USERNAME, "alice1", "instagram"), id="suffix"
    ),
    pytest.param(spec(IP, "192.0.2.1"), spec(IP, "192.0.2.10"), id="ipv4-prefix"),
    pytest.param(spec(IP, "2001:db8::1"), spec(IP, "2001:db8::10"), id="ipv6"),
    pytest.param(spec(IP, "::ffff:192.0.2.1"), spec(IP, "::192.0.2.1"), id="mapped-vs-compat"),
    # No provider-specific rules: dots and +tags are significant everywhere.
    pytest.param(spec(EMAIL, "j.smith@gmail.example"), spec(EMAIL, "jsmith@gmail.example"), id="dots"),
    pytest.param(spec(EMAIL, "alice+tag@example.org"), spec(EMAIL, "alice@example.org"), id="plus-tag"),
    pytest.param(spec(EMAIL, "alice@example.org"), spec(EMAIL, "alice@example.com"), id="domain"),
    pytest.param(spec(PHONE, "+64 21 555 0123"), spec(PHONE, "+61 21 555 0123"), id="country-code"),
    pytest.param(
        spec(PHONE, "021 555 0123", region="NZ"),
        spec(PHONE, "021 555 0123", region="GB"),
        id="same-digits-other-region",
    ),
    pytest.param(spec(PHONE, "+64215550123"), spec(USERNAME, "+64215550123", "whatsapp"), id="phone-vs-username"),
]


@pytest.mark.parametrize(("left", "right"), DISTINCT)
def test_distinct_inputs_do_not_match(left, right):
    a, b = run(left), run(right)
    assert (a.kind, a.platform, a.value) != (b.kind, b.platform, b.value)
    assert match_key(SECRET, a) != match_key(SECRET, b)


# --- the result object -----------------------------------------------------


def test_result_fields():
    result = normalise("username", "\t@Alice ", platform=" Instagram")
    assert result == NormalisedIdentifier(
        kind=USERNAME, platform="instagram", raw="@Alice", value="alice"
    )
    assert type(result.kind) is IdentifierKind


@pytest.mark.parametrize("kind", [EMAIL, PHONE, IP])
def test_platformless_kinds_have_no_platform(kind):
    raw = {EMAIL: "alice@example.org", PHONE: "+64 21 555 0123", IP: "192.0.2.1"}[kind]
    assert normalise(kind, raw).platform is None
    assert normalise(kind, raw, platform="").platform is None
    assert normalise(kind, raw, platform="  ").platform is None


def test_result_is_frozen():
    result = normalise(IP, "192.0.2.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.value = "192.0.2.2"  # type: ignore[misc]


def test_platforms_are_lowercase_slugs():
    assert PLATFORMS["x"] == "X (Twitter)"
    assert "other" in PLATFORMS
    assert all(slug == slug.strip().lower() and label for slug, label in PLATFORMS.items())


# --- match_key ---------------------------------------------------------------


def test_match_key_is_hex_sha256():
    key = match_key(SECRET, normalise(IP, "192.0.2.1"))
    assert len(key) == 64
    int(key, 16)


@pytest.mark.parametrize("secret", [b"k", SECRET, b"k" * 64, b"k" * 65, bytes(range(256))])
def test_match_key_is_hmac_sha256_of_kind_platform_and_value(secret):
    # Stored keys must never change: pin them to the standard library's HMAC, for secrets
    # shorter than, as long as and longer than SHA-256's block.
    ident = normalise(USERNAME, "@Alice", platform="instagram")
    expected = hmac.new(secret, b"username\x1finstagram\x1falice", "sha256").hexdigest()
    assert match_key(secret, ident) == expected
    ident = normalise(IP, "192.0.2.1")
    assert match_key(secret, ident) == hmac.new(secret, b"ip\x1f\x1f192.0.2.1", "sha256").hexdigest()


def test_match_key_equal_for_equal_identifiers():
    a = normalise(EMAIL, "Alice@Example.org")
    b = normalise(EMAIL, " alice@example.org ")
    assert a.raw != b.raw
    assert match_key(SECRET, a) == match_key(SECRET, b)


def test_match_key_covers_kind_platform_and_value():
    keys = {
        match_key(SECRET, NormalisedIdentifier(USERNAME, "instagram", "x", "alice")),
        match_key(SECRET, NormalisedIdentifier(USERNAME, "tiktok", "x", "alice")),
        match_key(SECRET, NormalisedIdentifier(ACCOUNT_ID, "instagram", "x", "alice")),
        match_key(SECRET, NormalisedIdentifier(USERNAME, "instagram", "x", "alice1")),
        match_key(SECRET, NormalisedIdentifier(EMAIL, None, "x", "alice")),
    }
    assert len(keys) == 5


def test_match_key_ignores_raw():
    a = NormalisedIdentifier(USERNAME, "instagram", "@Alice", "alice")
    b = NormalisedIdentifier(USERNAME, "instagram", "alice", "alice")
    assert match_key(SECRET, a) == match_key(SECRET, b)


def test_match_key_depends_on_secret():
    ident = normalise(PHONE, "+64 21 555 0123")
    assert match_key(SECRET, ident) != match_key(b"another-secret", ident)


def test_match_key_refuses_empty_secret():
    with pytest.raises(ValueError):
        match_key(b"", normalise(IP, "192.0.2.1"))


# --- detect_kind -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("192.0.2.1", IP),
        (" 192.0.2.1 ", IP),
        ("2001:db8::1", IP),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", IP),
        ("::ffff:192.0.2.1", IP),
        ("alice@example.org", EMAIL),
        ("alice＠example.org", EMAIL),
        ("user@Bücher.example", EMAIL),
        ("+64 21 555 0123", PHONE),
        ("(+64) 21 555 0123", PHONE),
        ("(021) 555-0123", PHONE),
        ("021.555.0123", PHONE),
        ("0064 21 555 0123", PHONE),
        ("＋６４ ２１ ５５５ ０１２３", PHONE),
        ("123456", PHONE),
        ("12345", None),  # fewer than six digits
        ("alice", None),
        ("@alice", None),
        ("alice@", None),
        ("100012345678901x", None),
        ("192.0.2.0/24", None),
        ("fe80::1%eth0", None),  # normalise() refuses zone ids, so no IP hint
        ("", None),
        ("   ", None),
        (None, None),
        (12345678, None),
    ],
)
def test_detect_kind(raw, expected):
    assert detect_kind(raw) is expected


# --- invalid inputs ------------------------------------------------------------

INVALID = [
    # e-mail
    pytest.param(spec(EMAIL, "not-an-email"), "e-mail", id="email-no-at"),
    pytest.param(spec(EMAIL, "alice@"), "e-mail", id="email-no-domain"),
    pytest.param(spec(EMAIL, "@example.org"), "e-mail", id="email-no-local"),
    pytest.param(spec(EMAIL, "alice@example"), "e-mail", id="email-no-dot"),
    pytest.param(spec(EMAIL, "alice@@example.org"), "e-mail", id="email-double-at"),
    pytest.param(spec(EMAIL, "alice@exa mple.org"), "e-mail", id="email-space"),
    pytest.param(spec(EMAIL, "alice@example.org", "google"), "platform", id="email-with-platform"),
    # phone
    pytest.param(spec(PHONE, "hello"), "phone", id="phone-letters"),
    pytest.param(spec(PHONE, "hello", region="NZ"), "phone", id="phone-letters-region"),
    pytest.param(spec(PHONE, "021 555 0123"), "country code", id="phone-needs-region"),
    pytest.param(spec(PHONE, "021 555 0123", region="XX"), "jurisdiction", id="phone-unknown-region"),
    pytest.param(spec(PHONE, "+64 21"), "phone", id="phone-too-short"),
    pytest.param(spec(PHONE, "+64 21 555 0123 4567 8901"), "phone", id="phone-too-long"),
    pytest.param(spec(PHONE, "555 0143", region="US"), "area code", id="phone-local-only"),
    pytest.param(spec(PHONE, "+0 123456"), "phone", id="phone-bad-country-code"),
    pytest.param(spec(PHONE, "021 555 0123 / 021 555 0456", region="NZ"), "phone", id="phone-two"),
    pytest.param(spec(PHONE, "+64 21 555 0123", "whatsapp"), "platform", id="phone-with-platform"),
    # ip
    pytest.param(spec(IP, "192.0.2.256"), "IP", id="ip-octet-range"),
    pytest.param(spec(IP, "192.0.2.0/24"), "IP", id="ip-cidr"),
    pytest.param(spec(IP, "2001:db8::/32"), "IP", id="ip6-cidr"),
    pytest.param(spec(IP, "fe80::1%eth0"), "zone", id="ip-zone-id"),
    pytest.param(spec(IP, "192.0.2.01"), "IP", id="ip-leading-zero"),
    pytest.param(spec(IP, "2001:db8::1::2"), "IP", id="ip6-double-gap"),
    pytest.param(spec(IP, "example.org"), "IP", id="ip-hostname"),
    pytest.param(spec(IP, "192.0.2.1", "other"), "platform", id="ip-with-platform"),
    # username / account id
    pytest.param(spec(USERNAME, "", "instagram"), "empty", id="username-empty"),
    pytest.param(spec(USERNAME, f" \t{NBSP}{IDEOGRAPHIC_SPACE}", "instagram"), "empty", id="username-blank"),
    pytest.param(spec(USERNAME, "@", "instagram"), "empty", id="username-only-at"),
    pytest.param(spec(USERNAME, "alice"), "platform", id="username-no-platform"),
    pytest.param(spec(USERNAME, "alice", "  "), "platform", id="username-blank-platform"),
    pytest.param(spec(USERNAME, "alice", "myspace"), "unknown platform 'myspace'", id="username-bad-platform"),
    pytest.param(spec(USERNAME, "ali\nce", "instagram"), "control", id="username-control-char"),
    pytest.param(spec(ACCOUNT_ID, "   ", "facebook"), "empty", id="account-id-blank"),
    pytest.param(spec(ACCOUNT_ID, "100012345678901"), "platform", id="account-id-no-platform"),
    pytest.param(spec(ACCOUNT_ID, "1000", "Face Book"), "unknown platform", id="account-id-bad-platform"),
    # every kind
    pytest.param(spec(EMAIL, ""), "empty", id="email-empty"),
    pytest.param(spec(PHONE, "   "), "empty", id="phone-blank"),
    pytest.param(spec(IP, "\t"), "empty", id="ip-blank"),
    pytest.param(spec(USERNAME, "a" * (MAX_LENGTH + 1), "instagram"), "too long", id="username-overlong"),
    pytest.param(spec(ACCOUNT_ID, "1" * (MAX_LENGTH + 1), "facebook"), "too long", id="account-id-overlong"),
    pytest.param(spec(EMAIL, "a" * MAX_LENGTH + "@example.org"), "too long", id="email-overlong"),
    pytest.param(spec(PHONE, "1" * (MAX_LENGTH + 1)), "too long", id="phone-overlong"),
    # U+FDFA becomes 18 characters under NFKC: short input, overlong value.
    pytest.param(spec(USERNAME, "\ufdfa" * 20, "other"), "too long", id="username-expands"),
    pytest.param(spec("handle", "alice", "instagram"), "kind", id="unknown-kind"),
    pytest.param(spec("", "alice"), "kind", id="empty-kind"),
    pytest.param(spec(None, "alice"), "kind", id="no-kind"),
    pytest.param(spec(USERNAME, None, "instagram"), "text", id="raw-none"),
    pytest.param(spec(ACCOUNT_ID, 100012345678901, "facebook"), "text", id="raw-int"),
]


@pytest.mark.parametrize(("row", "fragment"), INVALID)
def test_invalid_inputs_are_refused(row, fragment):
    with pytest.raises(InvalidIdentifier) as caught:
        run(row)
    reason = caught.value.reason
    assert isinstance(reason, str) and reason.strip()
    assert str(caught.value) == reason
    assert fragment.lower() in reason.lower()


def test_invalid_identifier_is_a_value_error():
    with pytest.raises(ValueError):
        normalise(EMAIL, "not-an-email")


def test_email_reason_carries_library_message():
    with pytest.raises(InvalidIdentifier) as caught:
        normalise(EMAIL, "alice@example")
    assert caught.value.reason.startswith("not a valid e-mail address: ")
    assert len(caught.value.reason) > len("not a valid e-mail address: ")


def test_length_limit_is_inclusive():
    raw = "a" * MAX_LENGTH
    assert normalise(USERNAME, raw, platform="other").value == raw


# --- the fast paths give the library's answer -------------------------------------------------
# identifiers takes common e-mail and IP shapes without the library's slow generic code; for
# every input, valid or not, the answer (canonical value or refusal reason) must be the one the
# plain library call gives.


def _library_email(text):
    try:
        result = validate_email(unicodedata.normalize("NFKC", text), check_deliverability=False)
    except EmailNotValidError as exc:
        return "refused", f"not a valid e-mail address: {exc}"
    return "ok", f"{identifiers._caseless(result.local_part)}@{result.ascii_domain.lower()}"


def _library_ip(text):
    try:
        address = ipaddress.ip_address(unicodedata.normalize("NFKC", text))
    except ValueError:
        return "refused", "not a valid IP address (one address, without a /prefix)"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return "refused", "not a valid IP address: remove the %zone suffix"
        if address.ipv4_mapped is not None:
            return "ok", str(address.ipv4_mapped)
    return "ok", str(address)


def _ours(function, text):
    try:
        return "ok", function(text)
    except InvalidIdentifier as exc:
        return "refused", exc.reason


_LOCAL_PIECES = ["a", "Z", "holder7", "x.y", ".", "..", "-", "_", "+tag", "!#$%&'*/=?^`{|}~", '"', "\\",
                 "@", "<", ">", " ", "é", "ß", "İ", "\u0301", "ｆｕｌｌ", "postmaster", "ABUSE", "a" * 64, "b" * 65]
_DOMAIN_PIECES = ["example.org", "mail3.example.org", "EXAMPLE.COM", "a", ".", "..", "-", "-a", "a-", "xn--bcher-kva",
                  "bücher.example", "example", "localhost", "test", "invalid", "onion", "local", "arpa", "123",
                  "co.uk", "[192.0.2.1]", "[", "]", "＠", "．", "_", "l" * 63, "m" * 64, "@", " ", "\u200b", "ex ample"]


def _tricky_emails(count, rng):
    values = ["alice@example.org", "Alice.W+tag@Example.ORG", "a@b.co", '"quoted"@example.org', "a..b@example.org",
              ".a@example.org", "a.@example.org", "a@example.org.", "a@-example.org", "a@example..org",
              "postmaster@example.org", "Name <a@example.org>", "a@[192.0.2.1]", "a@example", "a@b@example.org",
              "a@xn--bcher-kva.example", "a@" + "l" * 63 + ".example.org", "a@" + "m" * 64 + ".example.org",
              "x" * 64 + "@" + ".".join(["d" * 60] * 3) + ".org", "x" * 64 + "@" + ".".join(["d" * 61] * 3) + ".org"]
    atext = "abcXYZ0189_!#$%&'*+-/=?^`{|}~"
    label_characters = "abzABZ0189-"
    for _ in range(count):
        if rng.random() < 0.5:  # mostly well-formed: the fast path's shape, near its limits
            local = ".".join("".join(rng.choice(atext) for _ in range(rng.choice([1, 3, 8, 30])))
                             for _ in range(rng.randint(1, 3)))
            labels = ["".join(rng.choice(label_characters) for _ in range(rng.choice([1, 2, 10, 62, 63, 64])))
                      for _ in range(rng.randint(1, 4))]
            values.append(local + "@" + ".".join(labels + [rng.choice(["org", "ORG", "c0m", "123", "test", "x"])]))
        else:
            local = "".join(rng.choice(_LOCAL_PIECES) for _ in range(rng.randint(0, 4)))
            domain = ".".join(rng.choice(_DOMAIN_PIECES) for _ in range(rng.randint(0, 4)))
            values.append(local + rng.choice(["@", "@", "@", "＠", "", "@@"]) + domain)
    return values


def _tricky_ips(count, rng):
    values = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3", "1.2.3.4.5", "1.2.3.4/32",
              "１９２.0.2.1", "2001:db8:0:0::1", "2001:DB8::1", "::", "::1", "1::", "::ffff:192.0.2.1",
              "::192.0.2.1", "fe80::1%eth0", "2001:db8::1/64", "2001:db8:::1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9",
              "1:2:3:4:5:6:7::", ":1:2:3:4:5:6:7", "2001:0db8:0000:0000:0000:0000:0000:0001", "12345::1", " 1.2.3.4"]
    def octet():
        if rng.random() < 0.9:
            return str(rng.choice([rng.randint(0, 255), rng.randint(0, 9), rng.randint(250, 260)]))
        return rng.choice([f"0{rng.randint(0, 99)}", "", "x", "٣", "+1", " 1"])

    def hextet():
        if rng.random() < 0.85:
            return format(rng.choice([0, 0, rng.randint(0, 0xFFFF)]), rng.choice(["x", "X", "04x"]))
        return rng.choice(["", "00000", "g", "192.0.2.1"])

    for _ in range(count):
        if rng.random() < 0.4:
            values.append(".".join(octet() for _ in range(rng.choice([3, 4, 4, 4, 4, 5]))))
        else:
            parts = [hextet() for _ in range(rng.choice([3, 5, 7, 8, 8, 8, 9]))]
            if rng.random() < 0.5:
                parts[rng.randrange(len(parts))] = ""  # a "::"
            values.append(":".join(parts) + rng.choice(["", "", "", "%1", "/64"]))
    return values


def _plain_ipv6_texts(count, rng):
    """Hex-and-colon IPv6 text as people write it: zero groups in every place, spelt in full,
    with leading zeros, in capitals or with "::" anywhere, and some with a group too many or a
    stray colon."""
    values = ["::", "::1", "1::", "::ffff:0:1", "::ffff:c000:201", "0:0:0:0:0:ffff:c000:201", "::c000:201",
              "0:0:0:0:0:0:0:1", "1:0:0:2:0:0:0:3", "1:0:0:0:2:0:0:3", "1:0::2:0:0:3", "fFfF::", "::0:0:1"]
    for _ in range(count):
        groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randint(0, 0xFFFF)]) for _ in range(8)]
        if rng.random() < 0.2:
            groups[:6] = [0] * 6  # IPv4-compatible and IPv4-mapped forms
            groups[5] = rng.choice([0, 0xFFFF])
        spelt = [format(group, rng.choice(["x", "X", "04x", "04X"])) for group in groups]
        text = ":".join(spelt)
        if rng.random() < 0.6:  # "::" in place of one or more groups, anywhere
            start = rng.randrange(8)
            end = rng.randint(start + 1, 8)
            text = ":".join(spelt[:start]) + "::" + ":".join(spelt[end:])
        if rng.random() < 0.05:
            text = rng.choice(["1:", "", "1::"]) + text + rng.choice([":1", ":", ""])  # too many groups, stray colons
        values.append(text)
    return values


def test_plain_ipv6_normalises_as_the_library_does():
    rng = random.Random(20261201)
    texts = _plain_ipv6_texts(30_000, rng)
    assert sum(_library_ip(text)[0] == "ok" for text in texts) > 20_000  # mostly valid: the fast path
    for text in texts:
        assert _ours(identifiers._canonical_ip, text) == _library_ip(text), text


def test_common_email_shapes_normalise_as_the_library_does():
    rng = random.Random(20261130)
    for text in _tricky_emails(20_000, rng):
        assert _ours(identifiers._canonical_email, text) == _library_email(text), text


def test_ip_addresses_normalise_as_the_library_does():
    rng = random.Random(20261130)
    for text in _tricky_ips(20_000, rng):
        assert _ours(identifiers._canonical_ip, text) == _library_ip(text), text
