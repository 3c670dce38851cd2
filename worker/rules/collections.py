"""Delinquent accounts: payment reminders and collections, for Core and Digital CSMs.

Implements the SOP named by ``sop_file`` in the ``[rules.collections]`` mapping section (the
customer-success SOP for overdue accounts). Every day count, field, sequence name, subject
and template is in the mapping; this module only knows the shape of the cadence.

An Account is in a *delinquency episode* while it has an overdue balance. Days overdue come
from a days-past-due field or from the due date of the oldest unpaid invoice
(``overdue_source``). The episode's start date (the oldest due date, or as-of minus days
overdue) is part of every step key (``first_reminder-2026-08-01``), so an account that falls
overdue again later gets fresh keys, while a step is never repeated within an episode: the
state is read back from the org (the worker's keyed Tasks and logged emails, and the fields a
field step sets), never from memory.

Steps (``cadence.<step>`` in the mapping, each with its day, its action and its templates;
``segments.<name>.steps`` lists which steps a segment gets):

- ``first_reminder`` (Step 1, Task #1, day 10, Core): Task for the CSM to add the POCs to
  the Core past-due sequence and to check that Finance's first reminder went out.
- ``digital_enrollment`` (Step 1, day 10, Digital): the account is enrolled in the Digital
  sequence (a field value on the Account, or a Task: the step's ``action``).
- ``second_reminder`` (Step 2, Task #3, day 40): Task to confirm Finance's 2nd email.
- ``email1`` / ``email2`` (Step 3, days 60 and 67): automated emails on the CSM's behalf.
- ``winback`` (Step 6, day 80): win-back email #3 with the 10% offer.
- ``final_notice`` (Step 4, Task #4, day 90): Task to confirm Finance's final notice.
- ``suspension`` (Step 5, Task #5, day 100): Task to check the account after suspension.
- ``lost_revenue`` / ``lost_revenue_task`` (Step 7, day 120): mark the account as lost
  revenue; Task to confirm the account status.
- ``exit``: the main contact replied (a non-worker Task of a mapped type on the account or the
  contact, dated within the episode) or the account is current again: no further step of
  the episode, the cadence's open Tasks are completed with a note and field steps marked
  ``clear_on_exit`` (the sequence enrollment) are cleared (the SOP's "opted out").
- ``case_notes``: every step appends a dated line to the case-notes field; all changes to the
  Account on one day travel in one update.

Email steps send through Salesforce's email action when ``[org] email_action_enabled``,
otherwise they become a Task for the CSM holding the email to send. Catch-up
(``catch_up``): ``latest`` does only the step(s) due now and reports the earlier missed ones
as skipped; ``all`` does every missed step at once.

Interpretations (each with its setting in ``docs/rules/collections.md``): the SOP labels both
Step 5 and Step 7 "Task #5", read as two Tasks (``suspension`` on day 100,
``lost_revenue_task`` on day 120); there is no "Task #2" (the sequence's second touch is an
email), so none is invented; "fully automated" Digital accounts get the enrollment, the
emails and the lost-revenue mark but no Finance-confirmation Tasks (``segments``); steps run
by their day, not their SOP number (Step 6 on day 80 comes before Step 4 on day 90); a reply
anywhere in the episode, even before day 10, ends the episode.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.keys import task_key
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, SkippedStep, Verdict
from worker.rules.kit import (
    Emit,
    append_line,
    check_steps,
    complete_tasks,
    is_completed,
    render,
    worker_emails,
    worker_tasks,
)

RULE_ID = "collections"
CADENCE_STEPS = (
    "first_reminder",
    "digital_enrollment",
    "second_reminder",
    "email1",
    "email2",
    "winback",
    "final_notice",
    "suspension",
    "lost_revenue",
    "lost_revenue_task",
)
STEPS = (*CADENCE_STEPS, "exit", "case_notes")

# The platform's own object names (not org choices).
_USER = "User"
_CONTACT = "Contact"

# Values every step template may use.
STEP_PLACEHOLDERS = frozenset(
    {
        "account",
        "amount",
        "days_overdue",
        "csm_name",
        "contact_first_name",
        "contact_name",
        "contact_email",
        "sequence",
        "segment",
        "episode_start",
        "day",
        "due_date",
        "as_of",
    }
)
EMAIL_TASK_PLACEHOLDERS = STEP_PLACEHOLDERS | {"subject", "body"}
NOTE_LINE_PLACEHOLDERS = frozenset({"date", "label", "text"})
CLOSE_NOTE_PLACEHOLDERS = frozenset({"as_of", "why"})
EXIT_PLACEHOLDERS = frozenset({"as_of", "closed", "episode_start"})
EXIT_REPLY_PLACEHOLDERS = EXIT_PLACEHOLDERS | {"reply_date", "reply_subject"}

_KEY_EPISODE = re.compile(rf"^{RULE_ID}:([a-z0-9_]+)-(\d{{4}}-\d{{2}}-\d{{2}}):")


class CadenceStep(StrictModel):
    """One step of the cadence: when it falls due and what it does."""

    day: int = Field(ge=1, description="Days overdue on which the step falls due.")
    action: Literal["task", "email", "field"] = Field(
        description="task: a Task for the CSM; email: an email to the main contact (or a "
        "Task to send it when the email action is off); field: set a field on the Account."
    )
    subject: Annotated[str | None, Placeholders(STEP_PLACEHOLDERS)] = Field(
        default=None, description="Task or email subject template."
    )
    body: Annotated[str | None, Placeholders(STEP_PLACEHOLDERS)] = Field(
        default=None, description="Task description or email body."
    )
    field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Account field a field step sets."
    )
    value: str | None = Field(default=None, description="The value a field step sets.")
    date_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None,
        description="Optional Account date field set to the as-of date with the value; makes "
        "the step's done-check episode-aware (done only if dated within the episode).",
    )
    clear_on_exit: bool = Field(
        default=False, description="Clear the field when the episode exits (sequence opt-out)."
    )
    high_priority: bool = False
    note: Annotated[str, Placeholders(STEP_PLACEHOLDERS)] = Field(
        description="Case-notes text for this step (a template)."
    )

    @model_validator(mode="after")
    def _action_fields(self) -> CadenceStep:
        if self.action in ("task", "email") and not (self.subject and self.body):
            raise ValueError(f"a {self.action} step needs subject and body")
        if self.action == "field" and not (self.field and self.value):
            raise ValueError("a field step needs field and value")
        return self


class Segment(StrictModel):
    """A customer segment (Core/Strategic, Digital): how it is recognised, what it gets."""

    values: tuple[str, ...] = Field(
        min_length=1,
        description="CSM role names (segment_source=csm_role) or Account field values "
        "(segment_source=account_field) that put an account in this segment.",
    )
    sequence: str = Field(description="The Outreach sequence the SOP names for the segment.")
    steps: tuple[str, ...] = Field(min_length=1, description="Cadence steps this segment gets.")


class CollectionsSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID,),
        # Emails the worker sent, where the org logs them as EmailMessages.
        schema.EMAIL_MESSAGE: tuple(schema.EMAIL_MESSAGE_FIELDS),
    }

    sobject: str = Field(description="Object holding the customer accounts.")
    overdue_source: Literal["days_field", "due_date_field"] = Field(
        description="How days overdue are known: a days-past-due field, or the due date of "
        "the oldest unpaid invoice."
    )
    days_overdue_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Number: days past due."
    )
    oldest_due_date_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Date: due date of the oldest unpaid invoice."
    )
    overdue_amount_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Currency: the overdue balance."
    )
    csm_field: Annotated[str, FieldOf("sobject")] = Field(
        description="User lookup on the account holding the CSM (OwnerId)."
    )
    csm_name_field: Annotated[str, FieldOf(_USER)] = Field(
        default="Name", description="User field with the CSM's name."
    )
    segment_source: Literal["csm_role", "account_field"] = Field(
        description="Segment from the CSM's role (User field csm_role_field) or an Account field."
    )
    csm_role_field: Annotated[str, FieldOf(_USER)] = Field(
        default="UserRole.Name", description="User field: the role."
    )
    segment_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Account field: the segment."
    )
    segments: dict[str, Segment] = Field(min_length=1)
    contact_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Contact lookup on the account: the main POC."
    )
    contact_email_field: Annotated[str, FieldOf(_CONTACT)] = "Email"
    contact_first_name_field: Annotated[str, FieldOf(_CONTACT)] = "FirstName"
    contact_name_field: Annotated[str, FieldOf(_CONTACT)] = "Name"
    reply_task_field: Annotated[str, FieldOf(schema.TASK)] = Field(
        description="Task field that marks the contact's reply."
    )
    reply_task_values: Annotated[tuple[str, ...], ValuesOf("reply_task_field")] = Field(
        min_length=1
    )
    case_notes_field: Annotated[str, FieldOf("sobject", write=True)] = Field(
        description="Account notes field every step appends to."
    )
    case_notes_max_chars: int = Field(ge=40, le=131072)
    case_note_line: Annotated[str, Placeholders(NOTE_LINE_PLACEHOLDERS)] = Field(
        description="Line appended per step: {date} {label} {text}."
    )
    catch_up: Literal["latest", "all"] = Field(
        default="latest",
        description="latest: an account first seen late gets only the step(s) due now, earlier "
        "missed steps are reported as skipped; all: every missed step at once.",
    )
    email_task_subject: Annotated[str, Placeholders(EMAIL_TASK_PLACEHOLDERS)] = Field(
        description="Task subject when the email action is off."
    )
    email_task_description: Annotated[str, Placeholders(EMAIL_TASK_PLACEHOLDERS)] = Field(
        description="Task body when the email action is off."
    )
    task_close_note: Annotated[str, Placeholders(CLOSE_NOTE_PLACEHOLDERS)] = Field(
        description="Appended to a cadence Task closed on exit."
    )
    exit_reply_note: Annotated[str, Placeholders(EXIT_REPLY_PLACEHOLDERS)] = Field(
        description="Case-notes text when the main contact replied."
    )
    exit_current_note: Annotated[str, Placeholders(EXIT_PLACEHOLDERS)] = Field(
        description="Case-notes text when the account is current."
    )
    exit_episode_note: Annotated[str, Placeholders(EXIT_PLACEHOLDERS)] = Field(
        description="Case-notes text when Tasks of an earlier, ended episode are closed."
    )
    cadence: dict[str, CadenceStep]

    @model_validator(mode="after")
    def _consistent(self) -> CollectionsSettings:
        check_steps("cadence", self.cadence, CADENCE_STEPS)
        source_field = {
            "days_field": ("days_overdue_field", self.days_overdue_field),
            "due_date_field": ("oldest_due_date_field", self.oldest_due_date_field),
        }[self.overdue_source]
        if not source_field[1]:
            raise ValueError(f"overdue_source={self.overdue_source!r} needs {source_field[0]}")
        if self.segment_source == "account_field" and not self.segment_field:
            raise ValueError("segment_source='account_field' needs segment_field")
        seen: dict[str, str] = {}
        for name, segment in self.segments.items():
            bad = [s for s in segment.steps if s not in self.cadence]
            if bad:
                raise ValueError(f"segments.{name}.steps: unknown step(s) {', '.join(bad)}")
            for value in segment.values:
                if value in seen:
                    raise ValueError(
                        f"segments.{name}.values: {value!r} is also in segments.{seen[value]}"
                    )
                seen[value] = name
        return self

    def _steps_in_use(self) -> set[str]:
        return {name for segment in self.segments.values() for name in segment.steps}

    def writes(self) -> dict[str, set[str]]:
        """Beside the case notes (every step and exit): the fields of field steps a segment
        runs (with their date fields), fields cleared on exit, and the cadence's own Tasks,
        completed with a note on exit (Status, Description). Which steps run is a matter of
        the segments, so these are listed here rather than by annotation."""
        in_use = self._steps_in_use()
        out = super().writes()
        account = out.setdefault(self.sobject, set())
        for name, step in self.cadence.items():
            if step.action != "field" or not step.field:
                continue
            if name in in_use:
                account.update(n for n in (step.field, step.date_field) if n)
            elif step.clear_on_exit:
                account.add(step.field)
        if any(self.cadence[name].action != "field" for name in in_use):
            out[schema.TASK] = {schema.STATUS, schema.DESCRIPTION}
        return out

    def picklist_values(self) -> dict[tuple[str, str], set[str]]:
        """Beside the reply Task types: the segment values when the segment is an Account
        field, and the value of each field step a segment runs or that is cleared on exit
        (which depend on other settings, so they are listed here). A field step may
        name a text field (the sequence name, Past_Due_Sequence__c): doctor checks values
        only on fields the org describes as picklists. The completed Task status the exit
        writes comes from the mapping's ``[tasks]`` section, which this section does not
        hold: not listed here."""
        out = super().picklist_values()
        if self.segment_source == "account_field" and self.segment_field:
            out.setdefault((self.sobject, self.segment_field), set()).update(
                v for segment in self.segments.values() for v in segment.values
            )
        in_use = self._steps_in_use()
        for name, step in self.cadence.items():
            live = name in in_use or step.clear_on_exit
            if live and step.action == "field" and step.field and step.value is not None:
                out.setdefault((self.sobject, step.field), set()).add(step.value)
        return out


@dataclass(frozen=True)
class _Overdue:
    days: int
    start: dt.date  # first day of the delinquency by today's figures
    amount: Decimal | None
    how: str  # where the figure comes from, for reasons


def candidates(
    snapshot: Snapshot, settings: CollectionsSettings, org: OrgMapping
) -> Iterable[Record]:
    """Accounts with overdue figures, open cadence Tasks, or a field step still set.

    Nothing here may raise: a malformed figure makes the account a candidate, and ``decide``
    reports it as an error.
    """
    for record in snapshot.of(settings.sobject):
        try:
            in_scope = (
                _looks_overdue(record, settings)
                or any(
                    not is_completed(t, org)
                    for t in worker_tasks(snapshot, record.id, RULE_ID, org).values()
                )
                or any(
                    step.clear_on_exit and step.field and record.get(step.field) == step.value
                    for step in settings.cadence.values()
                )
            )
        except RecordError:
            in_scope = True
        if in_scope:
            yield record


def _looks_overdue(record: Record, s: CollectionsSettings) -> bool:
    try:
        amount = record.number(s.overdue_amount_field)
    except RecordError:
        return True
    if amount is not None and amount > 0:
        return True
    name = s.days_overdue_field if s.overdue_source == "days_field" else s.oldest_due_date_field
    value = record.get(name or "")
    if s.overdue_source == "days_field":
        return value not in (None, "", 0, "0")
    return value not in (None, "")


def decide(
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: CollectionsSettings,
    org: OrgMapping,
) -> Evaluation:
    as_of = at.date  # this rule decides by day
    emit = Emit.on(RULE_ID, s, org, record)
    tasks = worker_tasks(snapshot, record.id, RULE_ID, org)
    open_tasks = {k: t for k, t in tasks.items() if not is_completed(t, org)}
    # The steps done, by key: the worker's Tasks and the emails the org logged (as Tasks,
    # found above, or as EmailMessages).
    mine = tasks | worker_emails(snapshot, record.id, RULE_ID)

    def verdict(v: Verdict, why: str, **kw: Any) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=emit.target, verdict=v, why=why, **kw)

    overdue = _overdue(record, as_of, s)
    if overdue is None:
        current = _current_why(record, s)
        why = f"account is current ({current}): cadence ended"
        exits = _exit_actions(
            emit,
            record,
            as_of,
            s,
            org,
            open_tasks,
            why,
            "exit_current_note",
            {"as_of": as_of.isoformat(), "episode_start": _episodes_text(open_tasks)},
        )
        if exits:
            return verdict(Verdict.ACT, why, actions=exits)
        if mine:
            return verdict(Verdict.DONE, why)
        return verdict(Verdict.EXCLUDED, f"excluded because {current} (account is current)")

    segment_name, segment = _segment(record, snapshot, s)
    if segment is None:
        return verdict(Verdict.EXCLUDED, segment_name)

    episode = _episode(overdue.start, mine)
    since = (
        f"day {overdue.days} overdue ({overdue.how}), "
        f"{segment_name} account, episode started {episode}"
    )
    contact = _contact(record, snapshot, s)
    csm = snapshot.get(record.text(s.csm_field))
    values = _values(record, emit, s, overdue, segment_name, segment, episode, csm, contact)
    values["as_of"] = as_of.isoformat()  # the one value that is not the record's

    reply = _reply(record, snapshot, s, org, contact, episode, as_of)
    if reply is not None:
        reply_day, reply_subject = reply
        why = f"cadence stopped: main contact replied on {reply_day} ({reply_subject!r})"
        exit_values = {
            "as_of": as_of.isoformat(),
            "reply_date": reply_day.isoformat(),
            "reply_subject": reply_subject,
            "episode_start": episode.isoformat(),
        }
        exits = _exit_actions(
            emit, record, as_of, s, org, open_tasks, why, "exit_reply_note", exit_values
        )
        if exits:
            return verdict(Verdict.ACT, f"{since}; {why}", actions=exits)
        return verdict(Verdict.DONE, f"{since}; {why}")

    # Tasks left open by an earlier episode: that episode ended (the account was current).
    stale = {k: t for k, t in open_tasks.items() if _episode_of(k) != episode}
    sequence = sorted(
        ((name, s.cadence[name]) for name in segment.steps),
        key=lambda item: (item[1].day, segment.steps.index(item[0])),
    )
    done = {name for name, step in sequence if _is_done(name, step, record, mine, emit, episode)}
    # Steps before the last one done are passed: done, or deliberately skipped by catch-up.
    last_done = max((i for i, (name, _) in enumerate(sequence) if name in done), default=-1)
    pending = [(n, st) for i, (n, st) in enumerate(sequence) if i > last_done]
    due_now = [(n, st) for n, st in pending if st.day <= overdue.days]
    if s.catch_up == "latest":
        latest_day = max((st.day for _, st in due_now), default=None)
        act_on = [(n, st) for n, st in due_now if st.day == latest_day]
        skipped_steps = [(n, st) for n, st in due_now if st.day != latest_day]
    else:
        act_on, skipped_steps = due_now, []

    actions: list[Action] = []
    account_values: dict[str, Any] = {}
    lines: list[str] = []
    why_parts: list[str] = []
    closed = _close_tasks(
        emit, s, stale, as_of, "the episode it belonged to ended (account was current)"
    )
    if closed:
        actions.extend(closed)
        ended_text = _episodes_text(stale)
        text = render(
            s.exit_episode_note,
            {"as_of": as_of.isoformat(), "closed": len(closed), "episode_start": ended_text},
            f"rules.{RULE_ID}.exit_episode_note",
            record.id,
        )
        lines.append(_note_line(s, as_of, "exit", text))
        why_parts.append(f"closed {len(closed)} open Task(s) of the ended episode {ended_text}")

    field_step: str | None = None
    for name, step in act_on:
        step_values = values | {
            "day": step.day,
            "due_date": (overdue.start + dt.timedelta(days=step.day)).isoformat(),
        }
        reason = f"{since}: {s.step_label(name)} falls due on day {step.day}; no reply logged"
        action, changes = _step(emit, name, step, s, org, step_values, as_of, episode, reason)
        if action is not None:
            actions.append(action)
        if changes:
            account_values.update(changes)
            field_step = name
        note = render(step.note, step_values, f"rules.{RULE_ID}.cadence.{name}.note", record.id)
        lines.append(_note_line(s, as_of, name, note))
        why_parts.append(f"{s.step_label(name)} due (day {step.day})")

    if lines:
        account_values[s.case_notes_field] = _add_lines(record, s, lines)
        update_step = field_step or "case_notes"
        update = emit.update(
            update_step,
            account_values,
            reason=f"{since}: " + "; ".join(why_parts),
            step_key=f"{field_step}-{episode}" if field_step else f"case_notes-{as_of}",
        )
        if update is not None:
            actions.append(update)

    skipped = tuple(
        SkippedStep(
            emit.key(f"{name}-{episode}"),
            s.step_label(name),
            overdue.start + dt.timedelta(days=step.day),
            f"fell due on day {step.day} while the account was not seen; catch_up=latest "
            f"does only the step due now (day {overdue.days})",
        )
        for name, step in skipped_steps
    )
    upcoming = [(n, st) for n, st in pending if st.day > overdue.days]
    next_due = next_step = None
    if upcoming:
        name, step = upcoming[0]
        next_due = overdue.start + dt.timedelta(days=step.day)
        next_step = s.step_label(name)

    if actions:
        return verdict(
            Verdict.ACT,
            f"{since}: " + "; ".join(why_parts),
            actions=tuple(actions),
            skipped=skipped,
            next_due=next_due,
            next_step=next_step,
        )
    if next_due is not None:
        return verdict(
            Verdict.NOT_DUE,
            f"{since}; next: {next_step} on day {upcoming[0][1].day}",
            next_due=next_due,
            next_step=next_step,
        )
    return verdict(
        Verdict.DONE, f"{since}; every step of the {segment_name} cadence is done or passed"
    )


# -- reading the account -----------------------------------------------------------------------


def _overdue(record: Record, as_of: dt.date, s: CollectionsSettings) -> _Overdue | None:
    """Days overdue and the episode start by today's figures; ``None`` when current."""
    amount = record.number(s.overdue_amount_field)
    if s.overdue_source == "days_field":
        name = s.days_overdue_field or ""
        number = record.number(name)
        if number is not None and number != number.to_integral_value():
            raise RecordError(record.id, name, f"expected whole days, got {number}")
        days = int(number) if number is not None else None
        how = f"{name}={days}"
    else:
        name = s.oldest_due_date_field or ""
        due = record.date(name)
        days = (as_of - due).days if due is not None else None
        how = f"oldest unpaid invoice due {due}"
    if days is None:
        if amount is not None and amount > 0:
            raise RecordError(
                record.id, name, f"{s.overdue_amount_field}={amount} but no days overdue"
            )
        return None
    if days <= 0 or (amount is not None and amount <= 0):
        return None
    return _Overdue(days, as_of - dt.timedelta(days=days), amount, how)


