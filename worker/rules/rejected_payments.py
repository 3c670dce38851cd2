"""Rejected homeowner payments: up to N call attempts in a business-day window, then close.

Implements the SOP named by ``sop_file`` in the ``[rules.rejected_payments]`` mapping section
(the solar financier's SOP for homeowner payments rejected for incomplete or incorrect
information). The Jira ticket arrives as a Case whose request-type field holds one of
``request_type_values``. Steps (ids as in the mapping's ``steps`` table):

- ``first_call``: on business day ``attempt_offsets[0]`` after the case's creation, a call
  Task for the case owner carrying the outbound voice script and the voicemail script, both
  merged with the homeowner name, the agent name and the rejection reason.
- ``callback``: "Subsequent Calling (No Answer)": the next call Task (the SOP's
  "commitment") on each later business-day offset, naming the customer, the case number and
  the attempts completed so far, up to ``max_attempts`` within ``window_business_days``.
- ``log``: each attempt is logged as an internal CaseComment "Call attempt N/M ...". The
  outcome comes from the attempt Task's ``outcome_field`` once the rep completes it; an
  attempt still open when a later step falls due is logged with ``no_outcome_text``.
- ``email``: the "Email to Homeowner" with the attempts listed in ``email_with_attempts``:
  sent through Salesforce when the org enables the email action, else a Task for the rep.
- ``close``: on business day ``window_business_days`` (and after the day of the last
  attempt), with no answer and no response, an internal comment with attempt M/M and the
  case closed with ``closed_status`` and ``close_values`` (Resolution, Resolution Type,
  Platform Area).

Interpretations (see docs/rules/rejected_payments.md): business day 0 is the creation date
(rolled forward to a business day), counted on the holiday calendar of the mapping's
``[org]``; calls and the close-out happen on business days only, while a completed call is
logged on any day. The close-out also waits until the day after the last attempt. A response (a Case status in
``response_statuses``, a non-worker Task of a response kind, an attempt completed with an
answered outcome, or the optional checkbox) ends the cadence at once. Catch-up: only the
attempt due now is made; attempts that fell due while the worker was not running are
returned as skipped and never made later. Scripts are templates in the mapping; a missing
value is a TemplateError naming the placeholder, and unknown placeholders fail at load time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, ClassVar

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
    comment_keys,
    is_completed,
    logged_response,
    phone_to_call,
    render,
    worker_emails,
    worker_tasks,
)

RULE_ID = "rejected_payments"
STEPS = ("first_call", "callback", "log", "email", "close")

# Placeholders each template may use: the values this rule fills in.
_BASE = frozenset(
    {
        "homeowner",
        "agent",
        "reason",
        "case_number",
        "created_date",
        "close_date",
        "max_attempts",
        "window_business_days",
    }
)
_ATTEMPT = _BASE | {"attempt", "attempts_completed", "due_date", "phone"}


class RejectedPaymentTemplates(StrictModel):
    """The SOP's scripts and the worker's own texts, with ``{placeholder}`` fields."""

    voice_script: Annotated[str, Placeholders(_BASE)] = Field(
        description="SOP 'Outbound Voice Script'."
    )
    voicemail_script: Annotated[str, Placeholders(_BASE)] = Field(
        description="SOP 'Voicemail Script'."
    )
    attempt_subject: Annotated[str, Placeholders(_ATTEMPT)] = Field(
        description="Subject of each call Task (the commitment)."
    )
    attempt_description: Annotated[
        str, Placeholders(_ATTEMPT | {"voice_script", "voicemail_script"})
    ] = Field(
        description="Description of each call Task; embeds {voice_script} and {voicemail_script}."
    )
    log_comment: Annotated[str, Placeholders(_BASE | {"attempt", "attempt_date", "outcome"})] = (
        Field(description="Internal CaseComment logging one attempt.")
    )
    close_comment: Annotated[
        str, Placeholders(_BASE | {"attempts_made", "last_attempt", "as_of"})
    ] = Field(description="Internal CaseComment written when closing.")
    email_subject: Annotated[str, Placeholders(_BASE)] = Field(
        description="SOP 'Email to Homeowner' subject."
    )
    email_body: Annotated[str, Placeholders(_BASE)] = Field(
        description="SOP 'Email to Homeowner' body."
    )
    email_task_note: Annotated[
        str, Placeholders(_BASE | {"email_to", "email_subject", "email_body"})
    ] = Field(
        description="Description of the Task asking the rep to send the email, when the org "
        "does not let the worker send email."
    )


class RejectedPaymentsSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar = {
        "sobject": (schema.OWNER_ID,),
        schema.TASK: (schema.COMPLETED_DATE,),
        schema.CASE_COMMENT: (),
        # Emails the worker sent, where the org logs them as EmailMessages.
        schema.EMAIL_MESSAGE: tuple(schema.EMAIL_MESSAGE_FIELDS),
    }

    sobject: str = Field(description="Object the tickets arrive as (Case).")
    request_type_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Field holding the ticket's request type."
    )
    request_type_values: Annotated[tuple[str, ...], ValuesOf("request_type_field")] = Field(
        min_length=1, description="Request types in scope (Rejected Payments)."
    )
    # Only the close-out changes the case; attempts are new Tasks and CaseComments.
    status_field: Annotated[str, FieldOf("sobject", write=True)]
    closed_statuses: Annotated[tuple[str, ...], ValuesOf("status_field")] = Field(
        min_length=1, description="Status values that mean the case is closed: cadence over."
    )
    closed_status: Annotated[str, ValuesOf("status_field")] = Field(
        description="Status set when the worker closes the case."
    )
    close_values: Annotated[dict[str, str], FieldValues("sobject", write=True)] = Field(
        description="Other fields set on closing (Resolution, Resolution Type, Platform Area)."
    )
    created_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Date(time) the business-day window starts from."
    )
    case_number_field: Annotated[str, FieldOf("sobject")]
    homeowner_name_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Homeowner name, e.g. Contact.Name."
    )
    homeowner_email_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Homeowner email address for the email step."
    )
    homeowner_phone_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None,
        description="Number to call, e.g. ContactPhone: given to the call Tasks as {phone}, "
        "in international format (org.phone_region for numbers without a country code).",
    )
    contact_id_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Lookup set as the call Task's WhoId."
    )
    agent_name_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Agent name in the scripts, e.g. Owner.Name."
    )
    reason_field: Annotated[str, FieldOf("sobject")] = Field(
        description="The rejection reason from the ticket."
    )
    max_attempts: int = Field(ge=1, le=20)
    window_business_days: int = Field(
        ge=1,
        description="Attempts fall within this many business days; the case is closed "
        "on this business day.",
    )
    attempt_offsets: tuple[int, ...] = Field(
        description="Business day (0 = creation) of each attempt, ascending, one per attempt."
    )
    email_with_attempts: tuple[int, ...] = Field(
        default=(), description="Attempt numbers that also send the email; empty = no email."
    )
    outcome_field: Annotated[str, FieldOf(schema.TASK)] = Field(
        description="Task field the rep records the call result in."
    )
    answered_outcomes: tuple[str, ...] = Field(
        min_length=1, description="Call results meaning the homeowner was reached."
    )
    no_outcome_text: str = Field(description="Logged for an attempt never completed.")
    no_result_text: str = Field(description="Logged for an attempt completed without a result.")
    response_statuses: Annotated[tuple[str, ...], ValuesOf("status_field")] = Field(
        default=(), description="Case status values that mark a homeowner response."
    )
    response_task_field: Annotated[str, FieldOf(schema.TASK)] = Field(
        description="Task field marking a homeowner response."
    )
    response_task_values: Annotated[tuple[str, ...], ValuesOf("response_task_field")] = Field(
        min_length=1
    )
    response_flag_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Optional checkbox on the case that marks a response."
    )
    templates: RejectedPaymentTemplates

    @model_validator(mode="after")
    def _schedule_fits(self) -> RejectedPaymentsSettings:
        offsets = self.attempt_offsets
        if len(offsets) != self.max_attempts:
            raise ValueError(
                f"attempt_offsets has {len(offsets)} entries, max_attempts is {self.max_attempts}"
            )
        if any(b <= a for a, b in pairwise(offsets)):
            raise ValueError("attempt_offsets must be strictly ascending")
        if offsets[0] < 0 or offsets[-1] >= self.window_business_days:
            raise ValueError(
                f"attempt_offsets must lie in business days 0..{self.window_business_days - 1}"
            )
        bad = [n for n in self.email_with_attempts if not 1 <= n <= self.max_attempts]
        if bad or len(set(self.email_with_attempts)) != len(self.email_with_attempts):
            raise ValueError(f"email_with_attempts: attempt numbers 1..{self.max_attempts}, once")
        if self.closed_status not in self.closed_statuses:
            raise ValueError("closed_status must be one of closed_statuses")
        if self.status_field in self.close_values:
            raise ValueError(f"close_values: set {self.status_field} through closed_status")
        return self


def candidates(
    snapshot: Snapshot, settings: RejectedPaymentsSettings, org: OrgMapping
) -> Iterable[Record]:
    """Cases with any request type: those of another type are reported as excluded."""
    return (
        r
        for r in snapshot.of(settings.sobject)
        if isinstance(r.get(settings.request_type_field), str)
        and r.get(settings.request_type_field)
    )


@dataclass(frozen=True)
class _Case:
    """One case's schedule and what the worker already did on it."""

    emit: Emit
    s: RejectedPaymentsSettings
    record: Record
    as_of: dt.date
    dues: tuple[dt.date, ...]  # due date of attempt n at index n - 1
    close_due: dt.date
    tasks: dict[str, Record]  # the worker's Tasks and logged emails on the case, by action key
    attempts: dict[int, Record]  # attempt number -> the worker's call Task
    logged: frozenset[int]
    values: dict[str, object]
    since: str

    def verdict(self, v: Verdict, why: str, **kw: object) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=self.emit.target, verdict=v, why=why, **kw)  # type: ignore[arg-type]

    def render(self, name: str, extra: dict[str, object] | None = None) -> str:
        template = getattr(self.s.templates, name)
        values = self.values | (extra or {})
        return render(template, values, f"rules.{RULE_ID}.templates.{name}", self.record.id)


