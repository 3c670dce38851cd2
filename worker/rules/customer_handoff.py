"""The handoff from Sales to Customer Success (SOP 004, Customer Handoff SOP): the handoff
form, the kickoff within N business days of the win, the introduction email, the week-1 and
weeks 2-4 checklists and the day-30 review, for each deal won within ``recent_days``.

- ``form``: the handoff form's fields (``form``: opportunity fields, dotted paths to the
  account's, or a contact role) checked; when some are blank, a Task for the AE (the
  owner) listing them. The completeness (filled of all) is in ``explain``'s reason.
- ``kickoff_escalation``: a kickoff is an Event on the opportunity of one of
  ``kickoff_event_types`` on a business day no later than ``kickoff_business_days``
  business days after the win. With none by then, a Task for the CSM's manager
  (``User.ManagerId`` of ``csm_field``'s user; ``fallback_manager`` when the CSM has none or
  the manager is inactive). An Event on a closed day (a holiday) does not count, and a
  deleted one has left the cache. Scheduling the kickoff is ``closed_won_lost``'s
  ``kickoff`` Task for the CSM: not repeated here.
- ``introduction``: the SOP's introduction email as a Task for the CSM holding the draft,
  its placeholders filled, once a kickoff Event is scheduled (the email names its time).
- ``week1``, ``weeks2_4``, ``review``: checklist Tasks for the CSM, made at the win and due
  ``week1_due_days``, ``weeks2_4_due_days`` and ``review_due_days`` days after it.
- ``reopened``: an opportunity no longer won has its open handoff Tasks completed, each
  with ``reopen_note`` added to its description.

Keys carry the day the deal was won (``customer_handoff:week1-2026-11-18:<id>``), so a deal
won again after a re-open gets a new handoff; state is read from the org's Tasks and
Events only. A won deal whose Close Date is in the future, or that has no CSM, is an error
for that record (the introduction goes to a customer: nothing is guessed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator, model_validator

from worker import schema
from worker.actions import Action, CreateTask
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot, full_record_id
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import (
    Emit,
    is_completed,
    primary_contact_id,
    render,
    worker_tasks,
)
from worker.rules.opportunity_stages import stage_entered

RULE_ID = "customer_handoff"
STEPS = ("form", "kickoff_escalation", "introduction", "week1", "weeks2_4", "review", "reopened")
CONTACT_ROLE = schema.OPPORTUNITY_CONTACT_ROLE
CONTACT = "Contact"

_DEAL = frozenset({"name", "account", "owner", "csm", "won"})
_Form = Annotated[str, Placeholders(_DEAL | {"missing", "completeness"})]
_Escalation = Annotated[str, Placeholders(_DEAL | {"deadline", "kickoff_days", "kickoff"})]
_Checklist = Annotated[str, Placeholders(_DEAL | {"checklist", "due"})]
_Intro = Annotated[
    str, Placeholders({"company", "customer", "csm", "ae", "goal", "objectives", "kickoff"})
]
_Reopen = Annotated[str, Placeholders({"as_of", "stage", "won"})]


class FormItem(StrictModel):
    """One line of the handoff form, as the org shows it: a field or a contact role."""

    label: str = Field(description="The form's words for it ('Contract Term').")
    field: Annotated[str, FieldOf("sobject")] = ""
    contact_role: Annotated[str, ValuesOf("Role", sobject=CONTACT_ROLE)] = ""

    @model_validator(mode="after")
    def _one_check(self) -> FormItem:
        if bool(self.field) == bool(self.contact_role):
            raise ValueError(f"{self.label!r}: give exactly one of field, contact_role")
        return self


class CustomerHandoffSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID, "CloseDate", "Account.Name", "Owner.Name"),
        schema.OPPORTUNITY_HISTORY: ("OpportunityId", "StageName", schema.CREATED_DATE),
        schema.USER: ("Name", "ManagerId", "IsActive"),
        schema.EVENT: (schema.WHAT_ID, "StartDateTime", schema.SUBJECT),
        CONTACT_ROLE: ("OpportunityId", "ContactId", "Role", "IsPrimary"),
        CONTACT: ("FirstName", "Email"),
    }

    sobject: str = "Opportunity"
    opportunity_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict
    )
    stage_field: Annotated[str, FieldOf("sobject")] = "StageName"
    won_stage: Annotated[str, ValuesOf("stage_field")] = "Closed Won"
    csm_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Opportunity field holding the CSM's User Id."
    )
    fallback_manager: str = Field(
        description="User Id told of a late kickoff when the CSM has no active manager."
    )
    recent_days: int = Field(default=14, ge=0)
    form: tuple[FormItem, ...] = Field(min_length=1)
    kickoff_business_days: int = Field(ge=0)
    event_type_field: Annotated[str, FieldOf(schema.EVENT)] = "Type"
    kickoff_event_types: Annotated[tuple[str, ...], ValuesOf("event_type_field")] = Field(
        min_length=1
    )
    success_criteria_field: Annotated[str, FieldOf("sobject")] = Field(
        description="One success criterion a line: the first is the goal of the "
        "introduction email, all are its objectives."
    )
    week1_due_days: int = Field(ge=0)
    weeks2_4_due_days: int = Field(ge=0)
    review_due_days: int = Field(ge=0)
    week1_items: tuple[str, ...] = Field(min_length=1)
    weeks2_4_items: tuple[str, ...] = Field(min_length=1)
    review_items: tuple[str, ...] = Field(min_length=1)
    company_name: str = Field(min_length=1, description="[Company] in the introduction email.")
    form_subject: _Form
    form_description: _Form
    escalation_subject: _Escalation
    escalation_description: _Escalation
    week1_subject: _Checklist
    week1_description: _Checklist
    weeks2_4_subject: _Checklist
    weeks2_4_description: _Checklist
    review_subject: _Checklist
    review_description: _Checklist
    intro_subject: _Intro
    intro_body: _Intro
    reopen_note: _Reopen

    @field_validator("fallback_manager")
    @classmethod
    def _user(cls, value: str) -> str:
        if not value.startswith(schema.USER_ID_PREFIX):
            raise ValueError(f"not a User Id: {value!r}")
        return full_record_id(value)


def candidates(
    snapshot: Snapshot, settings: CustomerHandoffSettings, org: OrgMapping
) -> Iterable[Record]:
    return snapshot.where(settings.sobject, settings.opportunity_scope)


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: CustomerHandoffSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, record)
    stage = record.text(s.stage_field)
    tasks = worker_tasks(snapshot, record.id, RULE_ID, org)
    if stage != s.won_stage:
        return _reopened(emit, record, at, s, org, stage, tasks)
    entered = stage_entered(record, snapshot, s.stage_field)
    close_date = record.date("CloseDate")
    if close_date is not None and close_date > at.date:
        raise RecordError(
            record.id,
            "CloseDate",
            f"won, but CloseDate {close_date} is in the future: correct the Close Date before "
            f"the handoff",
        )
    if entered is None:
        return _eval(
            emit,
            Verdict.EXCLUDED,
            f"excluded because it was {stage} before the stage history read",
        )
    won = entered.astimezone(org.org.zone).date()
    if (at.date - won).days > s.recent_days:
        return _eval(
            emit,
            Verdict.EXCLUDED,
            f"excluded because it was won on {won}, more than {s.recent_days} days ago",
        )
    csm = record.text(s.csm_field)
    if not csm:
        raise RecordError(record.id, s.csm_field, "won, but no CSM to hand the deal to")
    csm_user = snapshot.get(csm)
    values: dict[str, object] = {
        "name": emit.target.name or record.id,
        "account": record.text("Account.Name") or emit.target.name or record.id,
        "owner": record.text("Owner.Name") or record.text(schema.OWNER_ID),
        "csm": (csm_user.text("Name") if csm_user else None) or csm,
        "won": won.isoformat(),
    }
    where = f"rules.{RULE_ID}"
    actions: list[Action] = []
    reason = f"{stage} on {won}"

    def task(
        step: str,
        template: str,
        due: dt.date,
        extra: Mapping[str, object],
        why: str = reason,
        **kw: Any,
    ) -> None:
        """The step's Task once per win, from the ``<template>_subject`` and
        ``<template>_description`` settings."""
        step_key = f"{step}-{won.isoformat()}"
        if emit.key(step_key) in tasks:
            return
        filled = {**values, **extra}
        texts = [
            render(
                getattr(s, f"{template}_{part}"), filled, f"{where}.{template}_{part}", record.id
            )
            for part in ("subject", "description")
        ]
        actions.append(
            emit.task(
                step,
                subject=texts[0],
                description=texts[1],
                reason=why,
                due=due,
                step_key=step_key,
                **kw,
            )
        )

    # The handoff form.
    missing = [item.label for item in s.form if not _filled(record, snapshot, item)]
    filled_count = len(s.form) - len(missing)
    completeness = f"{filled_count}/{len(s.form)} ({round(100 * filled_count / len(s.form))}%)"
    lines = [f"form {completeness}" + (f", missing: {', '.join(missing)}" if missing else "")]
    if missing:
        task(
            "form",
            "form",
            at.date,
            {"missing": ", ".join(missing), "completeness": completeness},
            why=f"{reason}; handoff form {completeness}: {', '.join(missing)} missing",
        )

    # The checklists, planned at the win.
    for step, days, items in (
        ("week1", s.week1_due_days, s.week1_items),
        ("weeks2_4", s.weeks2_4_due_days, s.weeks2_4_items),
        ("review", s.review_due_days, s.review_items),
    ):
        due = max(won + dt.timedelta(days=days), at.date)
        checklist = "\n".join(f"- [ ] {item}" for item in items)
        task(step, step, due, {"checklist": checklist, "due": due.isoformat()}, owner_id=csm)

    # The kickoff.
    deadline = org.calendar.add_days(won, s.kickoff_business_days)
    kickoffs = sorted(
        (
            (start, event)
            for event in snapshot.children(schema.EVENT, schema.WHAT_ID, record.id)
            if event.text(s.event_type_field) in s.kickoff_event_types
            and (start := event.datetime("StartDateTime")) is not None
        ),
        key=lambda pair: (pair[0], pair[1].id),
    )
    held: tuple[dt.datetime, Record] | None = None
    seen: list[str] = []
    for start, event in kickoffs:
        day = start.astimezone(org.org.zone).date()
        label = f"Event {event.text(schema.SUBJECT) or event.id!r} on {day}"
        if not org.calendar.is_business_day(day):
            seen.append(f"kickoff {label} not counted: not a business day")
        elif day > deadline:
            seen.append(f"kickoff {label} not counted: after the deadline {deadline}")
        elif held is None:
            held = (start, event)
            seen.append(f"kickoff {label}, within {s.kickoff_business_days} business days")
    lines.extend(seen)
    if held is None:
        lines.append(f"no kickoff by {deadline} ({s.kickoff_business_days} business days)")
        if at.date > deadline:
            task(
                "kickoff_escalation",
                "escalation",
                at.date,
                {
                    "deadline": deadline.isoformat(),
                    "kickoff_days": s.kickoff_business_days,
                    "kickoff": "; ".join(seen) or "no kickoff Event on the opportunity",
                },
                why=f"{reason}: no kickoff Event within {s.kickoff_business_days} business "
                f"days (by {deadline})",
                owner_id=_manager(snapshot, csm, s.fallback_manager),
                high_priority=True,
            )

    # The introduction email, once the kickoff it names is scheduled.
    key = f"introduction-{won.isoformat()}"
    criteria = [
        line.strip().lstrip("-*0123456789.) ").strip()
        for line in (record.text(s.success_criteria_field) or "").splitlines()
    ]
    criteria = [c for c in criteria if c]
    if emit.key(key) not in tasks:
        if held is None:
            lines.append("introduction email waits for the kickoff Event")
        elif not criteria:
            lines.append(f"introduction email waits for {s.success_criteria_field}")
        else:
            actions.append(
                _introduction(emit, record, snapshot, s, org, values, criteria, held[0], at.date)
            )
    why = f"won on {won}: " + "; ".join(lines)
    if actions:
        return _eval(emit, Verdict.ACT, why, actions)
    if held is None and at.date <= deadline:
        return Evaluation(
            RULE_ID,
            emit.target,
            Verdict.NOT_DUE,
            why,
            next_due=deadline + dt.timedelta(days=1),
            next_step=s.step_label("kickoff_escalation"),
        )
    return _eval(emit, Verdict.DONE, why)


def _introduction(
    emit: Emit,
    record: Record,
    snapshot: Snapshot,
    s: CustomerHandoffSettings,
    org: OrgMapping,
    values: Mapping[str, object],
    criteria: list[str],
    kickoff: dt.datetime,
    today: dt.date,
) -> CreateTask:
    """The SOP's introduction email, filled in, as an Email Task for the CSM to send."""
    start = kickoff.astimezone(org.org.zone)
    contact = snapshot.get(primary_contact_id(snapshot, record.id))
    intro: dict[str, object] = {
        "company": s.company_name,
        "customer": (contact.text("FirstName") if contact else None) or values["account"],
        "csm": values["csm"],
        "ae": values["owner"],
        "goal": criteria[0],
        "objectives": "\n".join(f"- {c}" for c in criteria),
        "kickoff": f"{start:%A %B} {start.day}, {start:%Y at %H:%M %Z}",
    }
    where = f"rules.{RULE_ID}"
    subject = render(s.intro_subject, intro, f"{where}.intro_subject", record.id)
    body = render(s.intro_body, intro, f"{where}.intro_body", record.id)
    to = (contact.text("Email") if contact else None) or "the customer's contacts"
    won = values["won"]
    return emit.task(
        "introduction",
        subject=f"Send: {subject}",
        description=f"To: {to}\n\n{body}",
        reason=f"{s.won_stage} on {won}; kickoff scheduled",
        due=today,
        channel="email",
        owner_id=record.text(s.csm_field),
        step_key=f"introduction-{won}",
    )


