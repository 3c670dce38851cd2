"""SOP 004 lead de-duplication: leads that share an email are merged, a lead whose email is a
contact's is handed to its owner, a lead whose company is an account's is linked to it.

Implements ``004_decc60c4b5a2963f.txt``, Lead Management SOP step 1 "Lead Capture",
"Duplicate check performed: Email match -> merge records; Company match -> associate to
account; No match -> create new record", and the Data Management SOP's "Daily Data Hygiene:
Duplicate detection and merge", on the leads of ``lead_scope`` (converted leads cannot be
merged and are left out).

A batch rule: one batch per group of leads sharing a normalised email (a lone lead is a
group of one), so the whole group is decided together. Candidates come from blocks, never
from comparing every pair:

- Lead-Lead (``merge``): the same normalised email (case, blanks, plus-addressing and, for
  the mapped domains, dots in the local part ignored). The master is chosen by the ordered
  ``master_policy`` (most activity, oldest, active owner; then the lowest Id), and the
  master's values after the merge by survivorship: empty fields filled from the others
  (master first, then in policy order), opt-outs OR-ed so an unsubscribe is never lost,
  the earliest lead's Lead Source. Each lead's verdict names its group, the master, why it
  won and the values it keeps. With ``merge = true`` the master's evaluation carries one
  ``MergeRecords`` per merge request (the master and at most two others), at most
  ``merge_cap`` requests per run (whole groups, in group order); off, a plan only. Leads with the same E.164 phone, or the
  same registrable domain and company key, and a name scoring at least
  ``fuzzy_name_threshold`` are listed as possible duplicates, never merged.
- Lead-Contact (``contact``): a contact with the same normalised email: one Task for the
  lead's owner naming the contact.
- Lead-Account (``account``): tiers, the first that finds exactly one account wins:
  ``domain`` (the email's registrable domain is the account's website's, generic domains
  never), ``name`` (the company key equals the account's), ``fuzzy`` (a rapidfuzz score of at
  least ``fuzzy_company_threshold`` on the company key, only with a supporting field: the
  same country, or the same E.164 phone). The lookup, the tier and the evidence are written
  to the lead; two accounts at the winning tier link to none (ambiguous, said in the
  verdict).

With the snapshot's ``changed_since`` (the previous clean run's horizon), an incremental
pass: only the groups that leads, contacts or accounts changed since touch are decided, the
rest only indexed, and the plan is a full pass's (:func:`touched`; docs/rules/lead_dedupe.md,
"Incremental passes").
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field
from rapidfuzz import fuzz, process

from worker import schema
from worker.actions import Action, MergeRecords
from worker.declarations import FieldOf, FieldValues, Placeholders
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Batch, Evaluation, Rule, Verdict
from worker.rules.contact_data import (
    company_key,
    fold,
    read_email,
    read_phone,
    read_place,
    registrable_domain,
    under_domain,
)
from worker.rules.kit import Emit, change_digest, in_scope, render, worker_tasks

RULE_ID = "lead_dedupe"
STEPS = ("merge", "contact", "account")
ACCOUNT = "Account"
CONTACT = "Contact"
# A dot-atom local part (no leading, trailing or double dot) at a LDH domain with a letter TLD.
_PLAIN_EMAIL = re.compile(
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63})"
)
_DIGITS = re.compile(r"[0-9]+")
_WORDS = re.compile(r"\w+")
_HYPHENATED = re.compile(r"[\w-]+")  # a web domain's label, the key of a name that is one
Policy = Literal["most_activity", "oldest", "active_owner"]


_LeadField = Annotated[str, FieldOf(schema.LEAD)]
_LeadFields = Annotated[tuple[str, ...], FieldOf(schema.LEAD)]
_AccountField = Annotated[str, FieldOf(ACCOUNT)]
_Written = Annotated[str, FieldOf(schema.LEAD, write=True)]


class LeadDedupeSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        schema.LEAD: (
            schema.IS_CONVERTED,
            schema.OWNER_ID,
            schema.CREATED_DATE,
            "FirstName",
            "LastName",
        ),
        CONTACT: ("AccountId", "Account.Name"),
        ACCOUNT: (),
        schema.USER: ("IsActive",),
        # The activity the master policy counts, and the contact Tasks found by their key:
        # read even when no other rule reads Tasks.
        schema.TASK: (),
    }

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1,
        description="Lead field (dotted paths allowed) -> allowed values, ANDed: the SOP 004 "
        "leads, e.g. RecordType.DeveloperName = Sales.",
    )
    # -- keys ---------------------------------------------------------------------------------
    email_field: _LeadField = "Email"
    phone_field: _LeadField = "Phone"
    company_field: _LeadField = "Company"
    country_field: _LeadField = "Country"
    strip_plus_addressing: bool = Field(
        default=True, description="jo+news@acme.com is jo@acme.com (on every domain)."
    )
    dotless_domains: tuple[str, ...] = Field(
        default=(), description="Domains whose local parts ignore dots (gmail.com)."
    )
    generic_domains: tuple[str, ...] = Field(min_length=1)
    role_mailboxes: tuple[str, ...] = Field(
        default=(),
        description="Local parts several people share (info, sales): never a merge key.",
    )
    legal_suffixes: tuple[str, ...] = ()
    fuzzy_name_threshold: float = Field(default=90, ge=50, le=100)
    fuzzy_company_threshold: float = Field(default=92, ge=50, le=100)
    # -- merges ------------------------------------------------------------------------------
    master_policy: tuple[Policy, ...] = Field(min_length=1)
    fill_empty_fields: _LeadFields = ()
    or_fields: _LeadFields = ()
    earliest_fields: _LeadFields = ()
    merge: bool = Field(
        default=False,
        description="Send the merges (SOAP merge(), each after its snapshot is written to "
        "SOP_Merge_Snapshot__c); off: the merge plan is shown only.",
    )
    merge_cap: int = Field(
        default=20,
        ge=0,
        description="Merge requests sent per run at most (whole groups, in group order); "
        "the groups past it wait for a later run.",
    )
    # -- contacts, accounts -----------------------------------------------------------------
    contact_email_field: Annotated[str, FieldOf(CONTACT)] = "Email"
    contact_subject: Annotated[str, Placeholders(frozenset({"lead", "contact", "email"}))]
    contact_description: Annotated[
        str, Placeholders(frozenset({"lead", "contact", "email", "account"}))
    ]
    account_website_field: _AccountField = "Website"
    account_phone_field: _AccountField = "Phone"
    account_country_field: _AccountField = "BillingCountry"
    matched_account_field: _Written
    match_tier_field: _Written
    match_evidence_field: _Written

    def writes(self) -> dict[str, set[str]]:
        out = super().writes()
        if self.merge:  # doctor checks the snapshot object is deployed and writable
            out.setdefault(schema.MERGE_SNAPSHOT, set()).update(schema.MERGE_SNAPSHOT_FIELDS)
        return out

    def snapshot_fields(self) -> tuple[str, ...]:
        """The lead fields a merge's snapshot keeps of every record of the request."""
        names = (self.email_field, *self.fill_empty_fields, *self.or_fields, *self.earliest_fields)
        return tuple(dict.fromkeys(names))