def decide(
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: RejectedPaymentsSettings,
    org: OrgMapping,
) -> Evaluation:
    as_of = at.date  # this rule decides by day
    emit = Emit.on(RULE_ID, s, org, record)

    def verdict(v: Verdict, why: str) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=emit.target, verdict=v, why=why)

    request_type = record.text(s.request_type_field)
    if request_type not in s.request_type_values:
        return verdict(
            Verdict.EXCLUDED, f"excluded because {s.request_type_field}={request_type!r}"
        )
    status = record.text(s.status_field)
    if status in s.closed_statuses:
        return verdict(Verdict.DONE, f"case is closed ({s.status_field}={status!r})")
    created = record.date(s.created_field)
    if created is None:
        raise RecordError(record.id, s.created_field, "empty: the window cannot be computed")

    cal = org.calendar
    day0 = cal.add_days(created, 0)
    dues = tuple(cal.add_days(day0, d) for d in s.attempt_offsets)
    close_due = cal.add_days(day0, s.window_business_days)
    tasks = worker_tasks(snapshot, record.id, RULE_ID, org) | worker_emails(
        snapshot, record.id, RULE_ID
    )
    attempts = {
        n: tasks[emit.key(f"attempt-{n}")]
        for n in range(1, s.max_attempts + 1)
        if emit.key(f"attempt-{n}") in tasks
    }
    comments = comment_keys(snapshot.comments_for(record.id), RULE_ID)
    logged = frozenset(n for n in attempts if emit.key(f"attempt-{n}-log") in comments)
    if as_of >= day0:
        since = f"business day {cal.days_between(day0, as_of)} since the case was created {created}"
    else:
        since = f"case created {created}, business day 0 is {day0}"
    case = _Case(
        emit=emit,
        s=s,
        record=record,
        as_of=as_of,
        dues=dues,
        close_due=close_due,
        tasks=tasks,
        attempts=attempts,
        logged=logged,
        values={
            "homeowner": record.text(s.homeowner_name_field),
            "agent": record.text(s.agent_name_field),
            "reason": record.text(s.reason_field),
            "case_number": record.text(s.case_number_field),
            "created_date": created.isoformat(),
            "close_date": close_due.isoformat(),
            "max_attempts": s.max_attempts,
            "window_business_days": s.window_business_days,
            "phone": phone_to_call(record, s.homeowner_phone_field, org.org.phone_region, "case"),
        },
        since=since,
    )

    # Attempts the rep completed are logged with their result as soon as they are seen.
    logs = [_log(case, n, org) for n in sorted(attempts) if n not in logged]
    done_logs = tuple(a for a in logs if a is not None)

    response = _response(case, snapshot, org, created)
    if response:
        if done_logs:
            return case.verdict(
                Verdict.ACT, f"cadence stopped: {response}; logging the call", actions=done_logs
            )
        return verdict(Verdict.DONE, f"cadence stopped: {response}")

    # Calls and the close-out wait for a business day; logging a completed call does not.
    if not cal.is_business_day(as_of):
        return case.verdict(
            Verdict.ACT if done_logs else Verdict.NOT_DUE,
            f"{as_of} is not a business day ({org.org.holiday_country} calendar)",
            actions=done_logs,
            next_due=cal.add_days(as_of, 0),
            next_step=s.step_label(_next_step(case)),
        )
    owner = record.text(schema.OWNER_ID) or ""
    if not owner.startswith(schema.USER_ID_PREFIX):  # a queue cannot own a call Task
        raise RecordError(record.id, schema.OWNER_ID, f"owner {owner!r} is not a user")

    # Close-out: window over, the last attempt made on an earlier day, no response.
    last = attempts.get(s.max_attempts)
    last_day = last.date(schema.ACTIVITY_DATE) if last else None
    if last is not None and as_of >= close_due and (last_day is None or as_of > last_day):
        return _close(case, org)

    current = max((n for n, due in enumerate(dues, 1) if due <= as_of), default=0)
    if current and current not in attempts:
        return _call(case, current, org)

    if current == 0:
        next_due, next_step = dues[0], "first_call"
    elif current < s.max_attempts:
        next_due, next_step = dues[current], "callback"
    else:
        after_last = cal.add_days(last_day + dt.timedelta(days=1), 0) if last_day else close_due
        next_due, next_step = max(close_due, after_last), "close"
    email = _email(case, current, org, report_skip=False) if current else None
    actions = done_logs + ((email,) if isinstance(email, Action) else ())
    made = f"attempt {current}/{s.max_attempts} made" if current else "no attempt due yet"
    return case.verdict(
        Verdict.ACT if actions else Verdict.NOT_DUE,
        f"{case.since}; {made}, next: {s.step_label(next_step)} on {next_due}",
        actions=actions,
        next_due=next_due,
        next_step=s.step_label(next_step),
    )


