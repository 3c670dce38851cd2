"""Pure helpers shared by the rule modules: building actions, reading the worker's own
Tasks back, notes fields, templates, month arithmetic and round robins (business time is in
:mod:`worker.business_hours`, the calendar on ``org.calendar``).

Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import phonenumbers
from dateutil.relativedelta import relativedelta

from worker import schema
from worker.actions import (
    Action,
    AddCampaignMember,
    AddCaseComment,
    CloseRecord,
    ConvertLead,
    CreateTask,
    FieldChange,
    MergeRecords,
    SendEmail,
    SubmitApproval,
    UpdateRecord,
    make_key,
)
from worker.errors import TemplateError
from worker.keys import keys_in_text, task_key, with_key_marker
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, RecordRef, format_sf_datetime
from worker.records import in_scope as in_scope  # the rules take it from their kit

Channel = Literal["call", "email", "task"]


def worker_tasks(snapshot: Any, record_id: str, rule_id: str, org: OrgMapping) -> dict[str, Record]:
    """The Tasks this rule created on a record, by action key."""
    out: dict[str, Record] = {}
    prefix = f"{rule_id}:"
    for task in snapshot.tasks_for(record_id):
        key = task_key(task, org)
        if key and key.startswith(prefix) and key.endswith(f":{record_id}"):
            out[key] = task
    return out


def worker_emails(snapshot: Any, record_id: str, rule_id: str) -> dict[str, Record]:
    """The emails this rule sent about a record, by action key, as the org logged them in an
    EmailMessage (Enhanced Email) related to the record, the key marker in its body. Where
    the org logs emails as Tasks instead, :func:`worker_tasks` finds them."""
    out: dict[str, Record] = {}
    for email in snapshot.children(schema.EMAIL_MESSAGE, schema.RELATED_TO_ID, record_id):
        for key in keys_in_text(email.text(schema.TEXT_BODY)):
            if key.startswith(f"{rule_id}:") and key.endswith(f":{record_id}"):
                out[key] = email
    return out


def comment_keys(comments: Iterable[Record], rule_id: str) -> dict[str, Record]:
    """CaseComments written by this rule, by the action key embedded in their body."""
    out: dict[str, Record] = {}
    for comment in comments:
        for key in keys_in_text(comment.text(schema.COMMENT_BODY)):
            if key.startswith(f"{rule_id}:"):
                out[key] = comment
    return out


def primary_contact_id(snapshot: Any, opportunity_id: str) -> str | None:
    """The ContactId of the opportunity's primary contact role (``IsPrimary``), if any."""
    for role in snapshot.children(schema.OPPORTUNITY_CONTACT_ROLE, "OpportunityId", opportunity_id):
        if role.flag("IsPrimary") and role.text("ContactId"):
            return str(role.text("ContactId"))
    return None


def change_digest(changes: Iterable[FieldChange]) -> str:
    """A short digest of an update's new values, for its step key: the same values keep
    their key (never sent twice), new values get a new one."""
    body = json.dumps(sorted((c.field, c.after) for c in changes), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:10]


def check_steps(name: str, given: Iterable[str], expected: Sequence[str]) -> None:
    """A settings table keyed by step (``cadence``) must name each of ``expected`` once and
    nothing else: ValueError saying what is missing and what is unknown."""
    given = list(given)
    missing = [s for s in expected if s not in given]
    unknown = [s for s in given if s not in expected]
    if missing or unknown:
        raise ValueError(
            f"{name}: missing step(s) {missing or 'none'}, unknown step(s) {unknown or 'none'}"
        )


def is_completed(task: Record, org: OrgMapping) -> bool:
    if task.flag(schema.IS_CLOSED):
        return True
    return (task.text(schema.STATUS) or "") in org.tasks.completed_statuses


def complete_task(
    rule: str,
    settings: RuleSettings,
    org: OrgMapping,
    task: Record,
    note: str,
    *,
    step_id: str,
    step_key: str,
    reason: str,
) -> UpdateRecord | None:
    """Complete one of the rule's open Tasks (the first completed status of ``[tasks]``),
    ``note`` appended to its description: a cadence that ended says why on its Tasks."""
    existing = task.text(schema.DESCRIPTION)
    description = f"{existing}\n\n{note}" if existing else note
    return Emit.on(rule, settings, org, task).update(
        step_id,
        {
            schema.STATUS: org.tasks.completed_statuses[0],
            schema.DESCRIPTION: description[: schema.TASK_DESCRIPTION_MAX_CHARS],
        },
        reason=reason,
        step_key=step_key,
    )


