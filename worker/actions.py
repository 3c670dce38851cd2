"""Typed actions: what a rule asks to change, and the result of trying.

Every action carries where it comes from (rule, SOP file, step), its target, a human
reason, and a deterministic ``key`` (rule + step + record) that makes it exactly-once:
the ledger never applies a key twice, created records carry the key in an external-id
field (or in their text), and a rerun of the same day yields the same keys.

Actions serialise to plain JSON (``to_dict``/``action_from_dict``) for plan files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, ClassVar

import orjson

from worker.errors import ApiLimitError, AuthError, PlanFileError, StopRequested
from worker.records import RecordRef


class ActionKind(StrEnum):
    UPDATE = "update"
    CLOSE = "close"
    CREATE_TASK = "create_task"
    CASE_COMMENT = "case_comment"
    SEND_EMAIL = "send_email"
    CONVERT_LEAD = "convert_lead"
    SUBMIT_APPROVAL = "submit_approval"
    MERGE = "merge"
    ADD_CAMPAIGN_MEMBER = "add_campaign_member"


class Outcome(StrEnum):
    """Where an action ends up in the ledger."""

    PLANNED = "planned"
    SENT = "sent"  # handed to Salesforce, result not yet recorded
    APPLIED = "applied"
    FAILED = "failed"
    CONFLICT = "conflict"
    SKIPPED = "skipped"
    WOULD_APPLY = "would_apply"  # a dry run's answer; never in the ledger


# Error codes of a result handed back ``PLANNED`` because the sink stopped before sending
# it: the run stops starting new work and the next run plans the action again.
STOPPED_API_LIMIT = "API_LIMIT"  # the org's daily allowance reached the reserve
STOPPED_AUTH = "AUTH_STOPPED"  # the session ended and could not be renewed
STOPPED_SIGNAL = "STOP_REQUESTED"  # SIGTERM or SIGINT: the worker is shutting down
StopCause = ApiLimitError | AuthError | StopRequested


def stop_code(cause: StopCause) -> str:
    """The error code of the actions a stop left unsent."""
    if isinstance(cause, ApiLimitError):
        return STOPPED_API_LIMIT
    return STOPPED_AUTH if isinstance(cause, AuthError) else STOPPED_SIGNAL


def make_key(rule: str, step: str, record_id: str) -> str:
    """The deterministic key of a rule's step on one record."""
    return f"{rule}:{step}:{record_id}"


@dataclass(frozen=True)
class FieldChange:
    field: str
    before: Any
    after: Any