def _current_why(record: Record, s: CollectionsSettings) -> str:
    """The figure that shows the account is current, as ``FIELD=VALUE``."""
    amount = record.number(s.overdue_amount_field)
    if amount is not None and amount <= 0:
        name = s.overdue_amount_field
    else:
        name = (
            s.days_overdue_field if s.overdue_source == "days_field" else s.oldest_due_date_field
        ) or ""
    return f"{name}={record.get(name)!r}"


def _segment(
    record: Record, snapshot: Snapshot, s: CollectionsSettings
) -> tuple[str, Segment | None]:
    """The segment's name, or the exclusion reason and ``None``."""
    if s.segment_source == "csm_role":
        csm_id = record.text(s.csm_field)
        user = snapshot.get(csm_id)
        if user is None:
            raise RecordError(record.id, s.csm_field, f"CSM user {csm_id!r} is not in the cache")
        value = user.text(s.csm_role_field)
        shown = f"{s.csm_role_field}={value!r} (CSM {user.text(s.csm_name_field) or user.id})"
    else:
        value = record.text(s.segment_field or "")
        shown = f"{s.segment_field}={value!r}"
    for name, segment in s.segments.items():
        if value in segment.values:
            return name, segment
    return f"excluded because {shown}: not a collections segment", None


def _contact(record: Record, snapshot: Snapshot, s: CollectionsSettings) -> Record | None:
    contact = snapshot.get(record.text(s.contact_field))
    return contact if contact is not None and contact.sobject == _CONTACT else None