# -- keys ------------------------------------------------------------------------------------


def email_key(raw: str | None, s: LeadDedupeSettings) -> str | None:
    """The address as matching compares it: the local part folded, plus-addressing
    dropped (``strip_plus_addressing``), dots dropped on ``dotless_domains``, the domain in
    ASCII; None when there is no readable address."""
    if not raw:
        return None
    plain = _PLAIN_EMAIL.fullmatch(raw.strip())
    if plain:  # ASCII with nothing to normalise: as email-validator would read it, faster
        local, domain = plain.group(1).lower(), plain.group(2).lower()
    else:
        email = read_email(raw)
        if email.local is None or email.ascii_domain is None:
            return None
        local, domain = fold(email.local), email.ascii_domain
    if s.strip_plus_addressing and "+" in local:
        local = local.split("+", 1)[0]
    if under_domain(domain, s.dotless_domains):
        local = local.replace(".", "")
    return f"{local}@{domain}"


def name_key(record: Record) -> str:
    return " ".join(fold(record.text(n) or "") for n in ("FirstName", "LastName")).strip()


@dataclass(frozen=True)
class Keys:
    """What a lead or account is matched on."""

    email: str | None = None
    phone: str | None = None
    domain: str | None = None  # registrable, never a generic one
    company: str | None = None
    country: str | None = None
    name: str = ""


