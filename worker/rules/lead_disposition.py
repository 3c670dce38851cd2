"""SOP 004 lead dispositions: recycle No Response leads, suppress Do Not Contact leads, and
remind the rep to update a lead's status after a contact.

Implements Lead Management step 6 of the SOP named by ``sop_file`` in
``[rules.lead_disposition]`` (``004_decc60c4b5a2963f.txt``, "6. Lead Disposition":
"Disposition Options: ... No Response → Recycle (90 days) - Do Not Contact → Suppress",
"Compliance: Update within 24 hours of contact"):

- ``recycle``: a lead whose status has been ``no_response_status`` for ``recycle_after_days``
  (since the ``LeadHistory`` row that set it, else since the lead was created) gets
  ``recycle_status`` and goes back to the routing queue ``recycle_queue`` (a Group's
  DeveloperName, one of lead_routing's ``intake_queues``): lead_routing routes a lead its
  intake queue owns on its next run.
- ``suppress``: a lead with ``do_not_contact_status`` gets both opt-outs
  (``email_opt_out_field``, ``call_opt_out_field``) set, and ``close_tasks`` completes every
  open Task a rule of the worker made on it (a Task with the worker's key), each with
  ``close_note`` added to its description. From then on the suppression check
  (:mod:`worker.suppression`) keeps every rule from planning a call or an email for it.
- ``remind``: a contact (a completed call or email Task on the lead, by the ``[suppression]``
  Task types) with no status change in ``LeadHistory`` since it was completed, once
  ``update_within_minutes`` business minutes have passed, gets one reminder Task to the
  Task's owner. Only contacts completed on the last ``look_back_days`` days (and today)
  count, so a first run does not remind of every old call.

The other dispositions (Qualified, Not Ready, Bad Fit) are the rep's to set; this rule
leaves those leads alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.keys import task_key
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import Emit, is_completed, render, worker_tasks
from worker.rules.lead_scoring import open_in_scope

RULE_ID = "lead_disposition"
STEPS = ("recycle", "suppress", "close_tasks", "remind")
LEAD_HISTORY = "LeadHistory"

_NOTE = frozenset({"lead", "status", "date"})
_REMIND = frozenset({"lead", "company", "task", "completed", "due", "status"})


class LeadDispositionSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {
        schema.LEAD: (schema.OWNER_ID, schema.CREATED_DATE, "Company"),
        LEAD_HISTORY: ("LeadId", "Field", "NewValue", schema.CREATED_DATE),
        schema.GROUP: ("DeveloperName", "Type"),
    }
    updates: ClassVar[Mapping[str, tuple[str, ...]]] = {
        schema.LEAD: (schema.OWNER_ID,),
        schema.TASK: (schema.STATUS, schema.DESCRIPTION),
    }

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1
    )
    status_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = "Status"
    no_response_status: Annotated[str, ValuesOf("status_field")] = "No Response"
    recycle_after_days: int = Field(default=90, ge=1)
    recycle_status: Annotated[str, ValuesOf("status_field")] = "Open - Not Contacted"
    recycle_queue: str = Field(
        min_length=1, description="Queue (DeveloperName) a recycled lead goes back to."
    )
    do_not_contact_status: Annotated[str, ValuesOf("status_field")] = "Do Not Contact"
    email_opt_out_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = "HasOptedOutOfEmail"
    call_opt_out_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = "DoNotCall"
    close_note: Annotated[str, Placeholders(_NOTE)]
    update_within_minutes: int = Field(default=480, ge=1)
    look_back_days: int = Field(default=7, ge=1)
    reminder_subject: Annotated[str, Placeholders(_REMIND)]
    reminder_description: Annotated[str, Placeholders(_REMIND)]

    def link(self, rules: Mapping[str, RuleSettings]) -> list[tuple[str, str]]:
        routing = rules.get("lead_routing")
        queues = getattr(routing, "intake_queues", None)
        if routing is not None and routing.enabled and queues and self.recycle_queue not in queues:
            return [
                (
                    "recycle_queue",
                    f"{self.recycle_queue!r} is not one of lead_routing's intake_queues "
                    f"({', '.join(queues)}): a recycled lead would not be routed again",
                )
            ]
        return []


def candidates(snapshot: Snapshot, s: LeadDispositionSettings, org: OrgMapping) -> Iterable[Record]:
    return (r for r in snapshot.of(schema.LEAD) if open_in_scope(r, s.lead_scope))


def decide(
    lead: Record, snapshot: Snapshot, at: AsOf, s: LeadDispositionSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, lead)
    status = lead.text(s.status_field) or ""
    changes = status_changes(lead, snapshot, s)
    if status == s.do_not_contact_status:
        return _suppress(emit, lead, snapshot, at, s, org)
    actions: list[Action] = []
    why: list[str] = []
    next_due: dt.date | None = None
    next_step: str | None = None
    next_due_at: dt.datetime | None = None
    if status == s.no_response_status:
        set_at = next((when for when, value in reversed(changes) if value == status), None)
        since = set_at or lead.datetime(schema.CREATED_DATE)
        if since is None:
            return Evaluation(RULE_ID, emit.target, Verdict.ERROR, "no CreatedDate")
        day = since.astimezone(org.org.zone).date()
        due = day + dt.timedelta(days=s.recycle_after_days)
        shown = f"{status} since {day}{'' if set_at else ' (created; no LeadHistory row)'}"
        if at.date >= due:
            actions.append(
                _recycle(emit, lead, snapshot, s, f"{shown}: {s.recycle_after_days} days")
            )
            why.append(f"{shown}, {s.recycle_after_days} days passed: recycle to routing")
        else:
            why.append(f"{shown}; recycled on {due}")
            next_due, next_step = due, s.step_label("recycle")
    reminders, waiting = _reminders(emit, lead, snapshot, at, changes, s, org)
    actions += [a for a, _ in reminders]
    why += [w for _, w in reminders]
    if waiting is not None and (next_due is None or waiting.date() < next_due):
        next_due, next_due_at, next_step = waiting.date(), waiting, s.step_label("remind")
    if actions:
        return Evaluation(RULE_ID, emit.target, Verdict.ACT, "; ".join(why), actions=tuple(actions))
    if next_due is not None:
        return Evaluation(
            RULE_ID,
            emit.target,
            Verdict.NOT_DUE,
            "; ".join(why) or "a contact waits for its status update",
            next_due=next_due,
            next_step=next_step,
            next_due_at=next_due_at,
        )
    return Evaluation(
        RULE_ID,
        emit.target,
        Verdict.DONE,
        "; ".join(why)
        or f"status {status!r}: no disposition step due, no contact awaiting an update",
    )


def status_changes(
    lead: Record, snapshot: Snapshot, s: LeadDispositionSettings
) -> list[tuple[dt.datetime, str]]:
    """The lead's status changes by its field history, oldest first: (when, new value)."""
    out = []
    for row in snapshot.children(LEAD_HISTORY, "LeadId", lead.id):
        when = row.datetime(schema.CREATED_DATE)
        if row.text("Field") == s.status_field and when is not None:
            out.append((when, row.text("NewValue") or ""))
    return sorted(out)