def complete_tasks(
    emit: Emit,
    tasks: Mapping[str, Record],
    note_template: str,
    note_key: str,
    as_of: dt.date,
    why: str,
    episode: Callable[[str], object],
) -> list[Action]:
    """Complete the record's open Tasks of a sequence that ended (action key -> Task), each
    with the rendered note (``{as_of}``, ``{why}``) saying why, under the ``exit`` step of
    the episode the Task's key names (``episode(key)``, else the day)."""
    note = render(note_template, {"as_of": as_of.isoformat(), "why": why}, note_key, emit.record.id)
    out: list[Action] = []
    for key, task in sorted(tasks.items()):
        action = complete_task(
            emit.rule,
            emit.settings,
            emit.org,
            task,
            note,
            step_id="exit",
            step_key=f"exit-{episode(key) or as_of}",
            reason=f"{emit.target.label()}: {why}",
        )
        if action is not None:
            out.append(action)
    return out


def logged_response(
    tasks: Iterable[Record],
    org: OrgMapping,
    field: str,
    values: Iterable[str],
    since: dt.date,
) -> tuple[dt.date | None, Record] | None:
    """The first Task a person logged (not one of the worker's own) whose ``field`` is one
    of ``values``, dated on or after ``since`` (an undated one counts): a reply."""
    wanted = set(values)
    for task in tasks:
        if task_key(task, org) or task.text(field) not in wanted:
            continue
        day = task.date(schema.ACTIVITY_DATE) or task.date(schema.CREATED_DATE)
        if day is None or day >= since:
            return day, task
    return None


@functools.lru_cache(maxsize=8192)  # formatted once per number, whichever rules ask
def dialable(raw: str | None, region: str) -> str | None:
    """A phone number as it can be dialled from anywhere (``+1 951-555-1207``), read in the
    numbering plan of ``region`` when it has no +country code; None when the text is not a
    valid number (empty, too short, letters, an unassigned area code)."""
    if not raw or not raw.strip():
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def phone_to_call(record: Record, field: str | None, region: str, where: str) -> str:
    """The number a call Task gives the rep, or what is wrong with it (the call is still
    due: the rep may find the number elsewhere). ``where`` names the record for people."""
    if not field:
        return f"see the {where}"
    raw = record.text(field)
    number = dialable(raw, region)
    if number:
        return number
    if not raw:
        return f"no phone number on the {where} ({field} is empty)"
    return f"no valid phone number on the {where} ({field}={raw!r})"


def append_line(existing: str | None, line: str, max_chars: int) -> str:
    """Append ``line`` to a notes field; when over ``max_chars`` drop the oldest lines.

    The newest line always survives (cut with an ellipsis if it alone is too long).
    """
    line = line.strip()
    if len(line) > max_chars:
        return line[: max_chars - 1] + "…"
    lines = [ln for ln in (existing or "").splitlines() if ln.strip()]
    lines.append(line)
    while len("\n".join(lines)) > max_chars:
        lines.pop(0)
    return "\n".join(lines)


def render(
    template: str, values: Mapping[str, Any], name: str, record_id: str | None = None
) -> str:
    """Fill ``{placeholder}`` fields; a missing or empty value is an error, never a blank."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(name, f"malformed template: {exc}", record_id) from None
    for _, placeholder, _, _ in parsed:
        if placeholder is None:
            continue
        value = values.get(placeholder)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TemplateError(name, placeholder, record_id)
    return template.format_map(dict(values))


def add_months(day: dt.date, months: int) -> dt.date:
    """Calendar months, clamped to the month's end (Jan 31 + 1 month = Feb 28/29)."""
    result: dt.date = day + relativedelta(months=months)
    return result