def lead_keys(lead: Record, s: LeadDedupeSettings, region: str) -> Keys:
    email = email_key(lead.text(s.email_field), s)
    domain = registrable_domain(email.split("@", 1)[1]) if email else None
    if domain and under_domain(domain, s.generic_domains):
        domain = None
    country = _country(lead.text(s.country_field), s)
    phone_raw = lead.text(s.phone_field)
    company = lead.text(s.company_field)
    return Keys(
        email=email,
        phone=read_phone(phone_raw, country or region).e164 if phone_raw else None,
        domain=domain,
        company=company_key(company, s.legal_suffixes) if company else None,
        country=country,
        name=name_key(lead),
    )


def account_keys(account: Record, s: LeadDedupeSettings, org: OrgMapping) -> Keys:
    host = _host(account.text(s.account_website_field))
    name = account.text(org.name_field(ACCOUNT))
    country = _country(account.text(s.account_country_field), s)
    phone_raw = account.text(s.account_phone_field)
    return Keys(
        phone=read_phone(phone_raw, country or org.org.phone_region).e164 if phone_raw else None,
        domain=registrable_domain(host) if host else None,
        company=company_key(name, s.legal_suffixes) if name else None,
        country=country,
    )


def _host(website: str | None) -> str:
    return (website or "").lower().split("://", 1)[-1].split("/", 1)[0]


def _under(host: str, domains: set[str]) -> bool:
    """Whether ``host`` is one of ``domains`` or under one."""
    start = 0
    while start >= 0:
        if host[start:] in domains:
            return True
        start = host.find(".", start)
        start = start + 1 if start >= 0 else -1
    return False


def _country(raw: str | None, s: LeadDedupeSettings) -> str | None:
    return _country_code(raw) if raw else None


@lru_cache(maxsize=4096)  # a few hundred spellings of countries, read for every record
def _country_code(raw: str) -> str | None:
    return read_place(raw, None, {}, None).country


# -- batches ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountMatch:
    account_id: str
    tier: str
    score: float
    evidence: str


@dataclass(frozen=True)
class DedupeBatch(Batch):
    """A group of leads with one normalised email, and what the indexes found for each:
    their keys, account candidates and contacts."""

    keys: Mapping[str, Keys] = field(default_factory=dict)
    accounts: Mapping[str, tuple[AccountMatch, ...]] = field(default_factory=dict)
    contacts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    possible: Mapping[str, tuple[tuple[str, float, str], ...]] = field(default_factory=dict)
    merge_allowed: bool = False  # within the run's merge_cap


def batches(snapshot: Snapshot, s: LeadDedupeSettings, org: OrgMapping) -> Iterator[Batch]:
    region = org.org.phone_region
    if snapshot.changed_since is None:
        leads = [r for r in snapshot.of(schema.LEAD) if mergeable(r, s)]
        keys = {lead.id: lead_keys(lead, s, region) for lead in leads}
        decided, pool = leads, leads
    else:
        keys, decided, pool = touched(snapshot, s, org)
    accounts = snapshot.of(ACCOUNT)
    if snapshot.changed_since is not None:
        accounts = near_accounts(accounts, [keys[lead.id] for lead in decided], s, org)
    index = AccountIndex.build(accounts, s, org)
    wanted = {coarse_email(keys[lead.id].email) for lead in decided}
    contacts: dict[str, list[str]] = defaultdict(list)
    for contact in snapshot.of(CONTACT):
        raw = contact.text(s.contact_email_field)
        if coarse_email(raw) in wanted and (found := email_key(raw, s)):
            contacts[found].append(contact.id)
    possible = possible_duplicates(pool, keys, s)
    groups: dict[str, list[Record]] = defaultdict(list)
    for lead in decided:
        groups[group_key(keys[lead.id], lead, s)].append(lead)
    budget = s.merge_cap if s.merge else 0
    for key, members in sorted(groups.items()):
        label = f"email:{key}" if len(members) > 1 else f"lead:{members[0].id}"
        requests = len(members) // 2  # the master and two others a request
        allowed = 0 < requests <= budget
        budget -= requests if allowed else 0
        yield DedupeBatch(
            key=label,
            records=tuple(members),
            keys={m.id: keys[m.id] for m in members},
            accounts={m.id: index.match(keys[m.id]) for m in members},
            contacts={m.id: tuple(contacts.get(keys[m.id].email or "", ())) for m in members},
            possible={m.id: possible.get(m.id, ()) for m in members},
            merge_allowed=allowed,
        )


