"""SOP 004 lead routing: named accounts, territories, weighted round robin, queues, alerts.

Implements Lead Management step 4 of the SOP named by ``sop_file`` in ``[rules.lead_routing]``
(``004_decc60c4b5a2963f.txt``, "4. Lead Routing (0-60 minutes)" and its "Territory
Assignment"; the alerts and response times of the Sales Process's "Response Time SLAs"):

- which leads: those in scope owned by an intake queue (``intake_queues``) or by an inactive
  user, and those in the nurture queue whose score has risen to a band routed to sales. A
  lead a person owns is never re-routed.
- "Check named account list": a lead whose company is a named account
  (``named_account_field`` on Account, matched on ``account_match_field``) goes to the
  account's owner when the owner is active and in the office.
- by the band of its score (computed with ``lead_scoring``'s tables, :func:`score_lead`),
  ``routes`` names the path: ``senior`` (the territory's senior pool), ``round_robin`` (the
  territory's pool), ``sdr`` (the SDR queue) or ``nurture`` (the nurture queue, "no sales
  assignment").
- the territory: the first row of ``territories`` whose fields match ("geographic
  territory, industry vertical, company size tier").
- "Apply round-robin within territory": weighted round robin over the pool's eligible
  members (a public group or queue, nested groups expanded): active, not out of office
  (``OutOfOffice`` rows, or Events shown as out of office, by ``out_of_office``), within
  their ``member_hours``, under the pool's ``daily_cap``. An ineligible member's turns are
  passed over, never made up later (no catch-up burst). Whose turn it is comes from the
  org: the slot stamped on the pool's latest routed lead, so a lost database never changes
  the next pick.
- "Exception Handling: Escalate to Sales Manager": no territory, or no eligible member: the
  fallback queue and a Task to the territory's manager.
- alerts: Hot, a high-priority Task for the owner due at the response time (and an email
  when the org sends emails); Warm, an email (a Task where the org does not); the SDR queue,
  a Task for ``sdr_task_owner``.

Every routed lead gets one update: owner, score, category, breakdown and the routing stamps
(when, band, territory, pool, slot) together, written with ``Sforce-Auto-Assign: FALSE``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, field_validator

from worker import schema
from worker.actions import Action
from worker.business_hours import WEEKDAYS, BusinessCalendar, Shift
from worker.declarations import FieldOf, FieldValues, Placeholders
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot, format_sf_datetime, full_record_id
from worker.rules.base import AsOf, Batch, Evaluation, Rule, RuleFigure, Verdict
from worker.rules.kit import Emit, render
from worker.rules.lead_scoring import LeadScoringSettings, Score, open_in_scope, score_lead

RULE_ID = "lead_routing"
STEPS = ("route", "alert", "exception")
QUEUE_PREFIX = "00G"  # a queue or public group: a Group Id

Route = Literal["senior", "round_robin", "sdr", "nurture"]
_VALUES = frozenset(
    {"lead", "company", "score", "category", "breakdown", "territory", "owner", "due", "why"}
)
_Text = Annotated[str, Placeholders(_VALUES)]


def user_id(value: str) -> str:
    """A User Id setting, as 18 characters (lead_sla checks its own with it)."""
    if not value.startswith(schema.USER_ID_PREFIX):
        raise ValueError(f"not a User Id: {value!r}")
    return full_record_id(value)


class PoolSettings(StrictModel):
    """A round-robin pool (a public group or queue, by DeveloperName)."""

    weights: dict[str, int] = Field(
        default_factory=dict,
        description="User Id -> weight (members not listed weigh 1; 0 takes no leads).",
    )
    daily_cap: int | None = Field(
        default=None, ge=1, description="Leads a member takes a day (org time zone), at most."
    )

    @field_validator("weights")
    @classmethod
    def _weights(cls, value: dict[str, int]) -> dict[str, int]:
        if any(w < 0 for w in value.values()):
            raise ValueError("a weight is 0 or more")
        return {user_id(k): w for k, w in value.items()}


class TerritoryRow(StrictModel):
    """One row of the territory table: the first row a lead matches is its territory."""

    name: str = Field(min_length=1)
    match: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        default_factory=dict,
        description="Lead field -> values, ANDed (State, Country, Industry); {} = every lead.",
    )
    min_employees: int | None = Field(default=None, ge=0)
    max_employees: int | None = Field(default=None, ge=0)
    senior_pool: str = Field(min_length=1, description="Group DeveloperName: Hot leads.")
    pool: str = Field(min_length=1, description="Group DeveloperName: the round robin.")
    manager: str = Field(default="", description="User Id escalated to; else exception_manager.")

    @field_validator("manager")
    @classmethod
    def _manager(cls, value: str) -> str:
        return user_id(value) if value else value


class LeadRoutingSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {
        schema.LEAD: (schema.OWNER_ID, schema.CREATED_DATE),
        schema.USER: ("Name", "IsActive", "ManagerId", "Email"),
        schema.GROUP: ("DeveloperName", "Type"),
        schema.GROUP_MEMBER: ("GroupId", "UserOrGroupId"),
    }
    updates: ClassVar[Mapping[str, tuple[str, ...]]] = {schema.LEAD: (schema.OWNER_ID,)}

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1
    )
    scoring_rule: str = Field(
        default="lead_scoring", description="The section whose tables score the lead."
    )
    routes: dict[str, Route] = Field(min_length=1, description="Score category -> path.")
    response_minutes: dict[str, int] = Field(
        default_factory=dict,
        description="Score category -> business minutes to the first touch (the SOP's "
        "Response Time SLAs); the alert Task is due then. lead_sla reads it too.",
    )
    intake_queues: tuple[str, ...] = Field(
        min_length=1, description="Queues (DeveloperName) new leads arrive in."
    )
    sdr_queue: str
    nurture_queue: str
    fallback_queue: str
    exception_manager: str = Field(description="User Id escalated to without a territory.")
    sdr_task_owner: str = Field(description="User Id given the SDR queue's Task.")
    territories: tuple[TerritoryRow, ...] = Field(min_length=1)
    size_field: Annotated[str, FieldOf(schema.LEAD)] = "NumberOfEmployees"
    named_account_field: Annotated[str, FieldOf("Account")] = Field(
        default="", description="Account checkbox marking a named account; empty: none."
    )
    account_match_field: Annotated[str, FieldOf(schema.LEAD)] = "Company"
    pools: dict[str, PoolSettings] = Field(default_factory=dict)
    member_hours: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="User Id -> shifts every open day ('09:00-13:00'); others: all open hours.",
    )
    out_of_office: Literal["OutOfOffice", "events", "none"] = "OutOfOffice"
    fairness_days: int = Field(
        default=30, ge=1, description="Days `sop-worker report` measures pool fairness over."
    )
    fairness_target: int = Field(
        default=1,
        ge=0,
        description="The largest gap, in leads, between a member's leads and their weighted "
        "share that the report counts as fair.",
    )
    routed_at_field: Annotated[str, FieldOf(schema.LEAD, write=True)]
    band_field: Annotated[str, FieldOf(schema.LEAD, write=True)]
    territory_field: Annotated[str, FieldOf(schema.LEAD, write=True)]
    pool_field: Annotated[str, FieldOf(schema.LEAD, write=True)]
    slot_field: Annotated[str, FieldOf(schema.LEAD, write=True)]
    hot_subject: _Text
    hot_body: _Text
    warm_subject: _Text
    warm_body: _Text
    sdr_subject: _Text
    sdr_body: _Text
    exception_subject: _Text
    exception_body: _Text

    _scoring: LeadScoringSettings | None = PrivateAttr(default=None)

    @field_validator("exception_manager", "sdr_task_owner")
    @classmethod
    def _users(cls, value: str) -> str:
        return user_id(value)

    @field_validator("member_hours")
    @classmethod
    def _hours(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for shifts in value.values():
            for shift in shifts:
                Shift.parse(shift)
        return {user_id(k): v for k, v in value.items()}

    def link(self, rules: Mapping[str, RuleSettings]) -> list[tuple[str, str]]:
        scoring = rules.get(self.scoring_rule)
        if not isinstance(scoring, LeadScoringSettings):
            return [("scoring_rule", f"no lead scoring section [rules.{self.scoring_rule}]")]
        missing = sorted(set(scoring.bands) - set(self.routes))
        extra = sorted(set(self.routes) - set(scoring.bands))
        problems = []
        unknown = sorted(set(self.response_minutes) - set(scoring.bands))
        if unknown:
            problems.append(
                ("response_minutes", f"not a category of the score: {', '.join(unknown)}")
            )
        if missing:
            problems.append(("routes", f"no route for the category {', '.join(missing)}"))
        if extra:
            problems.append(("routes", f"not a category of the score: {', '.join(extra)}"))
        self._scoring = scoring
        return problems

    @property
    def scoring(self) -> LeadScoringSettings:
        if self._scoring is None:
            raise RuntimeError("lead_routing is used before its mapping was linked")
        return self._scoring

    def stamps(self) -> set[str]:
        return {
            self.routed_at_field,
            self.band_field,
            self.territory_field,
            self.pool_field,
            self.slot_field,
        }

    def needs(self) -> dict[str, set[str]]:
        """The annotated fields, the score's (lead_scoring's tables), the named accounts'
        and the out-of-office source's."""
        out = super().needs()
        for sobject, names in self.scoring.needs().items():
            out.setdefault(sobject, set()).update(names)
        if self.named_account_field:
            out["Account"].update({"Name", schema.OWNER_ID})
        if self.out_of_office == "OutOfOffice":
            out[schema.OUT_OF_OFFICE] = {"UserId", "StartDate", "EndDate", "IsEnabled"}
        elif self.out_of_office == "events":
            out[schema.EVENT] = {schema.OWNER_ID, "StartDateTime", "EndDateTime", "ShowAs"}
        return out

    def object_fixes(self) -> dict[str, str]:
        if self.out_of_office != "OutOfOffice":
            return {}
        return {
            schema.OUT_OF_OFFICE: "turn on Out of Office (Setup > Chatter Settings), or set "
            '[rules.lead_routing] out_of_office = "events" (Events shown as Out of Office) '
            'or "none"'
        }

    def writes(self) -> dict[str, set[str]]:
        """The stamps and the owner, and the score's fields (written in the same update)."""
        out = super().writes()
        out[schema.LEAD].update(self.scoring.writes()[schema.LEAD])
        return out