def _values(
    record: Record,
    emit: Emit,
    s: CollectionsSettings,
    overdue: _Overdue,
    segment_name: str,
    segment: Segment,
    episode: dt.date,
    csm: Record | None,
    contact: Record | None,
) -> dict[str, Any]:
    return {
        "account": emit.target.name or record.id,
        "amount": f"{overdue.amount:,.2f}" if overdue.amount is not None else None,
        "days_overdue": overdue.days,
        "csm_name": csm.text(s.csm_name_field) if csm else None,
        "contact_first_name": contact.text(s.contact_first_name_field) if contact else None,
        "contact_name": contact.text(s.contact_name_field) if contact else None,
        "contact_email": contact.text(s.contact_email_field) if contact else None,
        "sequence": segment.sequence,
        "segment": segment_name,
        "episode_start": episode.isoformat(),
    }


def _episode_of(key: str) -> dt.date | None:
    match = _KEY_EPISODE.match(key)
    return dt.date.fromisoformat(match.group(2)) if match else None


def _episode(start: dt.date, mine: Mapping[str, Record]) -> dt.date:
    """The episode today's delinquency belongs to.

    An earlier episode continues when the account has been overdue (by today's figures) since
    before that episode's last step: the figures may drift by a day, or the oldest invoice may
    be paid while a newer one is still overdue; neither is a new episode. Otherwise (the
    delinquency began after the last step of every earlier episode) it is a new episode.
    """
    last_step: dict[dt.date, dt.date] = {}
    for key, task in mine.items():
        episode = _episode_of(key)
        if episode is None:
            continue
        day = task.date(schema.ACTIVITY_DATE) or task.date(schema.CREATED_DATE) or episode
        last_step[episode] = max(day, last_step.get(episode, day))
    continuing = [e for e, last in last_step.items() if start <= last]
    return max(continuing) if continuing else start


