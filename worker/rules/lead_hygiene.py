"""SOP 004 lead hygiene: clean contact data, normalise titles, list missing fields, flag
generic email domains.

Implements ``004_decc60c4b5a2963f.txt``, Lead Management SOP step 2 "Lead Enrichment"
(required fields validation, data hygiene, "IF email domain != generic ... ELSE Flag for
manual research") and the Data Management SOP's "Data Entry Standards" (phone as
``+1XXXXXXXXXX``, email, company, standardised title), on the leads of ``lead_scope``
(converted leads are left alone):

- ``clean``: one update per lead with only the fields whose value changes: phones in E.164
  (the extension to its own field), country and state as ISO 3166 codes, the email's domain
  lower-cased, the standard title, level and function from the mapping's table (``Title``
  itself is never rewritten), the company's match key (``Company`` is left alone), the
  missing required fields, the generic-domain flag, and every problem found (an invalid
  phone, an unknown or ambiguous country, a malformed email) in the issues field; a value
  that cannot be read is flagged, never overwritten.
- ``incomplete``: one Task per owner per business day listing that owner's incomplete leads
  (on the first of them by Id), not one per field or lead.
- ``research``: a lead whose email is at a generic (free-mail) domain gets one research Task
  for the mapped user, or for a member of the mapped queue (Tasks cannot be owned by a
  queue), chosen by the lead's Id so any host and a lost database choose the same one.

Each update's key carries a digest of its values, so a value cleaned once is never sent
again and a value edited later is cleaned afresh; a second run over clean leads plans
nothing.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.contact_data import (
    company_key,
    fold,
    is_placeholder,
    looks_like_domain,
    read_email,
    read_phone,
    read_place,
    under_domain,
)
from worker.rules.kit import Emit, change_digest, in_scope, render, worker_tasks

RULE_ID = "lead_hygiene"
STEPS = ("clean", "incomplete", "research")
GROUP_PREFIX = "00G"  # a queue


class TitleRule(StrictModel):
    """A row of the job-title table: a regular expression searched in ``Title`` (case
    ignored) and what a match stands for."""

    pattern: str
    title: str
    level: str
    function: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


_LeadField = Annotated[str, FieldOf(schema.LEAD)]
_Written = Annotated[str, FieldOf(schema.LEAD, write=True)]


class LeadHygieneSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {schema.LEAD: (schema.IS_CONVERTED, schema.OWNER_ID)}

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1,
        description="Lead field (dotted paths allowed) -> allowed values, ANDed: the SOP 004 "
        "leads, e.g. RecordType.DeveloperName = Sales.",
    )
    # -- phones ------------------------------------------------------------------------------
    phone_field: _Written = "Phone"
    phone_extension_field: _Written = Field(description="Where Phone's extension goes.")
    other_phone_fields: Annotated[tuple[str, ...], FieldOf(schema.LEAD, write=True)] = Field(
        default=(),
        description="Phones without an extension field: an extension is flagged, the "
        "number left as it is.",
    )
    # -- country and state -------------------------------------------------------------------
    country_field: _Written = "Country"
    state_field: _Written = "State"
    country_code_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        default="",
        description="CountryCode where the org has state and country picklists; empty: "
        "the code goes to country_field.",
    )
    state_code_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        default="", description="StateCode likewise; empty: the code goes to state_field."
    )
    default_country: str = Field(
        default="", description="Alpha-2 country a state without a country is read in."
    )
    country_aliases: dict[str, str] = Field(
        default_factory=dict, description="Name as written (case and accents ignored) -> alpha-2."
    )
    # -- email ------------------------------------------------------------------------------
    email_field: _Written = "Email"
    generic_domains: tuple[str, ...] = Field(min_length=1)
    generic_flag_field: _Written
    research_assignee: str = Field(description="User (005...) or queue (00G...) Id.")
    research_subject: Annotated[str, Placeholders(frozenset({"lead", "domain"}))]
    research_description: Annotated[str, Placeholders(frozenset({"lead", "domain", "email"}))]
    # -- titles, companies -------------------------------------------------------------------
    title_field: _LeadField = "Title"
    standard_title_field: _Written
    job_level_field: _Written
    job_function_field: _Written
    titles: tuple[TitleRule, ...] = ()
    company_field: _LeadField = "Company"
    company_key_field: _Written
    legal_suffixes: tuple[str, ...] = ()
    # -- required fields ---------------------------------------------------------------------
    required_fields: Annotated[tuple[str, ...], FieldOf(schema.LEAD)] = Field(min_length=1)
    placeholders: tuple[str, ...] = ()
    missing_field: _Written = Field(description="Text field listing the missing required fields.")
    incomplete_subject: Annotated[str, Placeholders(frozenset({"count", "date"}))]
    incomplete_description: Annotated[str, Placeholders(frozenset({"count", "date", "leads"}))]
    # -- issues ------------------------------------------------------------------------------
    issues_field: _Written = Field(description="Long text field listing what could not be cleaned.")
    issues_max_chars: int = Field(default=4000, ge=80, le=131072)

    @field_validator("country_aliases")
    @classmethod
    def _aliases_folded(cls, value: dict[str, str]) -> dict[str, str]:
        return {fold(k): v.upper() for k, v in value.items()}

    @field_validator("research_assignee")
    @classmethod
    def _user_or_queue(cls, value: str) -> str:
        if not value.startswith((schema.USER_ID_PREFIX, GROUP_PREFIX)):
            raise ValueError("a User Id (005...) or a queue Id (00G...)")
        return value

    def needs(self) -> dict[str, set[str]]:
        out = super().needs()
        if self.research_assignee.startswith(GROUP_PREFIX):  # the queue's members
            out.setdefault(schema.GROUP_MEMBER, set()).update({"GroupId", "UserOrGroupId"})
            out.setdefault(schema.USER, set()).add("IsActive")
        return out


def candidates(
    snapshot: Snapshot, settings: LeadHygieneSettings, org: OrgMapping
) -> Iterable[Record]:
    return snapshot.where(schema.LEAD, settings.lead_scope)


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: LeadHygieneSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, record)

    def verdict(v: Verdict, why: str, actions: tuple[Action, ...] = ()) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=emit.target, verdict=v, why=why, actions=actions)

    if record.flag(schema.IS_CONVERTED):
        return verdict(Verdict.EXCLUDED, "excluded because the lead is converted")
    values, email_domain = clean_values(record, s, org)
    changes = emit.changes(values)
    actions: list[Action] = []
    update = emit.update(
        "clean",
        values,
        reason=f"SOP 004 data standards: {', '.join(c.field for c in changes)}",
        step_key=f"clean-{change_digest(changes)}",
    )
    if update:
        actions.append(update)
    research = _research(emit, record, snapshot, at, s, org, email_domain)
    if research:
        actions.append(research)
    digest = _incomplete_digest(emit, record, snapshot, at, s, org)
    if digest:
        actions.append(digest)
    if not actions:
        missing = values.get(s.missing_field)
        state = f"incomplete ({missing})" if missing else "complete"
        return verdict(Verdict.DONE, f"clean: nothing to change; required fields {state}")
    why = "; ".join(
        part
        for part in (
            update.reason if update else "",
            "generic email domain: research Task" if research else "",
            "incomplete leads of the owner listed in today's Task" if digest else "",
        )
        if part
    )
    return verdict(Verdict.ACT, why, tuple(actions))


def clean_values(
    record: Record, s: LeadHygieneSettings, org: OrgMapping
) -> tuple[dict[str, Any], str | None]:
    """Every field the rule owns with the value it should hold, and the email's ASCII
    domain (None when unreadable)."""
    values: dict[str, Any] = {}
    issues: list[str] = []

    country_raw = record.text(s.country_field)
    place = read_place(
        country_raw, record.text(s.state_field), s.country_aliases, s.default_country or None
    )
    if place.problem:
        issues.append(f"{s.country_field}/{s.state_field}: {place.problem}")
    if place.country:
        values[s.country_code_field or s.country_field] = place.country
    if place.state:
        values[s.state_code_field or s.state_field] = place.state

    region = place.country or org.org.phone_region
    phones = {s.phone_field: s.phone_extension_field, **dict.fromkeys(s.other_phone_fields, "")}
    for name, ext_field in phones.items():
        raw = record.text(name)
        if not raw:
            continue
        phone = read_phone(raw, region)
        if phone.problem:
            issues.append(f"{name}: {raw!r} is {phone.problem}")
        elif phone.extension and not ext_field:
            issues.append(f"{name}: {raw!r} has an extension and no field to keep it apart")
        else:
            values[name] = phone.e164
            if ext_field and phone.extension:
                values[ext_field] = phone.extension
    email_domain: str | None = None
    raw_email = record.text(s.email_field)
    if raw_email:
        email = read_email(raw_email)
        if email.problem:
            issues.append(f"{s.email_field}: {raw_email!r}: {email.problem}")
        else:
            values[s.email_field] = email.cleaned
            email_domain = email.ascii_domain
    generic = under_domain(email_domain, s.generic_domains) if email_domain else None
    values[s.generic_flag_field] = generic is not None

    missing = missing_fields(record, s)
    title = record.text(s.title_field)
    match = _title(title, s.titles) if title else None
    values[s.standard_title_field] = match.title if match else None
    values[s.job_level_field] = match.level if match else None
    values[s.job_function_field] = match.function if match else None
    if title and not match and s.title_field not in missing:
        issues.append(f"{s.title_field}: no standard title matches {title!r}")

    company = record.text(s.company_field)
    key = None
    if company and s.company_field not in missing:
        key = company_key(company, s.legal_suffixes)
        if looks_like_domain(company):
            issues.append(f"{s.company_field}: {company!r} is a web domain, not a company name")
    values[s.company_key_field] = key
    values[s.missing_field] = ", ".join(missing) or None
    values[s.issues_field] = _cut("\n".join(issues), s.issues_max_chars) or None
    return values, email_domain


def _title(title: str, table: Iterable[TitleRule]) -> TitleRule | None:
    return next((row for row in table if re.search(row.pattern, title, re.IGNORECASE)), None)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _research(
    emit: Emit,
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: LeadHygieneSettings,
    org: OrgMapping,
    domain: str | None,
) -> Action | None:
    if not domain or under_domain(domain, s.generic_domains) is None:
        return None
    if emit.key("research") in worker_tasks(snapshot, record.id, RULE_ID, org):
        return None
    owner = research_owner(record, snapshot, s)
    if owner is None:
        return None
    values = {
        "lead": emit.target.name or record.id,
        "domain": domain,
        "email": record.text(s.email_field),
    }
    where = f"rules.{RULE_ID}"
    return emit.task(
        "research",
        subject=render(s.research_subject, values, f"{where}.research_subject", record.id),
        description=render(
            s.research_description, values, f"{where}.research_description", record.id
        ),
        reason=f"email at the generic domain {domain}: flagged for manual research",
        due=at.date,
        owner_id=owner,
    )


def research_owner(record: Record, snapshot: Snapshot, s: LeadHygieneSettings) -> str | None:
    """The mapped user, or an active user member of the mapped queue picked by the lead's
    Id (stable on any host); None for a queue without active user members."""
    if s.research_assignee.startswith(schema.USER_ID_PREFIX):
        return s.research_assignee
    members = sorted(
        str(m.text("UserOrGroupId"))
        for m in snapshot.children(schema.GROUP_MEMBER, "GroupId", s.research_assignee)
        if str(m.text("UserOrGroupId") or "").startswith(schema.USER_ID_PREFIX)
        and (user := snapshot.get(m.text("UserOrGroupId"))) is not None
        and user.flag("IsActive")
    )
    if not members:
        return None
    return members[zlib.crc32(record.id.encode()) % len(members)]


def _incomplete_digest(
    emit: Emit,
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: LeadHygieneSettings,
    org: OrgMapping,
) -> Action | None:
    """Today's Task for the owner listing their incomplete leads, made on the first of them
    (by Id) on a business day, once a day whichever lead carries it."""
    owner = record.text(schema.OWNER_ID)
    if (
        not owner
        or not owner.startswith(schema.USER_ID_PREFIX)
        or not org.calendar.is_business_day(at.date)
    ):
        return None
    leads = [
        lead
        for lead in snapshot.children(schema.LEAD, schema.OWNER_ID, owner)
        if in_scope(lead, s.lead_scope) and not lead.flag(schema.IS_CONVERTED)
    ]
    incomplete = [(lead, m) for lead in leads if (m := missing_fields(lead, s))]
    if not incomplete or incomplete[0][0].id != record.id:
        return None
    step_key = f"incomplete-{at.date.isoformat()}"
    prefix = f"{RULE_ID}:{step_key}:"
    if any(
        key.startswith(prefix)
        for lead in leads
        for key in worker_tasks(snapshot, lead.id, RULE_ID, org)
    ):
        return None
    name_field = org.name_field(schema.LEAD)
    listing = "\n".join(
        f"- {lead.text(name_field) or lead.id} ({lead.id}): {', '.join(m)}"
        for lead, m in incomplete
    )
    values = {"count": len(incomplete), "date": at.date.isoformat(), "leads": listing}
    where = f"rules.{RULE_ID}"
    return emit.task(
        "incomplete",
        subject=render(s.incomplete_subject, values, f"{where}.incomplete_subject", record.id),
        description=render(
            s.incomplete_description, values, f"{where}.incomplete_description", record.id
        ),
        reason=f"{len(incomplete)} lead(s) of this owner miss required fields",
        due=at.date,
        owner_id=owner,
        step_key=step_key,
    )


def missing_fields(record: Record, s: LeadHygieneSettings) -> list[str]:
    """The required fields that are empty or hold a placeholder (``N/A``, ``-``)."""
    return [f for f in s.required_fields if is_placeholder(record.get(f), s.placeholders)]


RULE: Rule[LeadHygieneSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 lead hygiene and required fields",
    settings_model=LeadHygieneSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