# -- the org's people and queues ------------------------------------------------------------
@dataclass
class Directory:
    """Users, queues and groups of the snapshot, and who is routed where already."""

    snapshot: Snapshot
    s: LeadRoutingSettings
    groups: dict[str, Record] = field(init=False)

    def __post_init__(self) -> None:
        self.groups = {g.text("DeveloperName") or g.id: g for g in self.snapshot.of(schema.GROUP)}

    def group_id(self, name: str, what: str, lead: Record) -> str:
        found = self.groups.get(name)
        if found is None:
            raise RecordError(
                lead.id, f"rules.{RULE_ID}.{what}", f"no queue or group {name!r} in the org"
            )
        return found.id

    def members(self, name: str) -> list[str]:
        """The users of a group (nested groups expanded, each once), by Id."""
        start = self.groups.get(name)
        if start is None:
            return []
        users: set[str] = set()
        seen: set[str] = set()
        todo = [start.id]
        while todo:
            gid = todo.pop()
            if gid in seen:
                continue
            seen.add(gid)
            for row in self.snapshot.children(schema.GROUP_MEMBER, "GroupId", gid):
                member = row.text("UserOrGroupId") or ""
                if member.startswith(QUEUE_PREFIX):
                    todo.append(member)
                elif member.startswith(schema.USER_ID_PREFIX):
                    users.add(member)
        return sorted(users)

    def name(self, rid: str) -> str:
        found = self.snapshot.get(rid)
        label = found.text("DeveloperName") or found.text("Name") if found else None
        return label or rid