def mergeable(lead: Record, s: LeadDedupeSettings) -> bool:
    """In ``lead_scope`` and not converted (Salesforce merges no converted lead)."""
    return in_scope(lead, s.lead_scope) and not lead.flag(schema.IS_CONVERTED)


def group_key(k: Keys, lead: Record, s: LeadDedupeSettings) -> str:
    """The lead's email group: its email key, or the lead alone (no email, or a mailbox
    several people share)."""
    shared = k.email is not None and k.email.split("@", 1)[0] in _roles(s.role_mailboxes)
    return k.email if k.email and not shared else f"lead:{lead.id}"


@cache
def _roles(role_mailboxes: tuple[str, ...]) -> frozenset[str]:
    return frozenset(fold(r) for r in role_mailboxes)


def coarse_email(raw: str | None) -> str | None:
    """A cheap key that two addresses with the same :func:`email_key` always share: the
    local part alone, folded, without its plus suffix and its dots (so it ignores more than
    the key does). The leads not changed since the last evaluation are sorted by it, and
    keyed exactly only when a changed one shares it."""
    if not raw or "@" not in raw:
        return None
    local = raw.strip().rpartition("@")[0]
    local = local.lower() if local.isascii() else fold(local)
    return local.split("+", 1)[0].replace(".", "") or None


def touched(
    snapshot: Snapshot, s: LeadDedupeSettings, org: OrgMapping
) -> tuple[dict[str, Keys], list[Record], list[Record]]:
    """An incremental pass: the leads to decide (the email groups of the leads changed
    since the last evaluation, of the contacts changed since, and, with ``merge`` on,
    every group of two or more, whose merge may still be pending), the keys they need, and
    the leads possible duplicates are looked for among (those, and the unchanged leads that
    may share their phone or domain). Accounts changed since add the leads they may match
    (:func:`accounts_touch`). Decides what a full pass decides for the groups it decides;
    the others a full pass would find nothing new in. A lead's scope is read only once a
    cheap key has found it near a changed one."""
    region = org.org.phone_region
    keys: dict[str, Keys] = {}
    scope: dict[str, bool] = {}
    leads = snapshot.of(schema.LEAD)

    def scoped(found: Iterable[Record]) -> list[Record]:
        out = []
        for lead in found:
            if lead.id not in scope:
                scope[lead.id] = mergeable(lead, s)
            if scope[lead.id]:
                out.append(lead)
        return out

    def keyed(lead: Record) -> Keys:
        if lead.id not in keys:
            keys[lead.id] = lead_keys(lead, s, region)
        return keys[lead.id]

    changed = scoped(lead for lead in leads if snapshot.changed(lead))
    accounts = [a for a in snapshot.of(ACCOUNT) if snapshot.changed(a)]
    if accounts:
        changed += scoped(accounts_touch(leads, accounts, s, org, keyed))
    rough: dict[str | None, list[Record]] = defaultdict(list)
    for lead in leads:
        rough[coarse_email(lead.text(s.email_field))].append(lead)
    rough.pop(None, None)  # no address: a group of one
    emails = {keyed(lead).email for lead in changed}
    emails.update(
        email_key(c.text(s.contact_email_field), s)
        for c in snapshot.of(CONTACT)
        if snapshot.changed(c)
    )
    roles = _roles(s.role_mailboxes)
    emails = {e for e in emails if e and e.split("@", 1)[0] not in roles}
    near = [r for e in emails for r in rough.get(coarse_email(e), ())]
    if s.merge:
        near += [r for members in rough.values() if len(members) > 1 for r in members]
    near = scoped(near)
    groups: dict[str, list[Record]] = defaultdict(list)
    for lead in {r.id: r for r in (*changed, *near)}.values():
        groups[group_key(keyed(lead), lead, s)].append(lead)
    ids = {lead.id for lead in changed}
    decided = [
        lead
        for group in groups.values()
        if any(m.id in ids or keys[m.id].email in emails for m in group)
        or (s.merge and len(group) > 1)
        for lead in group
    ]
    return keys, decided, neighbours(leads, decided, s, keyed, scoped)