def _is_done(
    name: str,
    step: CadenceStep,
    record: Record,
    mine: Mapping[str, Record],
    emit: Emit,
    episode: dt.date,
) -> bool:
    if step.action == "field":
        if record.get(step.field or "") != step.value:
            return False
        if step.date_field:
            stamped = record.date(step.date_field)
            return stamped is not None and stamped >= episode
        return True
    return emit.key(f"{name}-{episode}") in mine


def _reply(
    record: Record,
    snapshot: Snapshot,
    s: CollectionsSettings,
    org: OrgMapping,
    contact: Record | None,
    episode: dt.date,
    as_of: dt.date,
) -> tuple[dt.date, str] | None:
    """The main contact's first reply within the episode: a non-worker Task of a mapped type."""
    tasks = list(snapshot.tasks_for(record.id))
    if contact is not None:
        tasks.extend(t for t in snapshot.tasks_for(contact.id) if t not in tasks)
    for task in tasks:
        if task_key(task, org) or task.text(s.reply_task_field) not in s.reply_task_values:
            continue
        day = task.date(schema.ACTIVITY_DATE) or task.date(schema.CREATED_DATE)
        if day is not None and episode <= day <= as_of:
            return day, task.text(schema.SUBJECT) or task.id
    return None


# -- building actions --------------------------------------------------------------------------