def weighted_rotation(members: Sequence[str], weights: Mapping[str, int]) -> list[str]:
    """The slots of one round of a weighted round robin, interleaved (smooth weighted round
    robin: 2:1:1 is A B C A, never A A B C), members in the order given."""
    counts = {m: weights.get(m, 1) for m in members if weights.get(m, 1) > 0}
    total = sum(counts.values())
    current = dict.fromkeys(counts, 0)
    slots = []
    for _ in range(total):
        for m in counts:
            current[m] += counts[m]
        pick = max(counts, key=lambda m: current[m])  # first of the largest
        current[pick] -= total
        slots.append(pick)
    return slots


@dataclass
class PoolState:
    """A pool's rotation this run: the slots, the next one, today's counts per member."""

    name: str
    slots: list[str]
    next_slot: int
    taken_today: dict[str, int]

    def take(self, member: str, slot: int) -> str:
        """Give ``slot`` to ``member``: the turn moves past it. The position before and
        after, for the explanation."""
        before = self.next_slot % len(self.slots)
        self.next_slot = slot + 1
        self.taken_today[member] = self.taken_today.get(member, 0) + 1
        return f"pool {self.name} position {before} -> {self.next_slot % len(self.slots)}"


@dataclass
class Routing:
    """What was decided for one lead, for its update and its explanation."""

    owner: str
    path: str
    territory: str = ""
    pool: str = ""
    slot: int | None = None
    notes: list[str] = field(default_factory=list)
    escalate_to: str | None = None


