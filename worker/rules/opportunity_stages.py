"""The sales stages of SOP 004 (Sales Process SOP, "Sales Stages & Exit Criteria"): the exit
criteria of every stage an opportunity has moved past, and the time it spends in a stage.

Stages are the mapping's ``stages``, in order, each with the picklist value that stands for
it, its maximum duration (``max_days``: the SOP's "Prospecting (0-7 days)", "Discovery (1-2
weeks)", ...) and its exit criteria as evidence checks the org can answer:

- ``field``: an opportunity field that is not blank (a checkbox counts when checked);
- ``event_types``: an Event on the opportunity whose ``event_type_field`` is one of these;
- ``contact_roles``: an OpportunityContactRole with one of these roles;
- ``approval``: an approval process instance on the opportunity in ``approved_status``.

When an opportunity stands past a stage (a later stage, or a won stage) and evidence of that
stage's exit is missing, the owner gets one Task naming what is missing; the stage is never
moved back. A skipped stage (Prospecting straight to Proposal) counts as passed: its exit
criteria are checked too.

Days in stage come from ``OpportunityHistory``: the stage was entered at the latest history
row in the current stage whose previous row was another stage, so a move backwards and
forwards again restarts the count. At ``max_days`` the owner gets a Task; ``grace_days``
later, still in the stage, one goes to the owner's manager (``User.ManagerId``). Both carry
the day the stage was entered in their key, so a new stay in the stage is a new count. With
no history row for the current stage (older than what the worker read), the days are
unknown and nothing about the duration is done: said in ``explain``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import Emit, render, worker_tasks

RULE_ID = "opportunity_stages"
STEPS = ("exit_criteria", "stage_max", "stage_escalation")
CONTACT_ROLE = schema.OPPORTUNITY_CONTACT_ROLE

_STAGE = frozenset({"name", "stage", "current", "owner"})
_Missing = Annotated[str, Placeholders(_STAGE | {"missing"})]
_Days = Annotated[str, Placeholders(_STAGE | {"days", "max_days", "entered"})]


class Evidence(StrictModel):
    """One exit criterion, as the org shows it: exactly one of the checks."""

    label: str = Field(description="The SOP's words for it ('Decision maker identified').")
    field: Annotated[str, FieldOf("sobject")] = ""
    event_types: Annotated[tuple[str, ...], ValuesOf("event_type_field")] = ()
    contact_roles: Annotated[tuple[str, ...], ValuesOf("Role", sobject=CONTACT_ROLE)] = ()
    approval: bool = False

    @model_validator(mode="after")
    def _one_check(self) -> Evidence:
        given = [bool(self.field), bool(self.event_types), bool(self.contact_roles), self.approval]
        if given.count(True) != 1:
            raise ValueError(
                f"{self.label!r}: give exactly one of field, event_types, contact_roles, approval"
            )
        return self


class Stage(StrictModel):
    label: str = Field(description="The SOP's stage ('Stage 2: Discovery').")
    value: Annotated[str, ValuesOf("stage_field")]
    max_days: int = Field(ge=0)
    exit: tuple[Evidence, ...] = ()


class OpportunityStagesSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID, schema.IS_CLOSED),
        schema.OPPORTUNITY_HISTORY: ("OpportunityId", "StageName", schema.CREATED_DATE),
        schema.USER: ("ManagerId", "IsActive"),
        schema.EVENT: (schema.WHAT_ID,),
        CONTACT_ROLE: ("OpportunityId", "Role"),
    }

    sobject: str = "Opportunity"
    opportunity_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict,
        description="Opportunity field (dotted paths allowed) -> allowed values, ANDed.",
    )
    stage_field: Annotated[str, FieldOf("sobject")] = "StageName"
    stages: tuple[Stage, ...] = Field(min_length=1)
    won_stages: Annotated[tuple[str, ...], ValuesOf("stage_field")] = Field(
        default=(), description="Closed stages past every stage (their exit criteria count)."
    )
    won_check_days: int = Field(
        default=14,
        ge=0,
        description="A won opportunity's exit criteria are checked this many days after it "
        "was won (by its stage history), not for deals won long before.",
    )
    event_type_field: Annotated[str, FieldOf(schema.EVENT)] = "Type"
    approved_status: str = "Approved"
    grace_days: int = Field(ge=0, description="Days past max_days before the manager is told.")
    missing_subject: _Missing
    missing_description: _Missing
    overdue_subject: _Days
    overdue_description: _Days
    escalation_subject: _Days
    escalation_description: _Days

    @model_validator(mode="after")
    def _stages_unique(self) -> OpportunityStagesSettings:
        values = [s.value for s in self.stages]
        if len(set(values)) != len(values):
            raise ValueError("stages: a stage value is listed twice")
        if set(values) & set(self.won_stages):
            raise ValueError("won_stages: a won stage is not one of stages")
        return self

    def needs(self) -> dict[str, set[str]]:
        out = super().needs()
        if any(e.approval for s in self.stages for e in s.exit):
            out.setdefault(schema.PROCESS_INSTANCE, set()).update(
                {schema.TARGET_OBJECT_ID, schema.STATUS}
            )
        return out


@dataclass(frozen=True)
class Stay:
    """The current stay in a stage: when it began (None: not in the history read)."""

    entered: dt.datetime | None
    days: int | None


def candidates(
    snapshot: Snapshot, settings: OpportunityStagesSettings, org: OrgMapping
) -> Iterable[Record]:
    return snapshot.where(settings.sobject, settings.opportunity_scope)


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: OpportunityStagesSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, record)
    stage_value = record.text(s.stage_field)
    values = [st.value for st in s.stages]
    won = stage_value in s.won_stages
    if not won and (record.flag(schema.IS_CLOSED) or stage_value not in values):
        why = f"excluded because {s.stage_field}={stage_value!r}" + (
            " is closed" if record.flag(schema.IS_CLOSED) else " is none of the SOP's stages"
        )
        return Evaluation(RULE_ID, emit.target, Verdict.EXCLUDED, why)
    index = len(s.stages) if won else values.index(str(stage_value))
    if won:
        stay = current_stay(record, snapshot, s, at, org)
        if stay.days is None or stay.days > s.won_check_days:
            why = (
                f"excluded because {s.stage_field}={stage_value!r}: won more than "
                f"{s.won_check_days} days ago (or before the history read)"
            )
            return Evaluation(RULE_ID, emit.target, Verdict.EXCLUDED, why)
    done = worker_tasks(snapshot, record.id, RULE_ID, org)
    owner = record.text(schema.OWNER_ID)
    base: dict[str, object] = {
        "name": emit.target.name or record.id,
        "current": stage_value,
        "owner": owner,
    }
    actions: list[Action] = []
    lines: list[str] = []
    for stage in s.stages[:index]:
        found = [(e, evidence(record, snapshot, s, e)) for e in stage.exit]
        missing = [e.label for e, seen in found if seen is None]
        lines.append(
            f"{stage.label}: "
            + ("; ".join(f"{e.label} {seen or 'missing'}" for e, seen in found) or "no checks")
        )
        key = emit.key(f"missing-{_slug(stage.value)}")
        if missing and key not in done:
            values_ = {**base, "stage": stage.label, "missing": ", ".join(missing)}
            actions.append(
                emit.task(
                    "exit_criteria",
                    subject=render(s.missing_subject, values_, f"rules.{RULE_ID}.missing_subject"),
                    description=render(
                        s.missing_description, values_, f"rules.{RULE_ID}.missing_description"
                    ),
                    reason=f"moved past {stage.label} without: {', '.join(missing)}",
                    due=at.date,
                    step_key=f"missing-{_slug(stage.value)}",
                )
            )
    evidence_text = " | ".join(lines) or "no stage passed yet"
    if won:
        why = f"{s.stage_field}={stage_value!r} (won): exit criteria {evidence_text}"
        return _result(emit, Verdict.DONE, why, actions)
    stage = s.stages[index]
    stay = current_stay(record, snapshot, s, at, org)
    if stay.entered is None or stay.days is None:
        why = (
            f"in {stage.label}, days unknown: no OpportunityHistory row for entering "
            f"{stage_value!r} (older than the history read); exit criteria {evidence_text}"
        )
        return _result(emit, Verdict.NOT_DUE, why, actions)
    entered = stay.entered.astimezone(org.org.zone).date()
    days = stay.days
    timing = f"in {stage.label} since {entered} ({days} days, max {stage.max_days})"
    why = f"{timing}; exit criteria {evidence_text}"
    values_ = {
        **base,
        "stage": stage.label,
        "days": days,
        "max_days": stage.max_days,
        "entered": entered.isoformat(),
    }
    stamp = f"{_slug(stage.value)}-{entered.isoformat()}"
    if days >= stage.max_days and emit.key(f"overdue-{stamp}") not in done:
        actions.append(
            emit.task(
                "stage_max",
                subject=render(s.overdue_subject, values_, f"rules.{RULE_ID}.overdue_subject"),
                description=render(
                    s.overdue_description, values_, f"rules.{RULE_ID}.overdue_description"
                ),
                reason=f"{timing}: the stage's maximum is reached",
                due=at.date,
                step_key=f"overdue-{stamp}",
            )
        )
    escalate_on = entered + dt.timedelta(days=stage.max_days + s.grace_days)
    if at.date >= escalate_on and emit.key(f"escalate-{stamp}") not in done:
        manager = _manager(record, snapshot, owner)
        actions.append(
            emit.task(
                "stage_escalation",
                subject=render(
                    s.escalation_subject, values_, f"rules.{RULE_ID}.escalation_subject"
                ),
                description=render(
                    s.escalation_description, values_, f"rules.{RULE_ID}.escalation_description"
                ),
                reason=f"{timing}: {s.grace_days} days of grace past the maximum",
                due=at.date,
                owner_id=manager,
                step_key=f"escalate-{stamp}",
            )
        )
    if actions:
        return _result(emit, Verdict.ACT, why, actions)
    max_on = entered + dt.timedelta(days=stage.max_days)
    if at.date < max_on:
        return _waiting(emit, why, max_on, s.step_label("stage_max"))
    if at.date < escalate_on:
        return _waiting(emit, why, escalate_on, s.step_label("stage_escalation"))
    return _result(emit, Verdict.NOT_DUE, f"{why}; owner and manager told", actions)


def _waiting(emit: Emit, why: str, due: dt.date, step: str) -> Evaluation:
    return Evaluation(RULE_ID, emit.target, Verdict.NOT_DUE, why, next_due=due, next_step=step)


def evidence(
    record: Record, snapshot: Snapshot, s: OpportunityStagesSettings, check: Evidence
) -> str | None:
    """How the org shows ``check`` met (for explain), or None when it does not."""
    if check.field:
        value = record.get(check.field)
        if value is None or value is False or (isinstance(value, str) and not value.strip()):
            return None
        return f"({check.field} set)"
    if check.event_types:
        for event in snapshot.children(schema.EVENT, schema.WHAT_ID, record.id):
            if event.text(s.event_type_field) in check.event_types:
                return f"(Event {event.text(schema.SUBJECT) or event.id!r})"
        return None
    if check.contact_roles:
        for role in snapshot.children(CONTACT_ROLE, "OpportunityId", record.id):
            if role.text("Role") in check.contact_roles:
                return f"(contact role {role.text('Role')})"
        return None
    for instance in snapshot.children(schema.PROCESS_INSTANCE, schema.TARGET_OBJECT_ID, record.id):
        if instance.text(schema.STATUS) == s.approved_status:
            return f"(approval {instance.id} {s.approved_status})"
    return None


def current_stay(
    record: Record, snapshot: Snapshot, s: OpportunityStagesSettings, at: AsOf, org: OrgMapping
) -> Stay:
    """When the opportunity entered its current stage, and the days since."""
    entered = stage_entered(record, snapshot, s.stage_field)
    if entered is None:
        return Stay(None, None)
    return Stay(entered, (at.date - entered.astimezone(org.org.zone).date()).days)


def stage_entered(record: Record, snapshot: Snapshot, stage_field: str) -> dt.datetime | None:
    """When the opportunity entered its current stage by ``OpportunityHistory``: the latest
    history row in that stage whose previous row was another stage (a move back and forth
    again starts anew); None when the history read ends in another stage or holds none."""
    stage = record.text(stage_field)
    rows = sorted(
        snapshot.children(schema.OPPORTUNITY_HISTORY, "OpportunityId", record.id),
        key=lambda r: (r.datetime(schema.CREATED_DATE) or _NEVER, r.id),
    )
    entered: dt.datetime | None = None
    previous: str | None = None
    for row in rows:
        name = row.text("StageName")
        if name == stage and previous != stage:
            entered = row.datetime(schema.CREATED_DATE)
        previous = name
    return entered if previous == stage else None


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _manager(record: Record, snapshot: Snapshot, owner: str | None) -> str:
    user = snapshot.get(owner)
    manager = user.text("ManagerId") if user is not None else None
    if manager is None:
        raise RecordError(
            record.id, schema.OWNER_ID, f"owner {owner} has no manager (User.ManagerId)"
        )
    return manager


def _result(emit: Emit, verdict: Verdict, why: str, actions: list[Action]) -> Evaluation:
    return Evaluation(
        RULE_ID,
        emit.target,
        Verdict.ACT if actions else verdict,
        why,
        actions=tuple(actions),
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


RULE: Rule[OpportunityStagesSettings] = Rule(
    id=RULE_ID,
    title="Sales stages: exit criteria and days in stage",
    settings_model=OpportunityStagesSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