def _step(
    emit: Emit,
    name: str,
    step: CadenceStep,
    s: CollectionsSettings,
    org: OrgMapping,
    values: dict[str, Any],
    as_of: dt.date,
    episode: dt.date,
    reason: str,
) -> tuple[Action | None, dict[str, Any]]:
    """One step's own action (Task or email) and its Account field changes."""
    where = f"rules.{RULE_ID}.cadence.{name}"
    key = f"{name}-{episode}"
    if step.action == "field":
        changes: dict[str, Any] = {step.field or "": step.value}
        if step.date_field:
            changes[step.date_field] = as_of.isoformat()
        return None, changes
    subject = render(step.subject or "", values, f"{where}.subject", emit.record.id)
    body = render(step.body or "", values, f"{where}.body", emit.record.id)
    csm_id = emit.record.text(s.csm_field)
    contact_id = emit.record.text(s.contact_field)
    if step.action == "task":
        task = emit.task(
            name,
            subject=subject,
            description=body,
            due=as_of,
            reason=reason,
            owner_id=csm_id,
            who_id=contact_id,
            high_priority=step.high_priority,
            step_key=key,
        )
        return task, {}
    if org.org.email_action_enabled:
        to_address = values.get("contact_email")
        if not to_address:
            raise RecordError(
                emit.record.id,
                s.contact_field,
                f"{s.step_label(name)}: the main point of contact has no email address",
            )
        return emit.email(
            name, to_address=to_address, subject=subject, body=body, reason=reason, step_key=key
        ), {}
    task_values = values | {"subject": subject, "body": body}
    return emit.task(
        name,
        subject=render(
            s.email_task_subject, task_values, f"rules.{RULE_ID}.email_task_subject", emit.record.id
        ),
        description=render(
            s.email_task_description,
            task_values,
            f"rules.{RULE_ID}.email_task_description",
            emit.record.id,
        ),
        due=as_of,
        reason=reason,
        channel="email",
        owner_id=csm_id,
        who_id=contact_id,
        high_priority=step.high_priority,
        step_key=key,
    ), {}