def _reopened(
    emit: Emit,
    record: Record,
    at: AsOf,
    s: CustomerHandoffSettings,
    org: OrgMapping,
    stage: str | None,
    tasks: Mapping[str, Record],
) -> Evaluation:
    """No longer won: the handoff's open Tasks are completed, each with a note."""
    open_tasks = {k: t for k, t in sorted(tasks.items()) if not is_completed(t, org)}
    if not open_tasks:
        return _eval(emit, Verdict.EXCLUDED, f"excluded because {s.stage_field}={stage!r}")
    completed = org.tasks.completed_statuses[0]
    actions: list[Action] = []
    for key, task in open_tasks.items():
        note = render(
            s.reopen_note,
            # the step key ends with the day the deal was won (week1-2026-11-18)
            {
                "as_of": at.date.isoformat(),
                "stage": stage or "(none)",
                "won": key.split(":")[1][-10:],
            },
            f"rules.{RULE_ID}.reopen_note",
            record.id,
        )
        existing = task.text(schema.DESCRIPTION)
        description = f"{existing}\n\n{note}" if existing else note
        action = Emit.on(RULE_ID, s, org, task).update(
            "reopened",
            {
                schema.STATUS: completed,
                schema.DESCRIPTION: description[: schema.TASK_DESCRIPTION_MAX_CHARS],
            },
            reason=f"{emit.target.label()} is {stage}, no longer {s.won_stage}",
        )
        if action is not None:
            actions.append(action)
    why = f"re-opened ({s.stage_field}={stage!r}): {len(actions)} open handoff Task(s) closed"
    return _eval(emit, Verdict.ACT if actions else Verdict.DONE, why, actions)


def _filled(record: Record, snapshot: Snapshot, item: FormItem) -> bool:
    if item.field:
        value = record.get(item.field)
        return not (
            value is None or value is False or (isinstance(value, str) and not value.strip())
        )
    return any(
        role.text("Role") == item.contact_role
        for role in snapshot.children(CONTACT_ROLE, "OpportunityId", record.id)
    )


def _manager(snapshot: Snapshot, csm: str, fallback: str) -> str:
    """The CSM's active manager, else the fallback user."""
    user = snapshot.get(csm)
    manager = snapshot.get(user.text("ManagerId") if user else None)
    if manager is not None and manager.flag("IsActive"):
        return manager.id
    return fallback


def _eval(emit: Emit, verdict: Verdict, why: str, actions: Iterable[Action] = ()) -> Evaluation:
    return Evaluation(RULE_ID, emit.target, verdict, why, actions=tuple(actions))


RULE: Rule[CustomerHandoffSettings] = Rule(
    id=RULE_ID,
    title="Customer handoff: form, kickoff, introduction, checklists",
    settings_model=CustomerHandoffSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