def round_robin(
    members: Sequence[str],
    assigned: Iterable[Record],
    new: Iterable[Record],
    *,
    owner_field: str = schema.OWNER_ID,
    order_field: str = schema.CREATED_DATE,
) -> list[tuple[Record, str]]:
    """Each new record with the member whose turn it is, in rotation order.

    The rotation is ``members`` as given (callers pass a stable order: a queue's members
    by Id, a territory's users by name). Whose turn it is comes from the org's own records,
    so a lost database never changes it: the turn after the owner of the latest record of
    ``assigned`` owned by a member (latest by ``order_field``, then by Id); the first member
    when none is. New records are dealt out oldest first (``order_field``, then Id).
    """
    if not members:
        raise ValueError("round robin over no members")
    rotation = list(dict.fromkeys(members))
    position = {member: i for i, member in enumerate(rotation)}
    owned = [r for r in assigned if r.text(owner_field) in position]
    turn = 0
    if owned:
        latest = max(owned, key=lambda r: (_order(r, order_field), r.id))
        turn = (position[str(latest.text(owner_field))] + 1) % len(rotation)
    out = []
    for record in sorted(new, key=lambda r: (_order(r, order_field), r.id)):
        out.append((record, rotation[turn]))
        turn = (turn + 1) % len(rotation)
    return out