# -- the batch -------------------------------------------------------------------------------
def batches(snapshot: Snapshot, s: LeadRoutingSettings, org: OrgMapping) -> Iterable[Batch]:
    leads = tuple(r for r in snapshot.of(schema.LEAD) if open_in_scope(r, s.lead_scope))
    if leads:
        yield Batch("lead routing", leads)


def decide_batch(
    batch: Batch, snapshot: Snapshot, at: AsOf, s: LeadRoutingSettings, org: OrgMapping
) -> Iterator[Evaluation]:
    directory = Directory(snapshot, s)
    pools: dict[str, PoolState] = {}
    when = org.calendar.next_open(at.instant)  # who is working when the clock starts
    # Oldest first, so the rotation deals leads in the order they came.
    ordered = sorted(batch.records, key=lambda r: (r.text(schema.CREATED_DATE) or "", r.id))
    for lead in ordered:
        try:
            yield _decide(lead, snapshot, at, when, s, org, directory, pools)
        except RecordError as exc:
            emit = Emit.on(RULE_ID, s, org, lead)
            yield Evaluation(RULE_ID, emit.target, Verdict.ERROR, str(exc))


def _decide(
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    when: dt.datetime,
    s: LeadRoutingSettings,
    org: OrgMapping,
    directory: Directory,
    pools: dict[str, PoolState],
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, lead)
    owner_id = lead.text(schema.OWNER_ID) or ""
    waiting = _waiting(owner_id, s, directory)
    if waiting is None:
        return Evaluation(RULE_ID, emit.target, Verdict.DONE, _owned(owner_id, directory))
    score = score_lead(lead, snapshot, at.date, s.scoring, org)
    path = s.routes[score.category]
    reason = _needs_routing(waiting, path, score, s)
    if reason is None:
        return Evaluation(RULE_ID, emit.target, Verdict.DONE, _owned(owner_id, directory))
    routing = _route(lead, snapshot, score, path, when, at, s, directory, pools)
    minutes = s.response_minutes.get(score.category)
    due = org.calendar.add(at.instant, dt.timedelta(minutes=minutes)) if minutes else None
    values: dict[str, Any] = {
        **score.values(s.scoring),
        schema.OWNER_ID: routing.owner,
        s.routed_at_field: format_sf_datetime(at.instant),
        s.band_field: score.category,
        s.territory_field: routing.territory or None,
        s.pool_field: routing.pool or None,
        s.slot_field: routing.slot,
    }
    owner_name = directory.name(routing.owner)
    why = "; ".join(
        [
            f"{reason}",
            f"score {score.total} {score.category} ({score.breakdown(255)})",
            *routing.notes,
            f"owner {owner_name}",
            *(
                [f"respond by {due.isoformat(timespec='minutes')} ({minutes} business minutes)"]
                if due
                else []
            ),
        ]
    )
    step_key = f"route-{at.date.isoformat()}"
    update = emit.update("route", values, reason=why, step_key=step_key)
    texts = {
        "lead": emit.target.name or lead.id,
        "company": lead.text(s.account_match_field) or emit.target.name or lead.id,
        "score": score.total,
        "category": score.category,
        "breakdown": score.breakdown(255),
        "territory": routing.territory or "none",
        "owner": owner_name,
        "due": due.strftime("%Y-%m-%d %H:%M %Z") if due else "no deadline",
        "why": "; ".join(routing.notes) or reason,
    }
    actions: list[Action] = [a for a in (update,) if a is not None]
    actions += _alerts(emit, lead, routing, score, path, due, texts, s, org, snapshot, at)
    return Evaluation(
        RULE_ID,
        emit.target,
        Verdict.ACT,
        why,
        tuple(actions),
        next_due=due.date() if due else None,
        next_due_at=due,
        next_step=s.step_label("alert") if due else None,
    )