@dataclass(frozen=True, kw_only=True)
class Action:
    """Common metadata of every action."""

    kind: ClassVar[ActionKind]

    rule: str
    sop: str
    step: str
    target: RecordRef
    reason: str
    key: str
    # Let the org's active assignment rules run on this write (``Sforce-Auto-Assign: TRUE``);
    # off unless the rule's mapping lists the step in ``assignment_rule_steps``.
    auto_assign: bool = False

    def summary(self) -> str:
        """One line saying what the action does, for tables."""
        raise NotImplementedError

    def checked_records(self) -> tuple[RecordRef, ...]:
        """The records read again before writing: one deleted, converted or changed since
        it was read makes the action a conflict (the target; a merge adds its victims)."""
        return (self.target,)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(self)  # field by field: no deep copy (asdict's)
        out["kind"] = self.kind.value
        return out

    @property
    def json_text(self) -> str:
        """:meth:`to_dict` as compact JSON text with sorted keys (orjson: the ledger writes it
        at each of an action's steps, planned, sent and its outcome). Made each time, never
        kept: a plan of 20,000 actions would otherwise hold 16 MB of it through the apply."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_SORT_KEYS).decode()


@dataclass(frozen=True, kw_only=True)
class UpdateRecord(Action):
    """Set fields on the target record."""

    kind: ClassVar[ActionKind] = ActionKind.UPDATE
    changes: tuple[FieldChange, ...]

    def values(self) -> dict[str, Any]:
        return {c.field: c.after for c in self.changes}

    def summary(self) -> str:
        return "; ".join(
            f"{c.field}: {_short(c.before)} -> {_short(c.after)}" for c in self.changes
        )


@dataclass(frozen=True, kw_only=True)
class CloseRecord(UpdateRecord):
    """Set the fields that close the target (status, reason, notes)."""

    kind: ClassVar[ActionKind] = ActionKind.CLOSE

    def summary(self) -> str:
        return "close: " + super().summary()


@dataclass(frozen=True, kw_only=True)
class CreateTask(Action):
    """Create a Task; ``fields`` are the Task's field values (API name -> value).

    ``due`` is the Task's ActivityDate (a date in Salesforce); ``due_at``, when the step has
    a minute-level deadline, the instant in the org's time zone (written to the mapping's
    ``[tasks] due_time_field``)."""

    kind: ClassVar[ActionKind] = ActionKind.CREATE_TASK
    subject: str
    description: str
    due: dt.date
    owner_id: str | None
    what_id: str | None
    who_id: str | None
    fields: Mapping[str, Any]
    due_at: dt.datetime | None = None

    def summary(self) -> str:
        return f"new Task {self.subject!r} due {due_text(self.due, self.due_at)}"


def due_text(day: dt.date, at: dt.datetime | None = None) -> str:
    """``2026-11-23``, or ``2026-11-23 09:03-06:00`` for a minute-level deadline (with its
    UTC offset, which a plan file keeps where a zone name would be lost)."""
    return at.isoformat(sep=" ", timespec="minutes") if at else day.isoformat()


@dataclass(frozen=True, kw_only=True)
class AddCaseComment(Action):
    """Add a comment to the target Case (internal unless ``published``)."""

    kind: ClassVar[ActionKind] = ActionKind.CASE_COMMENT
    body: str
    published: bool = False

    def summary(self) -> str:
        scope = "public" if self.published else "internal"
        return f"{scope} comment {_short(self.body.splitlines()[0] if self.body else '')}"


@dataclass(frozen=True, kw_only=True)
class SendEmail(Action):
    """Send an email through Salesforce's standard ``emailSimple`` action, logged on a record."""

    kind: ClassVar[ActionKind] = ActionKind.SEND_EMAIL
    to_address: str
    subject: str
    body: str
    log_on_id: str | None = None
    sender_type: str | None = None
    sender_address: str | None = None

    def summary(self) -> str:
        return f"email {self.subject!r} to {self.to_address}"


@dataclass(frozen=True, kw_only=True)
class ConvertLead(Action):
    """Convert the target Lead (SOAP ``convertLead``) into account, contact and opportunity."""

    kind: ClassVar[ActionKind] = ActionKind.CONVERT_LEAD
    converted_status: str
    create_opportunity: bool = True
    opportunity_name: str | None = None
    owner_id: str | None = None
    # Set on the new opportunity right after the conversion (convertLead cannot set them).
    opportunity_values: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        opp = f", opportunity {self.opportunity_name!r}" if self.create_opportunity else ""
        values = ", ".join(f"{k}={v}" for k, v in self.opportunity_values.items())
        return f"convert lead ({self.converted_status}{opp}{f' with {values}' if values else ''})"


@dataclass(frozen=True, kw_only=True)
class SubmitApproval(Action):
    """Submit the target to an approval process (REST ``process/approvals``, actionType
    ``Submit``). ``comments`` end with the action key's marker: Salesforce keeps them on
    the instance's first step (``ProcessInstanceStep.Comments``), where the submission is
    found again."""

    kind: ClassVar[ActionKind] = ActionKind.SUBMIT_APPROVAL
    process: str  # processDefinitionNameOrId: the approval process's developer name
    approver_ids: tuple[str, ...]  # nextApproverIds
    comments: str
    submitter_id: str | None = None  # contextActorId: submitted on this user's behalf

    def summary(self) -> str:
        to = ", ".join(self.approver_ids) or "the process's approver"
        return f"submit for approval ({self.process}) to {to}"


