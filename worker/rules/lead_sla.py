"""SOP 004 response-time SLAs: a business-hours clock from routing to the first touch, one
escalation to the owner's manager on a breach and, by band, a reassignment to the pool's
next eligible member.

Implements the Sales Process's "Response Time SLAs" (Hot 5 minutes, Warm 1 hour, Qualified
24 hours, Cold 48 hours), the routing logic's "SLA = Contact within ..." and the Lead
Management metrics' "Lead Response Time <1 hour - Manager escalation" of the SOP named by
``sop_file`` in ``[rules.lead_sla]`` (``004_decc60c4b5a2963f.txt``):

- the clock: from the routing stamp ``lead_routing`` wrote (its ``routed_at_field``), the
  band's ``response_minutes`` (``lead_routing``'s table, by the band stamped in its
  ``band_field``) of business time (``org.calendar``): a Hot lead routed Friday 16:58 with
  09:00-17:00 hours is due Monday 09:03.
- the first qualifying touch stops it: a completed call or email Task (``touch_types`` of
  ``touch_type_field``) by the lead's owner at or after routing (anyone's but the worker's
  when a queue owns the lead), or the lead's status off ``open_statuses``.
- a breach: one high-priority Task to the owner's manager (``User.ManagerId``; an inactive
  manager passes it up the chain; a chain that loops or ends, or a queue, goes to
  ``fallback_manager``), keyed on the routing day, so reruns find it in the org and never
  escalate twice.
- ``first_response_field``: the first timed touch's instant, written once.
- ``reassign`` bands: the lead also goes to the next eligible member of the pool it was
  routed from (``lead_routing``'s rotation and eligibility: :func:`pool_state`,
  :func:`deal`), with a new routing stamp (a new clock) and a Task for the new owner.
- ``person_owned_only`` bands (Early, Cold) have a clock only when a person owns the lead:
  a lead in the nurture queue has none. A lead owned by an inactive user has none either:
  ``lead_routing`` routes it again, and the clock starts from that stamp.

State comes from the org alone (the stamps on the lead, the escalation Task's key), never
from the worker's database.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field, PrivateAttr, field_validator

from worker import schema
from worker.actions import Action, UpdateRecord
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.keys import task_key
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot, format_sf_datetime
from worker.rules.base import AsOf, Batch, Evaluation, Rule, Verdict
from worker.rules.kit import Emit, is_completed, render, worker_tasks
from worker.rules.lead_routing import (
    Directory,
    LeadRoutingSettings,
    PoolState,
    deal,
    pool_state,
    user_id,
)
from worker.rules.lead_scoring import open_in_scope

RULE_ID = "lead_sla"
STEPS = ("escalate", "reassign", "first_response")
_Text = Annotated[
    str,
    Placeholders(
        frozenset(
            {"lead", "company", "owner", "manager", "band", "routed", "due", "late", "reassigned"}
        )
    ),
]


class LeadSlaSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {
        schema.LEAD: (schema.OWNER_ID, schema.IS_CONVERTED),
        schema.USER: ("Name", "IsActive", "ManagerId"),
        schema.TASK: (schema.OWNER_ID, schema.COMPLETED_DATE),
    }
    updates: ClassVar[Mapping[str, tuple[str, ...]]] = {schema.LEAD: (schema.OWNER_ID,)}

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1
    )
    routing_rule: str = Field(
        default="lead_routing",
        description="The section whose stamps, response times and pools apply.",
    )
    status_field: Annotated[str, FieldOf(schema.LEAD)] = "Status"
    open_statuses: Annotated[tuple[str, ...], ValuesOf("status_field")] = Field(
        min_length=1, description="A status off these is a touch."
    )
    touch_type_field: Annotated[str, FieldOf(schema.TASK)] = "Type"
    touch_types: Annotated[tuple[str, ...], ValuesOf("touch_type_field")] = Field(
        min_length=1, description="Task types of a call or an email: a touch once completed."
    )
    person_owned_only: tuple[str, ...] = Field(
        default=(), description="Bands whose clock runs only when a person owns the lead."
    )
    reassign: tuple[str, ...] = Field(
        default=(),
        description="Bands whose breach also reassigns the lead to its pool's next member.",
    )
    fallback_manager: str = Field(description="User Id escalated to without an active manager.")
    first_response_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        default="",
        description="Lead datetime field given the first timed touch's instant, once (the "
        "report's response-time figures read it); empty: none.",
    )
    breach_subject: _Text
    breach_body: _Text
    reassign_subject: _Text
    reassign_body: _Text

    _routing: LeadRoutingSettings | None = PrivateAttr(default=None)

    @field_validator("fallback_manager")
    @classmethod
    def _user(cls, value: str) -> str:
        return user_id(value)

    def link(self, rules: Mapping[str, RuleSettings]) -> list[tuple[str, str]]:
        routing = rules.get(self.routing_rule)
        if not isinstance(routing, LeadRoutingSettings):
            return [("routing_rule", f"no lead routing section [rules.{self.routing_rule}]")]
        self._routing = routing
        problems = []
        for name in ("person_owned_only", "reassign"):
            unknown = sorted(set(getattr(self, name)) - set(routing.response_minutes))
            if unknown:
                problems.append((name, f"no response time for {', '.join(unknown)}"))
        return problems

    @property
    def routing(self) -> LeadRoutingSettings:
        if self._routing is None:
            raise RuntimeError("lead_sla is used before its mapping was linked")
        return self._routing

    def needs(self) -> dict[str, set[str]]:
        """The annotated fields, and lead_routing's stamps and its people (its pools,
        out-of-office rows and member hours decide a reassignment)."""
        out = super().needs()
        r = self.routing
        out[schema.LEAD].update(
            {r.routed_at_field, r.band_field, r.pool_field, r.slot_field, r.account_match_field}
        )
        people = (
            schema.USER,
            schema.GROUP,
            schema.GROUP_MEMBER,
            schema.OUT_OF_OFFICE,
            schema.EVENT,
        )
        for sobject, names in r.needs().items():
            if sobject in people:
                out.setdefault(sobject, set()).update(names)
        return out

    def writes(self) -> dict[str, set[str]]:
        """The owner, and the stamps a reassignment moves (routed at, slot)."""
        out = super().writes()
        out[schema.LEAD].update({self.routing.routed_at_field, self.routing.slot_field})
        return out


@dataclass(frozen=True)
class Clock:
    """One lead's SLA window: routed at, the band's budget, due at (business time)."""

    routed: dt.datetime
    band: str
    minutes: int
    due: dt.datetime

    def __str__(self) -> str:
        return (
            f"routed {_when(self.routed)}, {self.band} {self.minutes} business minutes: "
            f"due {_when(self.due)}"
        )


def batches(snapshot: Snapshot, s: LeadSlaSettings, org: OrgMapping) -> Iterable[Batch]:
    stamp = s.routing.routed_at_field
    leads = tuple(
        r for r in snapshot.of(schema.LEAD) if open_in_scope(r, s.lead_scope) and r.get(stamp)
    )
    if leads:
        yield Batch("lead SLA", leads)


def decide_batch(
    batch: Batch, snapshot: Snapshot, at: AsOf, s: LeadSlaSettings, org: OrgMapping
) -> Iterator[Evaluation]:
    """Each routed lead's clock; the reassignments of one run share the pools' turns."""
    directory = Directory(snapshot, s.routing)
    pools: dict[str, PoolState] = {}
    when = org.calendar.next_open(at.instant)  # who is working when the new clock starts
    stamp = s.routing.routed_at_field
    for lead in sorted(batch.records, key=lambda r: (r.text(stamp) or "", r.id)):
        try:
            yield _decide(lead, snapshot, at, when, s, org, directory, pools)
        except RecordError as exc:
            yield Evaluation(
                RULE_ID, Emit.on(RULE_ID, s, org, lead).target, Verdict.ERROR, str(exc)
            )


def _decide(
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    when: dt.datetime,
    s: LeadSlaSettings,
    org: OrgMapping,
    directory: Directory,
    pools: dict[str, PoolState],
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, lead)
    r = s.routing

    def verdict(v: Verdict, why: str, **kw: Any) -> Evaluation:
        return Evaluation(RULE_ID, emit.target, v, why, **kw)

    routed = lead.datetime(r.routed_at_field)
    if routed is None:
        raise RecordError(lead.id, r.routed_at_field, "not a date and time")
    routed = routed.astimezone(org.org.zone)
    band = lead.text(r.band_field) or ""
    owner = lead.text(schema.OWNER_ID) or ""
    person = owner.startswith(schema.USER_ID_PREFIX)
    minutes = r.response_minutes.get(band)
    if minutes is None:
        return verdict(Verdict.EXCLUDED, f"no response time for the band {band!r}")
    if band in s.person_owned_only and not person:
        return verdict(
            Verdict.EXCLUDED,
            f"{band} in queue {directory.name(owner)}: no SLA (the {band} clock runs only "
            "for a lead a person owns)",
        )
    user = snapshot.get(owner) if person else None
    if user is not None and not user.flag("IsActive"):
        return verdict(
            Verdict.EXCLUDED,
            f"owner {directory.name(owner)} is inactive: {s.routing_rule} routes the lead "
            "again, and its clock starts then",
        )
    clock = Clock(routed, band, minutes, org.calendar.add(routed, dt.timedelta(minutes=minutes)))
    touch = _first_touch(lead, snapshot, routed, owner if person else None, s, org)
    if touch is not None:
        why = f"{clock}; {_touched(touch, clock, org)}"
        stamp = _first_response(emit, lead, touch[0], why, s)
        if stamp is None:
            return verdict(Verdict.DONE, why)
        return verdict(Verdict.ACT, why, actions=(stamp,))
    spent = org.calendar.elapsed(routed, at.instant)
    if at.instant <= clock.due:
        return verdict(
            Verdict.NOT_DUE,
            f"{clock}; no touch yet, {_whole(spent)} of {minutes} business minutes used",
            next_due=clock.due.date(),
            next_due_at=clock.due,
            next_step=s.step_label("escalate"),
        )
    late = max(1, math.ceil((spent - dt.timedelta(minutes=minutes)).total_seconds() / 60))
    breach = f"{clock}; no touch, {_whole(spent)} business minutes: breached by {late}"
    texts: dict[str, Any] = {
        "lead": emit.target.name or lead.id,
        "company": lead.text(r.account_match_field) or emit.target.name or lead.id,
        "owner": directory.name(owner),
        "band": band,
        "routed": _when(routed),
        "due": _when(clock.due),
        "late": late,
    }
    notes: list[str] = []
    moved: list[Action] = []
    texts["reassigned"] = "not reassigned"
    if band in s.reassign:
        moved, note, to = _reassign(emit, lead, snapshot, at, when, clock, s, org, directory, pools)
        notes.append(note)
        if to:
            texts["reassigned"] = f"reassigned to {directory.name(to)}"
    actions: list[Action] = []
    # One escalation per routing day: reruns, and a simulation of the same days, share it.
    step_key = f"escalate-{routed.date().isoformat()}"
    if emit.key(step_key) in worker_tasks(snapshot, lead.id, RULE_ID, org):
        notes.insert(0, "escalated once already")
    else:
        manager, how = _manager(owner if person else "", snapshot, s)
        texts["manager"] = directory.name(manager)
        notes.insert(0, f"escalated to {directory.name(manager)} ({how})")
        actions.append(
            emit.task(
                "escalate",
                subject=_render(s, "breach_subject", texts, lead),
                description=_render(s, "breach_body", texts, lead),
                reason=f"SLA breached by {late} business minutes",
                due=at.date,
                owner_id=manager,
                high_priority=True,
                step_key=step_key,
            )
        )
    actions += moved  # the manager's Task first: a stopped run leaves the breach visible
    why = "; ".join([breach, *notes])
    if not actions:
        return verdict(Verdict.DONE, why)
    return verdict(Verdict.ACT, why, actions=tuple(actions))


def _reassign(
    emit: Emit,
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    when: dt.datetime,
    clock: Clock,
    s: LeadSlaSettings,
    org: OrgMapping,
    directory: Directory,
    pools: dict[str, PoolState],
) -> tuple[list[Action], str, str | None]:
    """The lead to the next eligible member of the pool it was routed from (not its owner):
    the new owner's Task, then the update moving owner, routing stamp and slot."""
    r = s.routing
    pool = lead.text(r.pool_field)
    owner = lead.text(schema.OWNER_ID) or ""
    if not pool:
        return [], "not reassigned: routed to no pool (a named account or a queue)", None
    state = pool_state(pool, snapshot, at, r, directory, pools)
    missed = {owner: "missed the SLA"}
    member, slot, skipped = deal(state, snapshot, when, r, directory, exclude=missed)
    passed = "; ".join(skipped)
    if member is None or slot is None:
        return [], f"not reassigned: pool {pool} has no other eligible member ({passed})", None
    position = state.take(member, slot)
    due = org.calendar.add(at.instant, dt.timedelta(minutes=clock.minutes))
    texts = {
        "lead": emit.target.name or lead.id,
        "company": lead.text(r.account_match_field) or emit.target.name or lead.id,
        "owner": directory.name(owner),
        "manager": "",
        "band": clock.band,
        "routed": _when(at.instant),
        "due": _when(due),
        "late": 0,
        "reassigned": f"reassigned to {directory.name(member)}",
    }
    day = clock.routed.date().isoformat()
    why = f"reassigned to {directory.name(member)} ({passed + '; ' if passed else ''}{position})"
    task = emit.task(
        "reassign",
        subject=_render(s, "reassign_subject", texts, lead),
        description=_render(s, "reassign_body", texts, lead),
        reason=f"{directory.name(owner)} missed the SLA: the lead is reassigned to you",
        due_at=due,
        owner_id=member,
        channel="call",
        high_priority=True,
        step_key=f"reassign-alert-{day}",
    )
    values = {
        schema.OWNER_ID: member,
        r.routed_at_field: format_sf_datetime(at.instant),
        r.slot_field: slot % len(state.slots),
    }
    update = emit.update("reassign", values, reason=why, step_key=f"reassign-{day}")
    moved: list[Action] = [a for a in (task, update) if a is not None]
    return moved, f"{why}, new clock due {_when(due)}", member