def _waiting(owner_id: str, s: LeadRoutingSettings, directory: Directory) -> str | None:
    """Where a lead waits for routing (an intake or the nurture queue, an inactive owner),
    or None when a person owns it or it waits in a queue it was routed to."""
    if owner_id.startswith(schema.USER_ID_PREFIX):
        user = directory.snapshot.get(owner_id)
        if user is not None and not user.flag("IsActive"):
            return f"owner {directory.name(owner_id)} is inactive"
        return None
    queue = directory.snapshot.get(owner_id)
    name = queue.text("DeveloperName") if queue else None
    if name in s.intake_queues:
        return f"new in queue {name}"
    return NURTURE if name == s.nurture_queue else None


NURTURE = "nurture"


def _needs_routing(waiting: str, path: str, score: Score, s: LeadRoutingSettings) -> str | None:
    """Why the lead is routed now: a lead in nurture only once its score reaches a band
    routed to sales."""
    if waiting != NURTURE:
        return waiting
    if path == NURTURE:
        return None
    return f"in nurture, and the score rose to {score.total} ({score.category})"


def _owned(owner_id: str, directory: Directory) -> str:
    if owner_id.startswith(schema.USER_ID_PREFIX):
        return f"owned by {directory.name(owner_id)}: a lead a person owns is not re-routed"
    return f"in queue {directory.name(owner_id)}, where it was routed"


def _route(
    lead: Record,
    snapshot: Snapshot,
    score: Score,
    path: str,
    when: dt.datetime,
    at: AsOf,
    s: LeadRoutingSettings,
    directory: Directory,
    pools: dict[str, PoolState],
) -> Routing:
    named = _named_account_owner(lead, snapshot, when, s, directory)
    if isinstance(named, Routing):
        return named
    notes = [named] if named else []
    if path == "nurture":
        queue = directory.group_id(s.nurture_queue, "nurture_queue", lead)
        return Routing(queue, "nurture", notes=[*notes, f"{score.category}: marketing nurture"])
    if path == "sdr":
        queue = directory.group_id(s.sdr_queue, "sdr_queue", lead)
        return Routing(queue, "sdr", notes=[*notes, f"{score.category}: SDR queue"])
    territory, tried = _territory(lead, s)
    notes.append("territory rows: " + ", ".join(tried))
    if territory is None:
        fallback = directory.group_id(s.fallback_queue, "fallback_queue", lead)
        notes.append("no territory matched")
        return Routing(fallback, "exception", notes=notes, escalate_to=s.exception_manager)
    pool_name = territory.senior_pool if path == "senior" else territory.pool
    state = pool_state(pool_name, snapshot, at, s, directory, pools)
    member, slot, skipped = deal(state, snapshot, when, s, directory)
    notes.extend(skipped)
    if member is None:
        fallback = directory.group_id(s.fallback_queue, "fallback_queue", lead)
        notes.append(f"pool {pool_name}: no eligible member")
        return Routing(
            fallback,
            "exception",
            territory.name,
            notes=notes,
            escalate_to=territory.manager or s.exception_manager,
        )
    assert slot is not None
    notes.append(state.take(member, slot))
    return Routing(member, path, territory.name, pool_name, slot % len(state.slots), notes)