def _note_line(s: CollectionsSettings, as_of: dt.date, step_id: str, text: str) -> str:
    return render(
        s.case_note_line,
        {"date": as_of.isoformat(), "label": s.step_label(step_id), "text": text},
        f"rules.{RULE_ID}.case_note_line",
    )


def _add_lines(record: Record, s: CollectionsSettings, lines: list[str]) -> str | None:
    """The case notes with the new lines appended; a line already there is not added again
    (a rerun of the same day from a cache that missed the day's Task must not log twice)."""
    notes = record.text(s.case_notes_field)
    for line in lines:
        if line.strip() not in (notes or "").splitlines():
            notes = append_line(notes, line, s.case_notes_max_chars)
    return notes


def _close_tasks(
    emit: Emit,
    s: CollectionsSettings,
    tasks: Mapping[str, Record],
    as_of: dt.date,
    why: str,
) -> list[Action]:
    """Complete the cadence's open Tasks, each with a note saying why."""
    return complete_tasks(
        emit, tasks, s.task_close_note, f"rules.{RULE_ID}.task_close_note", as_of, why, _episode_of
    )


def _exit_actions(
    emit: Emit,
    record: Record,
    as_of: dt.date,
    s: CollectionsSettings,
    org: OrgMapping,
    open_tasks: Mapping[str, Record],
    why: str,
    note_key: Literal["exit_reply_note", "exit_current_note"],
    exit_values: dict[str, Any],
) -> tuple[Action, ...]:
    """Leave the cadence: close its open Tasks, clear opt-out fields, note it on the account."""
    actions = _close_tasks(emit, s, open_tasks, as_of, why)
    changes: dict[str, Any] = {
        step.field: None
        for step in s.cadence.values()
        if step.clear_on_exit and step.field and record.get(step.field) == step.value
    }
    if not actions and not changes:
        return ()
    text = render(
        getattr(s, note_key),
        exit_values | {"closed": len(actions)},
        f"rules.{RULE_ID}.{note_key}",
        record.id,
    )
    changes[s.case_notes_field] = _add_lines(record, s, [_note_line(s, as_of, "exit", text)])
    update = emit.update("exit", changes, reason=why, step_key=f"exit-{as_of}")
    return (*actions, *((update,) if update else ()))


def _episodes_text(tasks: Mapping[str, Record]) -> str:
    episodes = sorted({e for k in tasks if (e := _episode_of(k)) is not None})
    return ", ".join(e.isoformat() for e in episodes) or "unknown"


RULE: Rule[CollectionsSettings] = Rule(
    id=RULE_ID,
    title="Delinquent accounts: payment reminders and collections",
    settings_model=CollectionsSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