def _next_step(case: _Case) -> str:
    if not case.attempts:
        return "first_call"
    return "close" if max(case.attempts) == case.s.max_attempts else "callback"


def _log(case: _Case, n: int, org: OrgMapping, *, open_too: bool = False) -> Action | None:
    """The CaseComment logging attempt ``n``; ``None`` while its Task is open (unless
    ``open_too``: a later step is due, so the attempt is logged without an outcome)."""
    task = case.attempts[n]
    if is_completed(task, org):
        outcome = task.text(case.s.outcome_field) or case.s.no_result_text
        why = f"attempt {n} was completed: {outcome}"
    elif open_too:
        outcome = case.s.no_outcome_text
        why = f"attempt {n} is still open and a later step is due"
    else:
        return None
    day = task.date(schema.ACTIVITY_DATE) or task.date(schema.CREATED_DATE)
    body = case.render(
        "log_comment",
        {"attempt": n, "attempt_date": day.isoformat() if day else None, "outcome": outcome},
    )
    return case.emit.comment("log", body, reason=why, step_key=f"attempt-{n}-log")


def _pending_logs(case: _Case, org: OrgMapping, before: int) -> tuple[Action, ...]:
    """Logs of every attempt before ``before`` not yet logged, open ones without outcome."""
    out = (
        _log(case, n, org, open_too=True)
        for n in sorted(case.attempts)
        if n < before and n not in case.logged
    )
    return tuple(a for a in out if a is not None)