@dataclass(frozen=True, kw_only=True)
class MergeRecords(Action):
    """Merge one or two records into the target (SOAP ``merge()``: at most three records a
    request, the master included), after writing a snapshot of what the merge changes to the
    org. ``victim_stamps`` are the victims' ``SystemModstamp`` as planned: a victim changed
    since is not merged. ``master_values`` are set on the master by the merge
    (survivorship); ``snapshot_fields`` are the fields the snapshot keeps of every record."""

    kind: ClassVar[ActionKind] = ActionKind.MERGE
    victim_ids: tuple[str, ...]
    victim_stamps: Mapping[str, str | None] = field(default_factory=dict)
    master_values: Mapping[str, Any] = field(default_factory=dict)
    snapshot_fields: tuple[str, ...] = ()

    def checked_records(self) -> tuple[RecordRef, ...]:
        return (
            self.target,
            *(
                RecordRef(self.target.sobject, v, stamp=self.victim_stamps.get(v))
                for v in self.victim_ids
            ),
        )

    def summary(self) -> str:
        values = ", ".join(f"{k}={_short(v, 30)}" for k, v in self.master_values.items())
        kept = f", master keeps {values}" if values else ""
        return f"merge {', '.join(self.victim_ids)} into this record{kept}"


@dataclass(frozen=True, kw_only=True)
class AddCampaignMember(Action):
    """Add a Contact or a Lead (``member_id``) to a Campaign: a CampaignMember create.
    Salesforce keeps one membership per person and campaign and refuses a second
    (``DUPLICATE_VALUE``): a person already a member is this action done, so a repeat or a
    retry after a lost answer never adds anyone twice."""

    kind: ClassVar[ActionKind] = ActionKind.ADD_CAMPAIGN_MEMBER
    campaign_id: str
    member_id: str
    status: str | None = None  # the membership's Status; None: the campaign's default

    def summary(self) -> str:
        status = f" as {self.status!r}" if self.status else ""
        return f"add {self.member_id} to campaign {self.campaign_id}{status}"


ACTION_TYPES: dict[ActionKind, type[Action]] = {
    cls.kind: cls
    for cls in (
        UpdateRecord,
        CloseRecord,
        CreateTask,
        AddCaseComment,
        SendEmail,
        ConvertLead,
        SubmitApproval,
        MergeRecords,
        AddCampaignMember,
    )
}


@dataclass(frozen=True)
class ActionResult:
    """What happened to one action when a sink tried it."""

    key: str
    outcome: Outcome
    sf_id: str | None = None
    error_code: str | None = None
    message: str | None = None


def action_from_dict(data: Mapping[str, Any]) -> Action:
    """Rebuild an action from :meth:`Action.to_dict` output (a plan file entry)."""
    try:
        cls = ACTION_TYPES[ActionKind(data["kind"])]
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            raw = data[f.name]
            if f.name == "target":
                raw = RecordRef(**raw)
            elif f.name == "changes":
                raw = tuple(FieldChange(**c) for c in raw)
            elif f.name == "due":
                raw = dt.date.fromisoformat(raw)
            elif f.name == "due_at" and raw is not None:
                raw = dt.datetime.fromisoformat(raw)
            elif f.name in ("approver_ids", "victim_ids", "snapshot_fields"):
                raw = tuple(raw)
            values[f.name] = raw
        return cls(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"action {data.get('key', '?')!r} is not valid: {exc}") from None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.get(type(value))
        if names is None:
            names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
        return {name: _jsonable(getattr(value, name)) for name in names}
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _short(value: Any, width: int = 60) -> str:
    text = "(empty)" if value in (None, "") else str(value).replace("\n", " / ")
    return text if len(text) <= width else text[: width - 1] + "…"