def accounts_touch(
    leads: Sequence[Record],
    accounts: Sequence[Record],
    s: LeadDedupeSettings,
    org: OrgMapping,
    keyed: Callable[[Record], Keys],
) -> list[Record]:
    """The leads a changed account may now match: at its domain, with its company key, or
    with a company in its fuzzy block (the key's first word) that scores at least
    ``fuzzy_company_threshold`` against its key. Only the leads whose email is under such a
    domain are keyed in full; the others by their company key alone."""
    found = AccountIndex.build(accounts, s, org)
    domains, words = set(found.by_domain), set(found.by_word)
    out = []
    for lead in leads:
        host = (lead.text(s.email_field) or "").strip().lower().rpartition("@")[2]
        if _under(host, domains) or not host.isascii():
            k = keyed(lead)
            if k.domain and k.domain in domains:
                out.append(lead)
                continue
        raw = lead.text(s.company_field)
        if not raw or words.isdisjoint(_words(raw)):
            continue
        company = company_key(raw, s.legal_suffixes)
        if company and (
            company in found.by_company
            or any(
                fuzz.token_sort_ratio(company, found.keys[a].company or "") >= found.threshold
                for a in found.by_word.get(company.split()[0], ())
            )
        ):
            out.append(lead)
    return out


def near_accounts(
    accounts: Sequence[Record], keys: Sequence[Keys], s: LeadDedupeSettings, org: OrgMapping
) -> list[Record]:
    """The accounts that may match one of these leads, to be keyed exactly (the others
    cannot): first those whose website is at a lead's domain or whose name has every word
    of a lead's company key (the domain and name tiers); then, for the leads those leave
    unmatched, every account whose name has the first word of their key (the fuzzy
    tier's block)."""
    name_field = org.name_field(ACCOUNT)
    domains = {k.domain for k in keys if k.domain}
    by_last: dict[str, list[frozenset[str]]] = defaultdict(list)
    for k in keys:
        if k.company:
            words = k.company.split()
            by_last[words[-1]].append(frozenset(words))
    words_of = {a.id: _words(a.text(name_field)) for a in accounts}
    near = [
        a
        for a in accounts
        if _under(_host(a.text(s.account_website_field)), domains)
        or any(key <= words_of[a.id] for w in words_of[a.id] & by_last.keys() for key in by_last[w])
    ]
    found = AccountIndex.build(near, s, org)
    fuzzy = {k.company.split()[0] for k in keys if k.company and not found.match(k, fuzzy=False)}
    seen = {a.id for a in near}
    return near + [a for a in accounts if a.id not in seen and not fuzzy.isdisjoint(words_of[a.id])]


def _words(name: str | None) -> set[str]:
    """The words a company key of ``name`` can have (more: hyphens kept and not, and
    "and" for "&")."""
    text = fold(name or "").replace("'", "")
    words = {*_WORDS.findall(text), "and"}
    return words.union(_HYPHENATED.findall(text)) if "-" in text else words


def neighbours(
    leads: Sequence[Record],
    decided: Sequence[Record],
    s: LeadDedupeSettings,
    keyed: Callable[[Record], Keys],
    scoped: Callable[[Iterable[Record]], list[Record]],
) -> list[Record]:
    """The decided leads and every lead that may share a possible-duplicate block with one
    (the same phone, or the same domain and company), keyed exactly: those whose phone has,
    at the end of a run of digits, the last seven digits of a decided lead's number, and
    those whose email is at a decided lead's domain (or at a domain not in ASCII)."""
    tails = {k.phone[-7:] for lead in decided if (k := keyed(lead)).phone}
    domains = {k.domain for lead in decided if (k := keyed(lead)).domain and k.company}
    ids = {lead.id for lead in decided}
    pool = list(decided)
    for lead in leads:
        if lead.id in ids:
            continue
        digits = ""
        phone = False
        for run in _DIGITS.findall(lead.text(s.phone_field) or "") if tails else ():
            digits += run
            phone = phone or digits[-7:] in tails
        host = (lead.text(s.email_field) or "").strip().lower().rpartition("@")[2]
        if (phone or not host.isascii() or _under(host, domains)) and scoped((lead,)):
            keyed(lead)
            pool.append(lead)
    return pool