def _call(case: _Case, n: int, org: OrgMapping) -> Evaluation:
    s, emit, rec = case.s, case.emit, case.record
    step = "first_call" if n == 1 else "callback"
    made = len(case.attempts)
    extra: dict[str, object] = {
        "attempt": n,
        "attempts_completed": made,
        "due_date": case.as_of.isoformat(),
    }
    extra["voice_script"] = case.render("voice_script")
    extra["voicemail_script"] = case.render("voicemail_script")
    reason = (
        f"{case.since}: call attempt {n}/{s.max_attempts} due {case.dues[n - 1]}, "
        f"{made} made so far, no answer or response logged"
    )
    task = emit.task(
        step,
        subject=case.render("attempt_subject", extra),
        description=case.render("attempt_description", extra),
        due=case.as_of,
        reason=reason,
        channel="call",
        who_id=rec.text(s.contact_id_field),
        step_key=f"attempt-{n}",
    )
    skipped = [
        SkippedStep(
            emit.key(f"attempt-{k}"),
            s.step_label("first_call" if k == 1 else "callback"),
            case.dues[k - 1],
            "fell due while the worker was not running; catch-up makes the attempt due now only",
        )
        for k in range(max(case.attempts, default=0) + 1, n)
    ]
    email = _email(case, n, org, report_skip=True)
    if isinstance(email, SkippedStep):
        skipped.append(email)
    actions = (*_pending_logs(case, org, n), task, *((email,) if isinstance(email, Action) else ()))
    return case.verdict(Verdict.ACT, reason, actions=actions, skipped=tuple(skipped))