def _named_account_owner(
    lead: Record, snapshot: Snapshot, when: dt.datetime, s: LeadRoutingSettings, d: Directory
) -> Routing | str | None:
    if not s.named_account_field:
        return None
    company = (lead.text(s.account_match_field) or "").strip().casefold()
    if not company:
        return None
    for account in snapshot.of("Account"):
        if not account.flag(s.named_account_field):
            continue
        if (account.text("Name") or "").strip().casefold() != company:
            continue
        owner = account.text(schema.OWNER_ID) or ""
        problem = _unavailable(owner, snapshot, when, s, d)
        name = account.text("Name")
        if problem:
            return f"named account {name}: owner {d.name(owner)} skipped ({problem})"
        return Routing(owner, "named account", notes=[f"named account {name}"])
    return None


def _territory(lead: Record, s: LeadRoutingSettings) -> tuple[TerritoryRow | None, list[str]]:
    tried = []
    for row in s.territories:
        miss = _territory_miss(lead, row, s)
        if miss is None:
            tried.append(f"{row.name} matched")
            return row, tried
        tried.append(f"{row.name} ({miss})")
    return None, tried


def _territory_miss(lead: Record, row: TerritoryRow, s: LeadRoutingSettings) -> str | None:
    for name, values in row.match.items():
        value = lead.text(name)
        if value not in values:
            return f"{name}={value!r}"
    if row.min_employees is not None or row.max_employees is not None:
        size = lead.number(s.size_field)
        if size is None:
            return f"no {s.size_field}"
        if row.min_employees is not None and size < row.min_employees:
            return f"{s.size_field} {size} < {row.min_employees}"
        if row.max_employees is not None and size > row.max_employees:
            return f"{s.size_field} {size} > {row.max_employees}"
    return None


def pool_state(
    name: str,
    snapshot: Snapshot,
    at: AsOf,
    s: LeadRoutingSettings,
    directory: Directory,
    pools: dict[str, PoolState],
) -> PoolState:
    """The pool's state, rebuilt from the org's leads the first time a run needs it: the
    slot after the one stamped on its latest routed lead, and today's leads per member.
    ``pools`` carries it from one lead to the next within a run (lead_sla's reassignments
    use it too)."""
    if name in pools:
        return pools[name]
    settings = s.pools.get(name, PoolSettings())
    slots = weighted_rotation(directory.members(name), settings.weights)
    latest: tuple[dt.datetime, str, int] | None = None
    taken: dict[str, int] = {}
    zone = at.instant.tzinfo
    for lead in snapshot.of(schema.LEAD):
        if lead.text(s.pool_field) != name:
            continue
        routed = lead.datetime(s.routed_at_field)
        slot = lead.number(s.slot_field)
        if routed is None or slot is None:
            continue
        if latest is None or (routed, lead.id) > latest[:2]:
            latest = (routed, lead.id, int(slot))
        if routed.astimezone(zone).date() == at.date:
            owner = lead.text(schema.OWNER_ID) or ""
            taken[owner] = taken.get(owner, 0) + 1
    pools[name] = PoolState(name, slots, latest[2] + 1 if latest else 0, taken)
    return pools[name]


def deal(
    state: PoolState,
    snapshot: Snapshot,
    when: dt.datetime,
    s: LeadRoutingSettings,
    directory: Directory,
    exclude: Mapping[str, str] | None = None,
) -> tuple[str | None, int | None, list[str]]:
    """The first eligible member from the pool's next slot, that slot, and the members
    passed over (each once, with why); ``exclude`` passes over members for the reason given
    (the owner a lead is taken from)."""
    if not state.slots:
        return None, None, [f"pool {state.name} has no members"]
    cap = s.pools.get(state.name, PoolSettings()).daily_cap
    skipped: dict[str, str] = {}
    for step in range(len(state.slots)):
        slot = state.next_slot + step
        member = state.slots[slot % len(state.slots)]
        if member in skipped:
            continue
        problem = (exclude or {}).get(member) or _unavailable(member, snapshot, when, s, directory)
        if problem is None and cap is not None and state.taken_today.get(member, 0) >= cap:
            problem = f"daily cap {cap} reached"
        if problem is None:
            return member, slot, [f"skipped {directory.name(m)} ({p})" for m, p in skipped.items()]
        skipped[member] = problem
    return None, None, [f"skipped {directory.name(m)} ({p})" for m, p in skipped.items()]