@dataclass(frozen=True)
class AccountIndex:
    """Accounts by registrable domain, by company key, and by the first word of the key
    (the block fuzzy scores are computed in)."""

    keys: Mapping[str, Keys]
    by_domain: Mapping[str, tuple[str, ...]]
    by_company: Mapping[str, tuple[str, ...]]
    by_word: Mapping[str, tuple[str, ...]]
    threshold: float

    @classmethod
    def build(
        cls, accounts: Iterable[Record], s: LeadDedupeSettings, org: OrgMapping
    ) -> AccountIndex:
        keys: dict[str, Keys] = {}
        by_domain: dict[str, list[str]] = defaultdict(list)
        by_company: dict[str, list[str]] = defaultdict(list)
        by_word: dict[str, list[str]] = defaultdict(list)
        for account in accounts:
            try:
                k = account_keys(account, s, org)
            except RecordError:
                continue  # an account that cannot be read is matched by nothing
            keys[account.id] = k
            if k.domain and not under_domain(k.domain, s.generic_domains):
                by_domain[k.domain].append(account.id)
            if k.company:
                by_company[k.company].append(account.id)
                by_word[k.company.split()[0]].append(account.id)
        return cls(
            keys,
            {k: tuple(v) for k, v in by_domain.items()},
            {k: tuple(v) for k, v in by_company.items()},
            {k: tuple(v) for k, v in by_word.items()},
            s.fuzzy_company_threshold,
        )

    def match(self, lead: Keys, fuzzy: bool = True) -> tuple[AccountMatch, ...]:
        """The accounts of the first tier that finds any, best first (``fuzzy`` False:
        the domain and name tiers only)."""
        if lead.domain and (found := self.by_domain.get(lead.domain)):
            return tuple(
                AccountMatch(a, "domain", 100.0, f"email domain {lead.domain} = website")
                for a in found
            )
        if not lead.company:
            return ()
        if found := self.by_company.get(lead.company):
            return tuple(
                AccountMatch(a, "name", 100.0, f"company key {lead.company!r}") for a in found
            )
        if not fuzzy:
            return ()
        block = self.by_word.get(lead.company.split()[0], ())
        choices = {a: self.keys[a].company or "" for a in block}
        scored = process.extract(
            lead.company,
            choices,
            scorer=fuzz.token_sort_ratio,
            score_cutoff=self.threshold,
            limit=5,
        )
        out = []
        for _, score, account_id in scored:
            account = self.keys[account_id]
            support = _support(lead, account)
            if support:
                out.append(
                    AccountMatch(
                        account_id,
                        "fuzzy",
                        round(score, 1),
                        f"company {lead.company!r} ~ {account.company!r} ({score:.0f}), {support}",
                    )
                )
        return tuple(out)


def _support(lead: Keys, account: Keys) -> str | None:
    if lead.phone and lead.phone == account.phone:
        return f"same phone {lead.phone}"
    if lead.country and lead.country == account.country:
        return f"same country {lead.country}"
    return None


def possible_duplicates(
    leads: Sequence[Record], keys: Mapping[str, Keys], s: LeadDedupeSettings
) -> dict[str, tuple[tuple[str, float, str], ...]]:
    """Leads with another email but the same phone, or the same domain and company key,
    whose names score at least ``fuzzy_name_threshold``: listed, never merged."""
    blocks: dict[str, list[str]] = defaultdict(list)
    for lead in leads:
        k = keys[lead.id]
        if k.phone:
            blocks[f"phone {k.phone}"].append(lead.id)
        if k.domain and k.company:
            blocks[f"domain {k.domain} and company {k.company!r}"].append(lead.id)
    out: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
    for evidence, ids in blocks.items():
        if len(ids) < 2 or len(ids) > 50:  # a switchboard number is no evidence
            continue
        for a in ids:
            for b in ids:
                if a == b or (keys[a].email and keys[a].email == keys[b].email):
                    continue
                if not keys[a].name or not keys[b].name:
                    continue
                score = fuzz.token_sort_ratio(keys[a].name, keys[b].name)
                if score >= s.fuzzy_name_threshold:
                    out[a].append((b, round(score, 1), evidence))
    return {k: tuple(sorted(set(v))) for k, v in out.items()}


# -- decisions -------------------------------------------------------------------------------


