"""The Stage 1 outreach sequence of SOP 004 (Sales Process SOP, "Stage 1: Prospecting",
"Outreach sequence": Day 1 personalized email and LinkedIn connection, Day 2 phone call
attempt #1, Day 3 follow-up email, Day 5 phone call attempt #2, Day 7 breakup email) for
opportunities, which Salesforce's Sales Engagement cadences cannot sequence.

The days are business days of ``org.calendar``: Day 1 is the day the opportunity entered
the Prospecting stage (by ``OpportunityHistory``, as ``opportunity_stages`` reads it; its
``CreatedDate`` when the history read holds no entry), rolled forward to a business day.
Each step (``cadence.<step>`` in the mapping: its day, its channel, its templates) is a Task
for the owner dated its own business day, on the opportunity and its primary contact:

- emails the rep writes (the personalised one) are Email Tasks holding a template skeleton;
- the LinkedIn connection is a Task (LinkedIn has no API);
- calls are Call Tasks with the contact's number;
- a step with ``send = true`` (the breakup email) goes out through Salesforce's Send Email
  action to the primary contact when ``[org] email_action_enabled``, else it is an Email
  Task holding the email to send.

A step is planned on its day, not before. After runs were missed only the latest step due
is planned, the earlier ones reported as skipped; a step that fell due more than
``expire_after_days`` business days ago is not started late at all.

The cadence ends when the contact replied (a Task logged by a person, not the worker, on the
opportunity or the Contact of any of its contact roles, whose ``reply_task_field`` is one of
``reply_task_values``, dated on or after Day 1), a meeting was booked (an Event on the
opportunity created after the opportunity entered Prospecting), or the opportunity left
Prospecting: its open cadence Tasks are then completed, each with ``close_note``.

Keys carry the day the opportunity entered Prospecting (``prospecting_cadence:call_1-
2026-11-20:<opp>``): a rerun never plans a step twice, a later stay in Prospecting is a new
sequence. Which step is done is read from the org (the worker's keyed Tasks and logged
emails), never from the database.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, SkippedStep, Verdict
from worker.rules.kit import (
    Emit,
    check_steps,
    complete_tasks,
    is_completed,
    logged_response,
    phone_to_call,
    render,
    worker_emails,
    worker_tasks,
)
from worker.rules.opportunity_stages import stage_entered

RULE_ID = "prospecting_cadence"
CADENCE_STEPS = ("personal_email", "linkedin", "call_1", "followup_email", "call_2", "breakup")
STEPS = (*CADENCE_STEPS, "exit")
CONTACT = "Contact"
CONTACT_ROLE = schema.OPPORTUNITY_CONTACT_ROLE

STEP_PLACEHOLDERS = frozenset(
    {
        "name",
        "account",
        "owner",
        "contact",
        "contact_first_name",
        "contact_email",
        "phone",
        "day",
        "due",
        "entered",
    }
)
CLOSE_NOTE_PLACEHOLDERS = frozenset({"as_of", "why"})
_Text = Annotated[str, Placeholders(STEP_PLACEHOLDERS)]
_KEY_STAY = re.compile(rf"^{RULE_ID}:[a-z0-9_]+-(\d{{4}}-\d{{2}}-\d{{2}}):")


class CadenceStep(StrictModel):
    """One touch of the sequence."""

    day: int = Field(ge=1, description="Business day of the sequence (Day 1: entry day).")
    channel: Literal["email", "call", "task"] = Field(
        description="The Task's kind: an Email or Call Task, or a plain Task."
    )
    send: bool = Field(
        default=False,
        description="Email steps: send it to the primary contact through the Send Email "
        "action when [org] email_action_enabled (else a Task holding the email to send).",
    )
    subject: _Text
    description: _Text = Field(
        description="The Task's text (an email the rep writes: its skeleton); the email's "
        "body for a step that is sent."
    )

    @model_validator(mode="after")
    def _send_is_email(self) -> CadenceStep:
        if self.send and self.channel != "email":
            raise ValueError("send = true needs channel = 'email'")
        return self


class ProspectingCadenceSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID, schema.IS_CLOSED, schema.CREATED_DATE, "Account.Name"),
        schema.OPPORTUNITY_HISTORY: ("OpportunityId", "StageName", schema.CREATED_DATE),
        schema.EVENT: (schema.WHAT_ID, schema.CREATED_DATE),
        CONTACT_ROLE: ("OpportunityId", "ContactId", "IsPrimary", schema.CREATED_DATE),
        CONTACT: ("FirstName", "Name", "Email", "Phone"),
        schema.USER: ("Name",),
        # Emails the worker sent, where the org logs them as EmailMessages.
        schema.EMAIL_MESSAGE: tuple(schema.EMAIL_MESSAGE_FIELDS),
    }
    # The cadence's own Tasks, completed with a note when it ends.
    updates: ClassVar = {schema.TASK: (schema.STATUS, schema.DESCRIPTION)}

    sobject: str = "Opportunity"
    opportunity_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict,
        description="Opportunity field (dotted paths allowed) -> allowed values, ANDed.",
    )
    stage_field: Annotated[str, FieldOf("sobject")] = "StageName"
    prospecting_stage: Annotated[str, ValuesOf("stage_field")] = "Prospecting"
    reply_task_field: Annotated[str, FieldOf(schema.TASK)] = Field(
        description="Task field that marks a reply logged by a person."
    )
    reply_task_values: Annotated[tuple[str, ...], ValuesOf("reply_task_field")] = Field(
        min_length=1
    )
    expire_after_days: int = Field(
        default=3,
        ge=0,
        description="A step that fell due more than this many business days ago is not "
        "started late (a first run over old opportunities sends no breakup emails).",
    )
    close_note: Annotated[str, Placeholders(CLOSE_NOTE_PLACEHOLDERS)] = Field(
        description="Appended to an open cadence Task completed when the cadence ends."
    )
    cadence: dict[str, CadenceStep]

    @model_validator(mode="after")
    def _every_step(self) -> ProspectingCadenceSettings:
        check_steps("cadence", self.cadence, CADENCE_STEPS)
        return self

    def ordered(self) -> list[tuple[str, CadenceStep]]:
        """The steps by day, then in the SOP's order."""
        return sorted(
            self.cadence.items(), key=lambda item: (item[1].day, CADENCE_STEPS.index(item[0]))
        )