def _order(record: Record, name: str) -> dt.datetime:
    """A record's place in time (a datetime field, or a date at midnight UTC); a record
    without one sorts first."""
    return record.datetime(name) or _NEVER


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Emit:
    """Builds one record's actions with the rule's metadata filled in."""

    rule: str
    settings: RuleSettings
    org: OrgMapping
    record: Record
    target: RecordRef

    @classmethod
    def on(cls, rule: str, settings: RuleSettings, org: OrgMapping, record: Record) -> Emit:
        return cls(rule, settings, org, record, record.ref(org.name_field(record.sobject)))

    def key(self, step_key: str) -> str:
        return make_key(self.rule, step_key, self.record.id)

    def _meta(self, step_id: str, step_key: str | None, reason: str) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "sop": self.settings.sop_file,
            "step": self.settings.step_label(step_id),
            "target": self.target,
            "reason": reason,
            "key": self.key(step_key or step_id),
            "auto_assign": step_id in self.settings.assignment_rule_steps,
        }

    def task(
        self,
        step_id: str,
        *,
        subject: str,
        description: str,
        reason: str,
        due: dt.date | None = None,
        due_at: dt.datetime | None = None,
        channel: Channel = "task",
        owner_id: str | None = None,
        who_id: str | None = None,
        what_id: str | None = None,
        high_priority: bool = False,
        step_key: str | None = None,
    ) -> CreateTask:
        """A Task on the record: on WhoId for a Lead or Contact, else on WhatId; due on
        ``due``, or at ``due_at`` (aware) on its date in the org's time zone."""
        meta = self._meta(step_id, step_key, reason)
        tasks = self.org.tasks
        if due_at is not None:
            due_at = due_at.astimezone(self.org.org.zone)
            due = due or due_at.date()
        if due is None:
            raise TypeError("a Task needs a due date or a due instant")
        if self.record.sobject in (schema.LEAD, "Contact"):
            who_id = who_id or self.record.id
        else:
            what_id = what_id or self.record.id
        task_type, subtype = {
            "call": (tasks.call_type, tasks.call_subtype),
            "email": (tasks.email_type, tasks.email_subtype),
            "task": (None, tasks.task_subtype),
        }[channel]
        body = description
        fields: dict[str, Any] = {
            schema.STATUS: tasks.open_status,
            schema.PRIORITY: tasks.high_priority if high_priority else tasks.priority,
            schema.TASK_SUBTYPE: subtype,
        }
        if task_type:
            fields[tasks.type_field] = task_type
        if due_at is not None and tasks.due_time_field:
            fields[tasks.due_time_field] = format_sf_datetime(due_at)
            if tasks.due_time_field == schema.REMINDER_DATETIME:
                fields[schema.IS_REMINDER_SET] = True
        if self.org.org.task_key_field:
            fields[self.org.org.task_key_field] = meta["key"]
        else:
            body = with_key_marker(description, meta["key"])
        owner = owner_id or self.record.text(schema.OWNER_ID)
        return CreateTask(
            **meta,
            subject=subject,
            description=body,
            due=due,
            due_at=due_at,
            owner_id=owner,
            what_id=what_id,
            who_id=who_id,
            fields=fields,
        )

    def changes(self, values: Mapping[str, Any]) -> tuple[FieldChange, ...]:
        out = []
        for name, value in values.items():
            before = self.record.get(name)
            if before != value:
                out.append(FieldChange(name, before, value))
        return tuple(out)

    def update(
        self, step_id: str, values: Mapping[str, Any], *, reason: str, step_key: str | None = None
    ) -> UpdateRecord | None:
        """Set fields; ``None`` when every field already holds its new value."""
        changes = self.changes(values)
        if not changes:
            return None
        return UpdateRecord(**self._meta(step_id, step_key, reason), changes=changes)

    def close(
        self, step_id: str, values: Mapping[str, Any], *, reason: str, step_key: str | None = None
    ) -> CloseRecord | None:
        changes = self.changes(values)
        if not changes:
            return None
        return CloseRecord(**self._meta(step_id, step_key, reason), changes=changes)

    def comment(
        self,
        step_id: str,
        body: str,
        *,
        reason: str,
        published: bool = False,
        step_key: str | None = None,
    ) -> AddCaseComment:
        meta = self._meta(step_id, step_key, reason)
        body = with_key_marker(body, meta["key"])
        return AddCaseComment(**meta, body=body, published=published)

    def email(
        self,
        step_id: str,
        *,
        to_address: str,
        subject: str,
        body: str,
        reason: str,
        step_key: str | None = None,
    ) -> SendEmail:
        """An email logged on the record, its action key at the end of the body: Salesforce
        keeps the body in the logged Task or EmailMessage, where the key is found again."""
        meta = self._meta(step_id, step_key, reason)
        return SendEmail(
            **meta,
            to_address=to_address,
            subject=subject,
            body=with_key_marker(body, meta["key"]),
            log_on_id=self.record.id,
        )

    def add_campaign_member(
        self,
        step_id: str,
        *,
        campaign_id: str,
        member_id: str,
        reason: str,
        status: str | None = None,
        step_key: str | None = None,
    ) -> AddCampaignMember:
        """A Contact or Lead added to a Campaign (Salesforce keeps one membership per
        person and campaign, so a repeat is done, never a second member)."""
        return AddCampaignMember(
            **self._meta(step_id, step_key, reason),
            campaign_id=campaign_id,
            member_id=member_id,
            status=status,
        )

    def submit_approval(
        self,
        step_id: str,
        *,
        process: str,
        approver_ids: Sequence[str],
        comments: str,
        reason: str,
        submitter_id: str | None = None,
        step_key: str | None = None,
    ) -> SubmitApproval:
        """A submission of the record to an approval process, its key at the end of the
        comments (kept on the instance's first step, where the submission is found again)."""
        meta = self._meta(step_id, step_key, reason)
        return SubmitApproval(
            **meta,
            process=process,
            approver_ids=tuple(approver_ids),
            comments=with_key_marker(comments, meta["key"]),
            submitter_id=submitter_id,
        )

    def merge(
        self,
        step_id: str,
        *,
        victim_ids: Sequence[str],
        victim_stamps: Mapping[str, str | None],
        master_values: Mapping[str, Any],
        snapshot_fields: Sequence[str],
        reason: str,
        step_key: str | None = None,
    ) -> MergeRecords:
        """A merge of ``victim_ids`` (one or two) into the record (SOAP ``merge()``)."""
        return MergeRecords(
            **self._meta(step_id, step_key, reason),
            victim_ids=tuple(victim_ids),
            victim_stamps=dict(victim_stamps),
            master_values=dict(master_values),
            snapshot_fields=tuple(snapshot_fields),
        )

    def convert(
        self,
        step_id: str,
        *,
        converted_status: str,
        reason: str,
        opportunity_name: str | None = None,
        opportunity_values: Mapping[str, Any] | None = None,
        step_key: str | None = None,
    ) -> ConvertLead:
        return ConvertLead(
            **self._meta(step_id, step_key, reason),
            converted_status=converted_status,
            create_opportunity=True,
            opportunity_name=opportunity_name,
            owner_id=self.record.text(schema.OWNER_ID),
            opportunity_values=dict(opportunity_values or {}),
        )