def decide_batch(
    batch: Batch, snapshot: Snapshot, at: AsOf, s: LeadDedupeSettings, org: OrgMapping
) -> Iterator[Evaluation]:
    assert isinstance(batch, DedupeBatch)
    group = list(batch.records)
    plan = merge_plan(group, snapshot, s) if len(group) > 1 else None
    state = "plan only (merge = false)"
    if plan and s.merge:
        state = "merged" if batch.merge_allowed else f"held back: merge_cap {s.merge_cap} reached"
    for lead in group:
        emit = Emit.on(RULE_ID, s, org, lead)
        actions: list[Action] = []
        notes: list[str] = []
        if plan:
            notes.append(plan.describe(lead.id, state))
        if plan and state == "merged" and lead.id != plan.master:
            yield Evaluation(
                rule=RULE_ID,
                target=emit.target,
                verdict=Verdict.DONE,
                why=notes[0] + "; its own steps are left to the master",
            )
            continue
        if plan and state == "merged":
            actions.extend(_merges(emit, plan, snapshot, s))
        link = _account_link(emit, lead, batch.accounts[lead.id], s)
        notes.append(link[1])
        if link[0]:
            actions.append(link[0])
        for contact_id in batch.contacts[lead.id]:
            task = _contact_task(emit, lead, snapshot, at, s, org, contact_id)
            notes.append(f"email matches contact {contact_id}")
            if task:
                actions.append(task)
        for other, score, evidence in batch.possible[lead.id]:
            notes.append(f"possible duplicate {other} (name score {score:.0f}, {evidence})")
        verdict = Verdict.ACT if actions else Verdict.DONE
        yield Evaluation(
            rule=RULE_ID,
            target=emit.target,
            verdict=verdict,
            why="; ".join(n for n in notes if n),
            actions=tuple(actions),
        )


@dataclass(frozen=True)
class MergePlan:
    """Which lead survives a group, why, and the values it keeps."""

    master: str
    victims: tuple[str, ...]
    ranking: tuple[tuple[str, str], ...]  # (lead Id, what it scored on the policy)
    values: Mapping[str, Any]
    email: str

    @property
    def requests(self) -> tuple[tuple[str, ...], ...]:
        """The merge requests: the master with at most two others each (Salesforce's
        limit of three records per merge)."""
        return tuple(
            (self.master, *self.victims[i : i + 2]) for i in range(0, len(self.victims), 2)
        )

    def describe(self, lead_id: str, state: str = "plan only (merge = false)") -> str:
        order = ", ".join(f"{rid} ({why})" for rid, why in self.ranking)
        kept = ", ".join(f"{k}={v!r}" for k, v in sorted(self.values.items())) or "none"
        role = "master" if lead_id == self.master else f"merged into {self.master}"
        return (
            f"same email {self.email}: {role}; candidates by master policy: {order}; "
            f"{len(self.requests)} merge request(s); master keeps {kept}; {state}"
        )


def _merges(
    emit: Emit, plan: MergePlan, snapshot: Snapshot, s: LeadDedupeSettings
) -> Iterator[MergeRecords]:
    """One merge per request, each setting the surviving values on the master (a request
    merged alone still leaves the master with every value the plan keeps)."""
    for request in plan.requests:
        victims = request[1:]
        stamps = {}
        for victim in victims:
            record = snapshot.get(victim)
            stamps[victim] = record.text(schema.SYSTEM_MODSTAMP) if record else None
        yield emit.merge(
            "merge",
            victim_ids=victims,
            victim_stamps=stamps,
            master_values=plan.values,
            snapshot_fields=s.snapshot_fields(),
            reason=f"same email {plan.email}: {len(victims)} lead(s) merged into the master",
            step_key=f"merge-{'-'.join(victims)}",
        )