def _first_touch(
    lead: Record,
    snapshot: Snapshot,
    routed: dt.datetime,
    owner: str | None,
    s: LeadSlaSettings,
    org: OrgMapping,
) -> tuple[dt.datetime | None, str] | None:
    """When and how the lead was first touched after routing: a completed call or email
    Task by the owner (by anyone but the worker when a queue owns it), or, untimed, the
    status off the open values."""
    found: list[tuple[dt.datetime, str]] = []
    for task in snapshot.tasks_for(lead.id):
        kind = task.text(s.touch_type_field)
        if kind not in s.touch_types or not is_completed(task, org):
            continue
        key = task_key(task, org)
        if key and (owner is None or key.startswith(f"{RULE_ID}:")):
            continue  # the worker's own: a Task it sent or escalated, not a person's touch
        if owner is not None and task.text(schema.OWNER_ID) != owner:
            continue
        done = task.datetime(schema.COMPLETED_DATE) or task.datetime(schema.CREATED_DATE)
        if done is not None and done >= routed:
            found.append((done.astimezone(routed.tzinfo), f"{kind} Task"))
    if found:
        first = min(found)
        return first[0], first[1]
    status = lead.text(s.status_field)
    if status not in s.open_statuses:
        return None, f"status {status!r}"
    return None