def candidates(
    snapshot: Snapshot, settings: ProspectingCadenceSettings, org: OrgMapping
) -> Iterable[Record]:
    """In-scope opportunities in Prospecting, and those with open cadence Tasks (to close)."""
    for record in snapshot.where(settings.sobject, settings.opportunity_scope):
        if record.text(settings.stage_field) == settings.prospecting_stage or _open_tasks(
            snapshot, record, org
        ):
            yield record


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: ProspectingCadenceSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, record)
    open_tasks = _open_tasks(snapshot, record, org)
    stage = record.text(s.stage_field)

    def result(verdict: Verdict, why: str, actions: Iterable[Action] = (), **kw: Any) -> Evaluation:
        acts = tuple(actions)
        return Evaluation(
            RULE_ID, emit.target, Verdict.ACT if acts else verdict, why, actions=acts, **kw
        )

    if stage != s.prospecting_stage or record.flag(schema.IS_CLOSED):
        why = f"the opportunity left {s.prospecting_stage} ({s.stage_field}={stage!r})"
        closes = _close(emit, s, open_tasks, at.date, why)
        if closes:
            return result(Verdict.DONE, f"cadence ended: {why}", closes)
        return result(Verdict.EXCLUDED, f"excluded because {s.stage_field}={stage!r}")

    entered = stage_entered(record, snapshot, s.stage_field) or record.datetime(schema.CREATED_DATE)
    if entered is None:
        raise RecordError(record.id, schema.CREATED_DATE, "no CreatedDate and no stage history")
    entered_on = entered.astimezone(org.org.zone).date()
    day_one = org.calendar.add_days(entered_on, 0)
    since = f"in {s.prospecting_stage} since {entered_on} (Day 1 {day_one})"
    stale = {k: t for k, t in open_tasks.items() if _stay_of(k) != entered_on}
    actions: list[Action] = list(
        _close(emit, s, stale, at.date, "an earlier stay in Prospecting ended")
    )
    current = {k: t for k, t in open_tasks.items() if k not in stale}

    ended = _exit_reason(record, snapshot, s, org, entered)
    if ended is not None:
        why = f"{since}; cadence ended: {ended}"
        actions.extend(_close(emit, s, current, at.date, ended))
        return result(Verdict.DONE, why, actions)

    contact = _contact(record, snapshot)
    mine = set(worker_tasks(snapshot, record.id, RULE_ID, org)) | set(
        worker_emails(snapshot, record.id, RULE_ID)
    )
    stamp = entered_on.isoformat()
    plan = [
        (name, step, org.calendar.add_days(day_one, step.day - 1)) for name, step in s.ordered()
    ]
    done = [i for i, (name, _, _) in enumerate(plan) if emit.key(f"{name}-{stamp}") in mine]
    # Steps up to the last one done are passed: done, or skipped by an earlier catch-up.
    pending = plan[max(done, default=-1) + 1 :]
    due_now = [(n, st, on) for n, st, on in pending if on <= at.date]
    upcoming = [(n, st, on) for n, st, on in pending if on > at.date]
    latest = max((on for _, _, on in due_now), default=None)
    skipped: list[SkippedStep] = []
    for name, _, on in due_now:
        if on != latest:
            skipped.append(
                SkippedStep(
                    emit.key(f"{name}-{stamp}"),
                    s.step_label(name),
                    on,
                    f"fell due on {on} while the worker was not running; catch-up does only "
                    f"the latest step due ({latest})",
                )
            )
    next_kw: dict[str, Any] = {}
    if upcoming:
        next_kw = {"next_due": upcoming[0][2], "next_step": s.step_label(upcoming[0][0])}
    if latest is not None and org.calendar.days_between(latest, at.date) > s.expire_after_days:
        for name, _, on in due_now:
            if on == latest:
                skipped.append(
                    SkippedStep(
                        emit.key(f"{name}-{stamp}"),
                        s.step_label(name),
                        on,
                        f"fell due on {on}, more than {s.expire_after_days} business days ago: "
                        f"too late to start",
                    )
                )
        latest = None
    if contact is None and latest is not None:
        raise RecordError(
            record.id,
            CONTACT_ROLE,
            "no contact to reach: add a contact role (the SOP's entry criteria: contact "
            "information verified)",
        )
    for name, step, on in due_now:
        if on != latest or contact is None:
            continue
        values = _values(record, snapshot, emit, org, contact, step, on, entered_on)
        reason = f"{since}: {s.step_label(name)} falls due on Day {step.day} ({on})"
        actions.append(_step(emit, s, org, name, step, values, contact, on, reason, stamp))
    if actions:
        return result(Verdict.ACT, since, actions, skipped=tuple(skipped), **next_kw)
    if upcoming:
        why = f"{since}; next: {upcoming[0][0]} on Day {upcoming[0][1].day} ({upcoming[0][2]})"
        return result(Verdict.NOT_DUE, why, skipped=tuple(skipped), **next_kw)
    return result(Verdict.DONE, f"{since}; every step is done or passed", skipped=tuple(skipped))