def _email(
    case: _Case, n: int, org: OrgMapping, *, report_skip: bool
) -> Action | SkippedStep | None:
    """The email that goes with attempt ``n`` when the mapping asks for one and none exists."""
    s, emit = case.s, case.emit
    if n not in s.email_with_attempts:
        return None
    step_key = f"email-{n}"
    if emit.key(step_key) in case.tasks:
        return None
    to = case.record.text(s.homeowner_email_field)
    if not to:
        if not report_skip:
            return None
        return SkippedStep(
            emit.key(step_key),
            s.step_label("email"),
            case.as_of,
            f"no {s.homeowner_email_field} on the case: the email cannot be sent",
        )
    subject = case.render("email_subject")
    body = case.render("email_body")
    reason = f"email to the homeowner with call attempt {n}/{s.max_attempts}"
    if org.org.email_action_enabled:
        return emit.email(
            "email", to_address=to, subject=subject, body=body, reason=reason, step_key=step_key
        )
    note = case.render(
        "email_task_note", {"email_to": to, "email_subject": subject, "email_body": body}
    )
    return emit.task(
        "email",
        subject=subject,
        description=note,
        due=case.as_of,
        reason=f"{reason} (the org does not let the worker send email: a Task for the rep)",
        channel="email",
        who_id=case.record.text(s.contact_id_field),
        step_key=step_key,
    )


def _close(case: _Case, org: OrgMapping) -> Evaluation:
    s, emit = case.s, case.emit
    made = sorted(case.attempts)
    reason = (
        f"{case.since}: {len(made)} call attempt(s) made, the last on "
        f"{case.attempts[made[-1]].date(schema.ACTIVITY_DATE)}; window of "
        f"{s.window_business_days} business days over with no answer or response"
    )
    note = case.render(
        "close_comment",
        {"attempts_made": len(made), "last_attempt": made[-1], "as_of": case.as_of.isoformat()},
    )
    comment = emit.comment("close", note, reason=reason, step_key="close-comment")
    close = emit.close("close", {s.status_field: s.closed_status, **s.close_values}, reason=reason)
    logs = _pending_logs(case, org, s.max_attempts + 1)
    actions = tuple(a for a in (*logs, comment, close) if a is not None)
    return case.verdict(Verdict.ACT, reason, actions=actions)


def _response(case: _Case, snapshot: Snapshot, org: OrgMapping, created: dt.date) -> str | None:
    s, rec = case.s, case.record
    status = rec.text(s.status_field)
    if status in s.response_statuses:
        return f"homeowner responded ({s.status_field}={status!r})"
    if s.response_flag_field and rec.flag(s.response_flag_field):
        return f"homeowner responded ({s.response_flag_field} is checked)"
    for n, task in sorted(case.attempts.items()):
        outcome = task.text(s.outcome_field)
        if is_completed(task, org) and outcome in s.answered_outcomes:
            return f"call attempt {n} was answered ({s.outcome_field}={outcome!r})"
    found = logged_response(
        snapshot.tasks_for(rec.id), org, s.response_task_field, s.response_task_values, created
    )
    if found:
        day, task = found
        return f"homeowner response logged on {day} ({task.text(schema.SUBJECT)!r})"
    return None


RULE: Rule[RejectedPaymentsSettings] = Rule(
    id=RULE_ID,
    title="Rejected homeowner payments",
    settings_model=RejectedPaymentsSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