def _unavailable(
    user_id: str, snapshot: Snapshot, when: dt.datetime, s: LeadRoutingSettings, d: Directory
) -> str | None:
    """Why a user cannot take a lead at ``when``, or None."""
    user = snapshot.get(user_id)
    if user is None or user.sobject != schema.USER:
        return "not a user the worker can read"
    if not user.flag("IsActive"):
        return "inactive"
    away = _out_of_office(user_id, snapshot, when, s)
    if away:
        return away
    shifts = s.member_hours.get(user_id)
    if shifts and not _hours(shifts, when).is_open(when):
        return f"outside hours {', '.join(shifts)}"
    return None


def _hours(shifts: tuple[str, ...], when: dt.datetime) -> BusinessCalendar:
    zone = when.tzinfo
    assert zone is not None
    return BusinessCalendar.weekdays(dict.fromkeys(WEEKDAYS, shifts), str(zone))


def _out_of_office(
    user_id: str, snapshot: Snapshot, when: dt.datetime, s: LeadRoutingSettings
) -> str | None:
    if s.out_of_office == "OutOfOffice":
        for row in snapshot.children(schema.OUT_OF_OFFICE, "UserId", user_id):
            if not row.flag("IsEnabled") and row.get("IsEnabled") is not None:
                continue
            start, end = row.datetime("StartDate"), row.datetime("EndDate")
            if start is not None and when < start:
                continue
            if end is None:
                return "out of office, no end date"
            # "The date of the last day a person is out of the office": out to its end.
            last = end.astimezone(when.tzinfo).date()
            if when.date() <= last:
                return f"out of office to {last.isoformat()}"
    elif s.out_of_office == "events":
        for event in snapshot.children(schema.EVENT, schema.OWNER_ID, user_id):
            if event.text("ShowAs") != "OutOfOffice":
                continue
            start, end = event.datetime("StartDateTime"), event.datetime("EndDateTime")
            if start is not None and end is not None and start <= when < end:
                return f"out of office (event to {end.astimezone(when.tzinfo):%Y-%m-%d %H:%M})"
    return None


def _alerts(
    emit: Emit,
    lead: Record,
    routing: Routing,
    score: Score,
    path: str,
    due: dt.datetime | None,
    texts: Mapping[str, object],
    s: LeadRoutingSettings,
    org: OrgMapping,
    snapshot: Snapshot,
    at: AsOf,
) -> list[Action]:
    where = f"rules.{RULE_ID}"
    day = at.date.isoformat()
    out: list[Action] = []

    def text(name: str) -> str:
        return render(getattr(s, name), texts, f"{where}.{name}", lead.id)

    if routing.escalate_to:
        out.append(
            emit.task(
                "exception",
                subject=text("exception_subject"),
                description=text("exception_body"),
                reason="no eligible owner: escalated to the sales manager",
                due=at.date,
                owner_id=routing.escalate_to,
                high_priority=True,
                step_key=f"exception-{day}",
            )
        )
        return out
    if path == "sdr":
        out.append(
            emit.task(
                "alert",
                subject=text("sdr_subject"),
                description=text("sdr_body"),
                reason="SDR queue notification",
                due=at.date,
                due_at=due,
                owner_id=s.sdr_task_owner,
                step_key=f"alert-{day}",
            )
        )
        return out
    if path not in ("senior", "round_robin", "named account"):
        return out
    hot = path == "senior" or (path == "named account" and s.routes[score.category] == "senior")
    subject, body = ("hot_subject", "hot_body") if hot else ("warm_subject", "warm_body")
    user = snapshot.get(routing.owner)
    address = user.text("Email") if user else None
    if org.org.email_action_enabled and address:
        out.append(
            emit.email(
                "alert",
                to_address=address,
                subject=text(subject),
                body=text(body),
                reason="alert to the new owner",
                step_key=f"alert-email-{day}",
            )
        )
        if not hot:
            return out
    out.append(
        emit.task(
            "alert",
            subject=text(subject),
            description=text(body),
            reason="alert to the new owner",
            due=at.date,
            due_at=due,
            owner_id=routing.owner,
            channel="call",
            high_priority=hot,
            step_key=f"alert-{day}",
        )
    )
    return out