def _recycle(
    emit: Emit, lead: Record, snapshot: Snapshot, s: LeadDispositionSettings, reason: str
) -> Action:
    queue = next(
        (g for g in snapshot.of(schema.GROUP) if g.text("DeveloperName") == s.recycle_queue), None
    )
    if queue is None:
        raise RecordError(
            lead.id, f"rules.{RULE_ID}.recycle_queue", f"no queue {s.recycle_queue!r} in the org"
        )
    action = emit.update(
        "recycle",
        {s.status_field: s.recycle_status, schema.OWNER_ID: queue.id},
        reason=f"{reason}: back to the {s.recycle_queue} queue for routing",
    )
    assert action is not None  # the status changes
    return action


def _suppress(
    emit: Emit,
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: LeadDispositionSettings,
    org: OrgMapping,
) -> Evaluation:
    status = lead.text(s.status_field) or ""
    actions: list[Action] = []
    opt_outs = emit.update(
        "suppress",
        {s.email_opt_out_field: True, s.call_opt_out_field: True},
        reason=f"{s.status_field} {status!r}: no calls or emails",
    )
    if opt_outs is not None:
        actions.append(opt_outs)
    values = {"lead": emit.target.name or lead.id, "status": status, "date": at.date.isoformat()}
    note = render(s.close_note, values, f"rules.{RULE_ID}.close_note", lead.id)
    completed = org.tasks.completed_statuses[0]
    open_tasks = [
        t for t in snapshot.tasks_for(lead.id) if task_key(t, org) and not is_completed(t, org)
    ]
    for task in open_tasks:
        existing = task.text(schema.DESCRIPTION)
        description = f"{existing}\n\n{note}" if existing else note
        close = Emit.on(RULE_ID, s, org, task).update(
            "close_tasks",
            {
                schema.STATUS: completed,
                schema.DESCRIPTION: description[: schema.TASK_DESCRIPTION_MAX_CHARS],
            },
            reason=f"{emit.target.label()} is {status!r}: the worker's open Task "
            f"{task_key(task, org)} is closed",
        )
        if close is not None:
            actions.append(close)
    why = f"{s.status_field} {status!r}"
    if not actions:
        return Evaluation(
            RULE_ID, emit.target, Verdict.DONE, f"{why}: opt-outs set, no open worker Task"
        )
    parts = [
        p
        for p in (
            "opt-outs set" if opt_outs else "",
            f"{len(open_tasks)} open worker Task(s) closed" if open_tasks else "",
        )
        if p
    ]
    return Evaluation(
        RULE_ID, emit.target, Verdict.ACT, f"{why}: {', '.join(parts)}", actions=tuple(actions)
    )