def merge_plan(group: Sequence[Record], snapshot: Snapshot, s: LeadDedupeSettings) -> MergePlan:
    def rank(lead: Record) -> tuple[Any, ...]:
        parts: list[Any] = []
        for policy in s.master_policy:
            if policy == "most_activity":
                parts.append(-len(snapshot.tasks_for(lead.id)))
            elif policy == "oldest":
                parts.append(str(lead.get(schema.CREATED_DATE) or "9999"))
            else:
                owner = snapshot.get(lead.text(schema.OWNER_ID))
                parts.append(0 if owner is not None and owner.flag("IsActive") else 1)
        return (*parts, lead.id)

    def shown(lead: Record) -> str:
        out = []
        for policy in s.master_policy:
            if policy == "most_activity":
                out.append(f"{len(snapshot.tasks_for(lead.id))} activities")
            elif policy == "oldest":
                out.append(f"created {str(lead.get(schema.CREATED_DATE) or '?')[:10]}")
            else:
                owner = snapshot.get(lead.text(schema.OWNER_ID))
                active = owner is not None and owner.flag("IsActive")
                out.append("active owner" if active else "inactive owner")
        return ", ".join(out)

    ordered = sorted(group, key=rank)
    master = ordered[0]
    return MergePlan(
        master=master.id,
        victims=tuple(r.id for r in ordered[1:]),
        ranking=tuple((r.id, shown(r)) for r in ordered),
        values=survivors(ordered, s),
        email=email_key(master.text(s.email_field), s) or "",
    )


def survivors(ordered: Sequence[Record], s: LeadDedupeSettings) -> dict[str, Any]:
    """The master's (first's) values that change by the merge: empty fields filled from
    the others in order, opt-outs OR-ed, the earliest lead's value of each earliest field."""
    master = ordered[0]
    out: dict[str, Any] = {}
    for name in s.fill_empty_fields:
        if master.get(name) in (None, ""):
            found = next((r.get(name) for r in ordered[1:] if r.get(name) not in (None, "")), None)
            if found is not None:
                out[name] = found
    for name in s.or_fields:
        if not master.flag(name) and any(r.flag(name) for r in ordered[1:]):
            out[name] = True
    by_age = sorted(ordered, key=lambda r: (str(r.get(schema.CREATED_DATE) or "9999"), r.id))
    for name in s.earliest_fields:
        value = next((r.get(name) for r in by_age if r.get(name) not in (None, "")), None)
        if value is not None and value != master.get(name):
            out[name] = value
    return out


def _account_link(
    emit: Emit, lead: Record, found: Sequence[AccountMatch], s: LeadDedupeSettings
) -> tuple[Action | None, str]:
    if not found:
        return None, "no account matches"
    if len(found) > 1 and found[0].tier != "fuzzy":
        ids = ", ".join(m.account_id for m in found)
        return None, f"ambiguous: {len(found)} accounts match by {found[0].tier} ({ids})"
    best = found[0]
    if len(found) > 1 and found[1].score == best.score:
        ids = ", ".join(m.account_id for m in found if m.score == best.score)
        return None, f"ambiguous: accounts {ids} score {best.score:.0f}"
    values = {
        s.matched_account_field: best.account_id,
        s.match_tier_field: best.tier,
        s.match_evidence_field: best.evidence[:255],
    }
    note = f"account {best.account_id} by {best.tier} ({best.evidence}, score {best.score:.0f})"
    others = found[1:]
    if others:
        note += "; other candidates: " + ", ".join(
            f"{m.account_id} ({m.score:.0f})" for m in others
        )
    digest = change_digest(emit.changes(values))
    update = emit.update("account", values, reason=note, step_key=f"account-{digest}")
    return update, note


def _contact_task(
    emit: Emit,
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: LeadDedupeSettings,
    org: OrgMapping,
    contact_id: str,
) -> Action | None:
    step_key = f"contact-{contact_id}"
    if emit.key(step_key) in worker_tasks(snapshot, lead.id, RULE_ID, org):
        return None
    contact = snapshot.get(contact_id)
    values = {
        "lead": emit.target.name or lead.id,
        "contact": (contact.text(org.name_field(CONTACT)) if contact else None) or contact_id,
        "email": lead.text(s.email_field),
        "account": (contact.text("Account.Name") if contact else None) or "no account",
    }
    where = f"rules.{RULE_ID}"
    return emit.task(
        "contact",
        subject=render(s.contact_subject, values, f"{where}.contact_subject", lead.id),
        description=render(s.contact_description, values, f"{where}.contact_description", lead.id),
        reason=f"the lead's email is contact {contact_id}'s",
        due=at.date,
        step_key=step_key,
    )


RULE: Rule[LeadDedupeSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 lead duplicate check: merge, contact and account matches",
    settings_model=LeadDedupeSettings,
    step_ids=STEPS,
    batches=batches,
    decide_batch=decide_batch,
)