def _first_response(
    emit: Emit, lead: Record, touched: dt.datetime | None, why: str, s: LeadSlaSettings
) -> UpdateRecord | None:
    """The first touch's instant on the lead, when the mapping names a field for it and the
    field is empty (written once: a later touch, or one after a reassignment, keeps it)."""
    field = s.first_response_field
    if not field or touched is None or lead.get(field):
        return None
    return emit.update(
        "first_response",
        {field: format_sf_datetime(touched)},
        reason=why,
        step_key=f"first-response-{_stamp(touched)}",
    )


def _touched(touch: tuple[dt.datetime | None, str], clock: Clock, org: OrgMapping) -> str:
    when, what = touch
    if when is None:
        return f"touched: {what}, off the open statuses"
    spent = org.calendar.elapsed(clock.routed, when)
    inside = "within" if when <= clock.due else "after"
    return (
        f"first touch {what} at {_when(when)}, {_whole(spent)} business minutes: {inside} the SLA"
    )


def _manager(owner: str, snapshot: Snapshot, s: LeadSlaSettings) -> tuple[str, str]:
    """The first active manager up the owner's chain, and how it was found."""
    seen = {owner}
    current = snapshot.get(owner) if owner else None
    while current is not None:
        manager_id = current.text("ManagerId")
        if not manager_id:
            break
        if manager_id in seen:
            return s.fallback_manager, "the manager chain loops: the fallback manager"
        seen.add(manager_id)
        manager = snapshot.get(manager_id)
        if manager is not None and manager.flag("IsActive"):
            return manager_id, "the owner's manager" if len(seen) == 2 else "up the chain"
        current = manager
    why = "a queue owns the lead" if not owner else "no active manager"
    return s.fallback_manager, f"{why}: the fallback manager"


def _render(s: LeadSlaSettings, name: str, texts: Mapping[str, object], lead: Record) -> str:
    return render(getattr(s, name), texts, f"rules.{RULE_ID}.{name}", lead.id)


def _stamp(instant: dt.datetime) -> str:
    """An instant in a step key."""
    return instant.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _when(instant: dt.datetime) -> str:
    return instant.strftime("%a %Y-%m-%d %H:%M %Z")


def _whole(span: dt.timedelta) -> int:
    return int(span.total_seconds() // 60)


RULE: Rule[LeadSlaSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 response-time SLAs",
    settings_model=LeadSlaSettings,
    step_ids=STEPS,
    batches=batches,
    decide_batch=decide_batch,
)