def _reminders(
    emit: Emit,
    lead: Record,
    snapshot: Snapshot,
    at: AsOf,
    changes: list[tuple[dt.datetime, str]],
    s: LeadDispositionSettings,
    org: OrgMapping,
) -> tuple[list[tuple[Action, str]], dt.datetime | None]:
    """Reminders due for contacts with no status update since, and when the next falls due."""
    contact_types = {*org.suppression.call_task_types, *org.suppression.email_task_types}
    made = worker_tasks(snapshot, lead.id, RULE_ID, org)
    out: list[tuple[Action, str]] = []
    waiting: dt.datetime | None = None
    since = at.date - dt.timedelta(days=s.look_back_days)
    for task in snapshot.tasks_for(lead.id):
        kinds = {task.text(org.tasks.type_field), task.text(schema.TASK_SUBTYPE)}
        completed = task.datetime(schema.COMPLETED_DATE)
        if not kinds & contact_types or not is_completed(task, org) or completed is None:
            continue
        if completed.astimezone(org.org.zone).date() < since or any(
            when >= completed for when, _ in changes
        ):
            continue
        due = org.calendar.add(completed, dt.timedelta(minutes=s.update_within_minutes))
        if emit.key(f"remind-{task.id}") in made:
            continue
        if at.instant < due:
            waiting = due if waiting is None else min(waiting, due)
            continue
        local = completed.astimezone(org.org.zone)
        values: dict[str, Any] = {
            "lead": emit.target.name or lead.id,
            "company": lead.text("Company") or "(no company)",
            "task": task.text(schema.SUBJECT) or task.id,
            "completed": local.strftime("%Y-%m-%d %H:%M"),
            "due": due.astimezone(org.org.zone).strftime("%Y-%m-%d %H:%M"),
            "status": lead.text(s.status_field) or "(empty)",
        }
        where = f"rules.{RULE_ID}"
        reminder = emit.task(
            "remind",
            subject=render(s.reminder_subject, values, f"{where}.reminder_subject", lead.id),
            description=render(
                s.reminder_description, values, f"{where}.reminder_description", lead.id
            ),
            reason=f"contact {task.id} completed {values['completed']}, no status update "
            f"by {values['due']}",
            due=at.date,
            owner_id=task.text(schema.OWNER_ID),
            step_key=f"remind-{task.id}",
        )
        out.append((reminder, f"no status update since the contact of {values['completed']}"))
    return out, waiting


RULE: Rule[LeadDispositionSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 lead dispositions",
    settings_model=LeadDispositionSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