def _open_tasks(snapshot: Snapshot, record: Record, org: OrgMapping) -> dict[str, Record]:
    return {
        k: t
        for k, t in worker_tasks(snapshot, record.id, RULE_ID, org).items()
        if not is_completed(t, org)
    }


def _stay_of(key: str) -> dt.date | None:
    match = _KEY_STAY.match(key)
    return dt.date.fromisoformat(match.group(1)) if match else None


def _exit_reason(
    record: Record,
    snapshot: Snapshot,
    s: ProspectingCadenceSettings,
    org: OrgMapping,
    entered: dt.datetime,
) -> str | None:
    """Why the cadence has ended although the opportunity is still in Prospecting: a reply
    logged on it or on one of its contacts, or a meeting booked since it entered the stage."""
    tasks = list(snapshot.tasks_for(record.id))
    for role in snapshot.children(CONTACT_ROLE, "OpportunityId", record.id):
        contact_id = role.text("ContactId")
        if contact_id:
            tasks.extend(t for t in snapshot.tasks_for(contact_id) if t not in tasks)
    since = entered.astimezone(org.org.zone).date()
    reply = logged_response(tasks, org, s.reply_task_field, s.reply_task_values, since)
    if reply is not None:
        day, task = reply
        return f"reply logged on {day or 'an undated Task'} ({task.text(schema.SUBJECT)!r})"
    for event in snapshot.children(schema.EVENT, schema.WHAT_ID, record.id):
        created = event.datetime(schema.CREATED_DATE)
        if created is not None and created >= entered:
            on = created.astimezone(org.org.zone).date()
            return f"meeting booked on {on} ({event.text(schema.SUBJECT)!r})"
    return None


