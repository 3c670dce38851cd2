"""Payment opportunities past their Close Date: contact cadence, final attempt, close-out.

Implements the SOP named by ``sop_file`` in the ``[rules.payment_followup]`` mapping section
(the implementation team's SOP for payment opportunities more than 30 days past Close Date):

- Step 1, identify the age: days from the Close Date to the as-of date.
- Step 2, communication cadence: once the age passes ``start_after_days`` an initial contact
  Task (phone/email) for the owner, due at once; then a follow-up Task every
  ``follow_up_every_days`` while unresolved and no customer response is logged. Each attempt
  is appended to the notes field (``log_field``, Next Steps), never overwriting it.
- Step 3, close out: on ``final_attempt_day`` a final phone-and-email Task carrying the
  close-out warning; after the end of that day with no response or resolution the record's
  status and Closed Reason are set and the outcome noted in Next Steps.

A response (a Task of a mapped kind, or a checkbox) or a resolution at any point stops the
cadence. Catch-up: a record first seen late gets the step due now; follow-ups that fell due
while the worker was not running are recorded as skipped, never sent in a burst. A record
first seen after the final day gets the final attempt now and is closed the day after
(``late_policy = "final_then_close"``) or is closed at once (``"close_now"``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, Placeholders, ValuesOf
from worker.keys import task_key
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, SkippedStep, Verdict
from worker.rules.kit import Emit, append_line, logged_response, render, worker_tasks

RULE_ID = "payment_followup"
STEPS = ("identify", "initial", "followup", "log", "final", "closeout")

# The values every template of this rule may use (see ``decide``); an attempt's Task texts
# also get its number.
_VALUES = frozenset(
    {"opportunity", "account", "close_date", "age", "final_day", "closeout_date", "as_of"}
)
_AttemptText = Annotated[str, Placeholders(_VALUES | {"attempt"})]


class PaymentFollowupSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS

    reads: ClassVar = {"sobject": (schema.OWNER_ID, "Account.Name")}

    sobject: str = Field(description="Object holding payment opportunities.")
    payment_field: Annotated[str, FieldOf("sobject")] = Field(
        description="Field that tells a payment opportunity apart."
    )
    payment_values: Annotated[tuple[str, ...], ValuesOf("payment_field")] = Field(min_length=1)
    stage_field: Annotated[str, FieldOf("sobject")]
    won_stages: Annotated[tuple[str, ...], ValuesOf("stage_field")] = Field(min_length=1)
    close_date_field: Annotated[str, FieldOf("sobject")]
    resolved_field: Annotated[str, FieldOf("sobject")]
    resolved_values: Annotated[tuple[str, ...], ValuesOf("resolved_field")] = Field(min_length=1)
    # The close-out (CloseRecord) sets these two.
    status_field: Annotated[str, FieldOf("sobject", write=True)] = Field(
        description="Field set to ``closed_status`` at close-out."
    )
    closed_status: Annotated[str, ValuesOf("status_field")]
    closed_reason_field: Annotated[str, FieldOf("sobject", write=True)]
    closed_reason: Annotated[str, ValuesOf("closed_reason_field")]
    # The attempt log (UpdateRecord).
    log_field: Annotated[str, FieldOf("sobject", write=True)] = Field(
        description="Notes field each attempt is appended to (Next Steps)."
    )
    log_max_chars: int = Field(ge=20, le=131072)
    start_after_days: int = Field(ge=0, description="Cadence starts when the age exceeds this.")
    follow_up_every_days: int = Field(ge=1)
    final_attempt_day: int = Field(ge=1)
    late_policy: Literal["final_then_close", "close_now"] = "final_then_close"
    response_task_field: Annotated[str, FieldOf(schema.TASK)] = Field(
        description="Task field that marks a customer response."
    )
    response_task_values: Annotated[tuple[str, ...], ValuesOf("response_task_field")] = Field(
        min_length=1
    )
    response_flag_field: Annotated[str | None, FieldOf("sobject")] = Field(
        default=None, description="Optional checkbox on the record that marks a response."
    )
    initial_subject: _AttemptText
    followup_subject: _AttemptText
    final_subject: _AttemptText
    attempt_description: _AttemptText
    final_description: _AttemptText
    log_line: Annotated[str, Placeholders(frozenset({"date", "attempt", "subject"}))]
    closeout_note: Annotated[str, Placeholders(_VALUES)]

    @model_validator(mode="after")
    def _days_in_order(self) -> PaymentFollowupSettings:
        if self.final_attempt_day <= self.start_after_days:
            raise ValueError("final_attempt_day must be after start_after_days")
        return self


def candidates(
    snapshot: Snapshot, settings: PaymentFollowupSettings, org: OrgMapping
) -> Iterable[Record]:
    return snapshot.where(settings.sobject, {settings.payment_field: settings.payment_values})


def decide(
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: PaymentFollowupSettings,
    org: OrgMapping,
) -> Evaluation:
    as_of = at.date  # this rule decides by day
    emit = Emit.on(RULE_ID, s, org, record)

    def verdict(v: Verdict, why: str, **kw: object) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=emit.target, verdict=v, why=why, **kw)  # type: ignore[arg-type]

    stage = record.text(s.stage_field)
    if stage not in s.won_stages:
        return verdict(Verdict.EXCLUDED, f"excluded because {s.stage_field}={stage!r} (not won)")
    if record.text(s.status_field) == s.closed_status:
        return verdict(Verdict.DONE, f"already closed out ({s.status_field}={s.closed_status!r})")
    resolution = record.text(s.resolved_field)
    if resolution in s.resolved_values:
        return verdict(Verdict.EXCLUDED, f"excluded because {s.resolved_field}={resolution!r}")
    close_date = record.date(s.close_date_field)
    if close_date is None:
        return verdict(Verdict.ERROR, f"no {s.close_date_field}: the age cannot be computed")

    start = close_date + dt.timedelta(days=s.start_after_days + 1)
    response = _response(record, snapshot, s, org, close_date)
    if response:
        return verdict(Verdict.DONE, f"cadence stopped: {response}")

    age = (as_of - close_date).days
    if age <= s.start_after_days:
        return verdict(
            Verdict.NOT_DUE,
            f"day {age} since {s.close_date_field} {close_date}; cadence starts on day "
            f"{s.start_after_days + 1}",
            next_due=start,
            next_step=s.step_label("initial"),
        )

    done = worker_tasks(snapshot, record.id, RULE_ID, org)
    attempts = sorted(
        (t for k, t in done.items() if ":final:" not in k),
        key=lambda t: (t.date(schema.ACTIVITY_DATE) or dt.date.min, t.id),
    )
    final_task = done.get(emit.key("final"))
    values = {
        "opportunity": emit.target.name or record.id,
        "account": record.text("Account.Name") or emit.target.name or record.id,
        "close_date": close_date.isoformat(),
        "age": age,
        "final_day": s.final_attempt_day,
        "closeout_date": (close_date + dt.timedelta(days=s.final_attempt_day + 1)).isoformat(),
        "as_of": as_of.isoformat(),
    }
    since = f"day {age} since {s.close_date_field} {close_date}"

    # Step 3: close out after the end of the final day, once the final attempt was made.
    if age > s.final_attempt_day and (final_task is not None or s.late_policy == "close_now"):
        final_day = final_task.date(schema.ACTIVITY_DATE) if final_task else None
        if final_day is not None and final_day >= as_of:
            return verdict(
                Verdict.NOT_DUE,
                f"{since}; final attempt made {final_day}, close-out the day after",
                next_due=final_day + dt.timedelta(days=1),
                next_step=s.step_label("closeout"),
            )
        note = render(s.closeout_note, values, f"rules.{RULE_ID}.closeout_note", record.id)
        action = emit.close(
            "closeout",
            {
                s.status_field: s.closed_status,
                s.closed_reason_field: s.closed_reason,
                s.log_field: append_line(record.text(s.log_field), note, s.log_max_chars),
            },
            reason=f"{since}, no response logged",
        )
        skipped: tuple[SkippedStep, ...] = ()
        if final_task is None:
            skipped = (
                SkippedStep(
                    emit.key("final"),
                    s.step_label("final"),
                    close_date + dt.timedelta(days=s.final_attempt_day),
                    "late_policy=close_now: closed without a final attempt",
                ),
            )
        return verdict(
            Verdict.ACT,
            f"{since}, no response logged",
            actions=tuple(a for a in (action,) if a),
            skipped=skipped,
        )

    # Step 3: the final attempt, on the final day (or at once when first seen later).
    if age >= s.final_attempt_day:
        if final_task is not None:
            return verdict(
                Verdict.NOT_DUE,
                f"{since}; final attempt made, close-out after day {s.final_attempt_day}",
                next_due=close_date + dt.timedelta(days=s.final_attempt_day + 1),
                next_step=s.step_label("closeout"),
            )
        n = len(attempts) + 1
        return _attempt(
            emit,
            s,
            record,
            values | {"attempt": n},
            as_of,
            "final",
            "final",
            n,
            f"{since}: final attempt before close-out",
            channel="call",
        )

    # Step 2: initial contact, then follow-ups every N days.
    if not attempts:
        return _attempt(
            emit,
            s,
            record,
            values | {"attempt": 1},
            as_of,
            "initial",
            "initial",
            1,
            f"{since}, more than {s.start_after_days} days: contact immediately",
        )
    last = attempts[-1]
    last_day = last.date(schema.ACTIVITY_DATE) or as_of
    log = _log_missing(emit, s, record, last, attempts, org)
    next_due = last_day + dt.timedelta(days=s.follow_up_every_days)
    if as_of < next_due:
        return verdict(
            Verdict.ACT if log else Verdict.NOT_DUE,
            f"{since}; attempt {len(attempts)} on {last_day}, next follow-up {next_due}",
            actions=tuple(a for a in (log,) if a),
            next_due=next_due,
            next_step=s.step_label("followup"),
        )
    n = len(attempts) + 1
    missed = []
    due = next_due
    while due + dt.timedelta(days=s.follow_up_every_days) <= as_of:
        missed.append(
            SkippedStep(
                emit.key(f"followup-missed-{due.isoformat()}"),
                s.step_label("followup"),
                due,
                "fell due while the worker was not running; catch-up does the step due now only",
            )
        )
        due += dt.timedelta(days=s.follow_up_every_days)
    evaluation = _attempt(
        emit,
        s,
        record,
        values | {"attempt": n},
        as_of,
        "followup",
        f"followup-{n}",
        n,
        f"{since}; last attempt {last_day}, follow-up every "
        f"{s.follow_up_every_days} days, no response logged",
    )
    return Evaluation(**{**evaluation.__dict__, "skipped": tuple(missed)})


def _attempt(
    emit: Emit,
    s: PaymentFollowupSettings,
    record: Record,
    values: dict[str, object],
    as_of: dt.date,
    step_id: str,
    step_key: str,
    n: int,
    reason: str,
    channel: Literal["call", "email", "task"] = "call",
) -> Evaluation:
    where = f"rules.{RULE_ID}"
    subject_t = {
        "initial": s.initial_subject,
        "followup": s.followup_subject,
        "final": s.final_subject,
    }[step_id]
    desc_t = s.final_description if step_id == "final" else s.attempt_description
    subject = render(subject_t, values, f"{where}.{step_id}_subject", record.id)
    task = emit.task(
        step_id,
        subject=subject,
        description=render(
            desc_t,
            values,
            f"{where}.{'final' if step_id == 'final' else 'attempt'}_description",
            record.id,
        ),
        due=as_of,
        reason=reason,
        channel=channel,
        high_priority=step_id == "final",
        step_key=step_key,
    )
    line = _log_text(s, n, subject, as_of)
    log = emit.update(
        "log",
        {s.log_field: append_line(record.text(s.log_field), line, s.log_max_chars)},
        reason=f"log attempt {n} in {s.log_field}",
        step_key=f"{step_key}-log",
    )
    actions: tuple[Action, ...] = tuple(a for a in (task, log) if a)
    return Evaluation(
        rule=RULE_ID, target=emit.target, verdict=Verdict.ACT, why=reason, actions=actions
    )


def _log_text(s: PaymentFollowupSettings, n: int, subject: str, day: dt.date) -> str:
    return render(
        s.log_line,
        {"date": day.isoformat(), "attempt": n, "subject": subject},
        f"rules.{RULE_ID}.log_line",
    )


def _log_missing(
    emit: Emit,
    s: PaymentFollowupSettings,
    record: Record,
    last: Record,
    attempts: list[Record],
    org: OrgMapping,
) -> Action | None:
    """Re-emit the newest attempt's log line if it never reached the notes field."""
    n = len(attempts)
    day = last.date(schema.ACTIVITY_DATE)
    key = task_key(last, org) or ""
    step_key = key.split(":")[1] if key.count(":") >= 2 else f"attempt-{n}"
    if day is None:
        return None
    line = _log_text(s, n, last.text(schema.SUBJECT) or "", day)
    if line in (record.text(s.log_field) or ""):
        return None
    return emit.update(
        "log",
        {s.log_field: append_line(record.text(s.log_field), line, s.log_max_chars)},
        reason=f"attempt {n} was not yet logged in {s.log_field}",
        step_key=f"{step_key}-log",
    )


def _response(
    record: Record,
    snapshot: Snapshot,
    s: PaymentFollowupSettings,
    org: OrgMapping,
    close_date: dt.date,
) -> str | None:
    if s.response_flag_field and record.flag(s.response_flag_field):
        return f"{s.response_flag_field} is checked"
    found = logged_response(
        snapshot.tasks_for(record.id),
        org,
        s.response_task_field,
        s.response_task_values,
        close_date,
    )
    if found:
        day, task = found
        return f"customer response logged on {day} ({task.text(schema.SUBJECT)!r})"
    return None


RULE: Rule[PaymentFollowupSettings] = Rule(
    id=RULE_ID,
    title="Payment opportunities past Close Date",
    settings_model=PaymentFollowupSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
