"""Pure readers of a lead's contact data, shared by the SOP 004 lead rules: phone numbers in
E.164, countries and subdivisions as ISO 3166 codes, email addresses checked without network,
registrable domains from the bundled Public Suffix List, company match keys, placeholders.

Nothing here does I/O (pycountry's ISO tables, phonenumbers' metadata and the Public Suffix
List ship inside their packages) or reads the clock.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from publicsuffixlist import PublicSuffixList

# -- phones -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phone:
    """A number read from text: ``e164`` (``+14155551234``) and its extension, or ``problem``
    saying why it is no valid number."""

    e164: str | None = None
    extension: str | None = None
    problem: str | None = None


def read_phone(raw: str, region: str) -> Phone:
    """``raw`` read in the numbering plan of ``region`` when it has no ``+``; a leading
    ``00`` (the ITU's international prefix) is read as ``+`` when the region's own reading
    is no valid number. The extension (``x9``, ``ext. 12``) is kept apart."""
    text = raw.strip()
    readings = [text]
    if text.startswith("00"):
        readings.append("+" + text[2:])
    for reading in readings:
        try:
            number = phonenumbers.parse(reading, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            return Phone(e164=e164, extension=number.extension or None)
    return Phone(problem=f"not a valid phone number (read in {region}'s numbering plan)")


# -- countries and subdivisions ----------------------------------------------------------------


def fold(text: str) -> str:
    """Lower case without accents or surrounding blanks: ``Côte d'Ivoire`` -> ``cote d'ivoire``."""
    if text.isascii():  # nothing to decompose: the same answer, without the per-character walk
        return text.strip().lower()
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


@dataclass(frozen=True)
class Place:
    """A country (alpha-2) and optionally a subdivision (the part of its ISO 3166-2 code
    after the dash, as Salesforce's StateCode holds it), or ``problem``."""

    country: str | None = None
    state: str | None = None
    problem: str | None = None


@cache
def _country_names() -> dict[str, frozenset[str]]:
    """Folded name (alpha-2, alpha-3, name, common and official name) -> alpha-2 codes."""
    out: dict[str, set[str]] = {}
    for country in pycountry.countries:
        for attr in ("alpha_2", "alpha_3", "name", "common_name", "official_name"):
            value = getattr(country, attr, None)
            if value:
                out.setdefault(fold(value), set()).add(country.alpha_2)
    return {k: frozenset(v) for k, v in out.items()}


@cache
def _country_full_names() -> frozenset[str]:
    """Folded country names (not codes: ``IL`` is a US state as well as Israel's code)."""
    return frozenset(
        fold(value)
        for country in pycountry.countries
        for attr in ("name", "common_name", "official_name")
        if (value := getattr(country, attr, None))
    )


@cache
def _subdivisions(country: str) -> dict[str, str]:
    """Folded code (``IL``, ``US-IL``) and name -> the code after the dash."""
    out: dict[str, str] = {}
    for sub in pycountry.subdivisions:
        if sub.country_code != country:
            continue
        short = sub.code.split("-", 1)[1]
        for value in (sub.code, short, sub.name):
            out.setdefault(fold(value), short)
    return out


def country_code(raw: str, aliases: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(alpha-2, None) for a country named by code, name or alias; (None, problem) else.
    ``aliases`` maps folded names (``usa``, ``u.s.``, ``england``) to alpha-2 codes."""
    key = fold(raw)
    if key in aliases:
        return aliases[key], None
    found = _country_names().get(key, frozenset())
    if len(found) == 1:
        return next(iter(found)), None
    fuzzy = {
        c for name, codes in _country_names().items() if key in name.split(", ") for c in codes
    }
    if len(fuzzy) > 1 or len(found) > 1:
        return None, f"ambiguous country {raw!r}: {' or '.join(sorted(found | fuzzy))}"
    if len(fuzzy) == 1:
        return next(iter(fuzzy)), None
    return None, f"unknown country {raw!r}"


def read_place(
    country_raw: str | None,
    state_raw: str | None,
    aliases: Mapping[str, str],
    default_country: str | None,
) -> Place:
    """The country and subdivision a lead names. A state is looked up within its country;
    without a country, within ``default_country``, except a name that is also a country
    (``Georgia``), which is ambiguous."""
    country: str | None = None
    if country_raw:
        country, problem = country_code(country_raw, aliases)
        if problem:
            return Place(problem=problem)
    elif state_raw:
        folded = fold(state_raw)
        if folded in _country_full_names() or folded in aliases:
            return Place(problem=f"ambiguous: {state_raw!r} without a country is a country too")
        if not default_country:
            return Place(problem=f"state {state_raw!r} without a country")
        country = default_country
    if not state_raw:
        return Place(country=country)
    assert country is not None
    state = _subdivisions(country).get(fold(state_raw))
    if state is None:
        return Place(country=country, problem=f"{state_raw!r} is no subdivision of {country}")
    return Place(country=country, state=state)


# -- email and domains -----------------------------------------------------------------------


@dataclass(frozen=True)
class Email:
    """An address checked for syntax (no DNS): as written with its domain lower-cased
    (``cleaned``), its domain in ASCII (IDNA) for matching, or ``problem``."""

    cleaned: str | None = None
    local: str | None = None
    ascii_domain: str | None = None
    problem: str | None = None


def read_email(raw: str) -> Email:
    text = raw.strip()
    try:
        found = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        return Email(problem=str(exc))
    return Email(
        cleaned=f"{found.local_part}@{found.domain}",
        local=found.local_part,
        ascii_domain=found.ascii_domain.lower(),
    )


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package: no download


def registrable_domain(host: str) -> str | None:
    """``mail.acme.co.uk`` -> ``acme.co.uk`` (the Public Suffix List shipped with the
    package); None for a bare public suffix or no domain."""
    host = host.strip().lower().rstrip(".")
    if not host or "." not in host:
        return None
    found: str | None = _psl().privatesuffix(host)
    return found


def under_domain(host: str, domains: Iterable[str]) -> str | None:
    """The one of ``domains`` that ``host`` is, or is a subdomain of (the first listed, when
    several are)."""
    host = host.lower()
    order = _domain_order(tuple(domains))
    found: str | None = None
    start = 0
    while start >= 0:  # the host, then each domain it is under
        suffix = host[start:]
        if suffix in order and (found is None or order[suffix] < order[found]):
            found = suffix
        start = host.find(".", start)
        start = start + 1 if start >= 0 else -1
    return found


@cache
def _domain_order(domains: tuple[str, ...]) -> dict[str, int]:
    order: dict[str, int] = {}
    for i, domain in enumerate(domains):
        order.setdefault(domain.lower(), i)
    return order


# -- companies, placeholders -----------------------------------------------------------------

_PARENS = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_NON_WORD = re.compile(r"[^\w]+")
_WEB = re.compile(r"^(?:https?://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)/?$")


def company_key(name: str, legal_suffixes: Iterable[str]) -> str | None:
    """The company name as matching compares it: folded, parenthesised notes (``(EMEA)``)
    and trailing legal suffixes (``Inc.``, ``GmbH``) dropped, ``&`` read as ``and``,
    punctuation gone; a web domain (``acme.com``) keyed by its registrable label. Never
    empty when the name has a word: ``Co`` alone stays ``co``."""
    folded = fold(name)
    web = _WEB.match(folded)
    if web and (domain := registrable_domain(web.group(1))):
        return domain.split(".")[0]
    text = _PARENS.sub(" ", folded).replace("&", " and ")
    words = [w for w in _NON_WORD.sub(" ", text.replace("'", "")).split() if w]
    suffixes = _suffix_set(tuple(legal_suffixes))
    while len(words) > 1 and words[-1] in suffixes:
        words.pop()
    return " ".join(words) or None


@cache
def _suffix_set(legal_suffixes: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_NON_WORD.sub("", fold(s)) for s in legal_suffixes)


def looks_like_domain(name: str) -> bool:
    web = _WEB.match(fold(name))
    return bool(web and registrable_domain(web.group(1)))


def is_placeholder(value: object, placeholders: Iterable[str]) -> bool:
    """Empty, blank, or a stand-in such as ``N/A``, ``none`` or ``-`` (compared folded)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    text = fold(str(value))
    return not text or text in {fold(p) for p in placeholders}