def _contact(record: Record, snapshot: Snapshot) -> Record | None:
    """The contact the sequence reaches: the primary contact role's, else the earliest."""
    roles = sorted(
        (r for r in snapshot.children(CONTACT_ROLE, "OpportunityId", record.id)),
        key=lambda r: (not r.flag("IsPrimary"), r.text(schema.CREATED_DATE) or "", r.id),
    )
    for role in roles:
        contact = snapshot.get(role.text("ContactId"))
        if contact is not None and contact.sobject == CONTACT:
            return contact
    return None


def _values(
    record: Record,
    snapshot: Snapshot,
    emit: Emit,
    org: OrgMapping,
    contact: Record,
    step: CadenceStep,
    on: dt.date,
    entered_on: dt.date,
) -> dict[str, Any]:
    owner = snapshot.get(record.text(schema.OWNER_ID))
    return {
        "name": emit.target.name or record.id,
        "account": record.text("Account.Name") or emit.target.name or record.id,
        "owner": (owner.text("Name") if owner else None) or record.text(schema.OWNER_ID),
        "contact": contact.text("Name"),
        "contact_first_name": contact.text("FirstName") or contact.text("Name"),
        "contact_email": contact.text("Email"),
        "phone": phone_to_call(contact, "Phone", org.org.phone_region, "contact"),
        "day": step.day,
        "due": on.isoformat(),
        "entered": entered_on.isoformat(),
    }


def _step(
    emit: Emit,
    s: ProspectingCadenceSettings,
    org: OrgMapping,
    name: str,
    step: CadenceStep,
    values: Mapping[str, Any],
    contact: Record,
    on: dt.date,
    reason: str,
    stamp: str,
) -> Action:
    where = f"rules.{RULE_ID}.cadence.{name}"
    subject = render(step.subject, values, f"{where}.subject", emit.record.id)
    body = render(step.description, values, f"{where}.description", emit.record.id)
    key = f"{name}-{stamp}"
    address = contact.text("Email")
    if step.send and org.org.email_action_enabled and address:
        return emit.email(
            name, to_address=address, subject=subject, body=body, reason=reason, step_key=key
        )
    if step.send:
        why = (
            f"the contact {contact.text('Name')} has no email address"
            if org.org.email_action_enabled
            else "the email action is off"
        )
        subject, body = f"Send: {subject}", f"To: {address or '(no address)'}\n\n{body}"
        reason = f"{reason}; {why}"
    return emit.task(
        name,
        subject=subject,
        description=body,
        reason=reason,
        due=on,
        channel=step.channel,
        who_id=contact.id,
        step_key=key,
    )


def _close(
    emit: Emit,
    s: ProspectingCadenceSettings,
    tasks: Mapping[str, Record],
    as_of: dt.date,
    why: str,
) -> list[Action]:
    """Complete the cadence's open Tasks, each with the close note saying why."""
    return complete_tasks(
        emit, tasks, s.close_note, f"rules.{RULE_ID}.close_note", as_of, why, _stay_of
    )


RULE: Rule[ProspectingCadenceSettings] = Rule(
    id=RULE_ID,
    title="Prospecting outreach sequence (Stage 1)",
    settings_model=ProspectingCadenceSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