# -- the report's figure ----------------------------------------------------------------------
def fairness(
    snapshot: Snapshot, s: LeadRoutingSettings, org: OrgMapping, first: dt.date, last: dt.date
) -> Iterator[RuleFigure]:
    """Per pool, the largest gap in leads between what a member got and their weighted share
    over the ``fairness_days`` ending ``last`` (the report's last day).

    The pool's leads of those days are replayed in the order they were routed (their
    ``Routed_At__c``, then Id): each lead adds to every member eligible at that instant (the
    routing's own test: active, not out of office by the cached rows, within their hours,
    under the daily cap as counted so far that day) their weight's share of it, and one to
    the member who owns it. A lead whose owner is no longer in the pool (reassigned since)
    is left out of both sides."""
    directory = Directory(snapshot, s)
    zone = org.org.zone
    since = last - dt.timedelta(days=s.fairness_days - 1)
    routed: dict[str, list[tuple[dt.datetime, str, str]]] = {}
    for lead in snapshot.of(schema.LEAD):
        pool = lead.text(s.pool_field)
        when = lead.datetime(s.routed_at_field)
        if pool and when is not None and since <= when.astimezone(zone).date() <= last:
            routed.setdefault(pool, []).append((when, lead.id, lead.text(schema.OWNER_ID) or ""))
    for name in sorted(set(s.pools) | set(routed)):
        members = directory.members(name)
        weights = s.pools.get(name, PoolSettings()).weights
        cap = s.pools.get(name, PoolSettings()).daily_cap
        got: dict[str, int] = dict.fromkeys(members, 0)
        share: dict[str, float] = dict.fromkeys(members, 0.0)
        taken: dict[tuple[dt.date, str], int] = {}
        for when, _, owner in sorted(routed.get(name, [])):
            if owner not in got:
                continue
            local = when.astimezone(zone)
            eligible = [
                m
                for m in members
                if weights.get(m, 1) > 0
                and _unavailable(m, snapshot, local, s, directory) is None
                and (cap is None or taken.get((local.date(), m), 0) < cap)
            ]
            total = sum(weights.get(m, 1) for m in eligible)
            for m in eligible:
                share[m] += weights.get(m, 1) / total
            got[owner] += 1
            taken[(local.date(), owner)] = taken.get((local.date(), owner), 0) + 1
        leads = sum(got.values())
        gaps = {m: got[m] - share[m] for m in members}
        worst = max(gaps, key=lambda m: abs(gaps[m]), default=None)
        yield RuleFigure(
            id=f"{RULE_ID}.fairness.{name}",
            label=f"Round-robin fairness, pool {name}",
            sop="004 Lead Management: 4. Lead Routing (Apply round-robin within territory)",
            formula=(
                f"largest |leads a member got - their weighted share| over the pool's {leads} "
                f"lead(s) routed {since.isoformat()} to {last.isoformat()}, each lead shared by "
                "weight among the members eligible when it was routed"
                + (
                    f"; largest: {directory.name(worst)} got {got[worst]}, share {share[worst]:.1f}"
                    if worst is not None and leads
                    else ""
                )
            ),
            target=f"<={s.fairness_target}",
            value=abs(gaps[worst]) if worst is not None and leads else None,
            unit="leads",
            note="" if leads else f"no leads routed to pool {name} in those days",
        )


RULE: Rule[LeadRoutingSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 lead routing",
    settings_model=LeadRoutingSettings,
    step_ids=STEPS,
    batches=batches,
    decide_batch=decide_batch,
    figures=fairness,
)
