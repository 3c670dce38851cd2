"""Discount approvals by band (SOP 004, Sales Process SOP, Stage 5: Negotiation, "Approval
Matrix"), and the machinery the campaign budget rule shares (:mod:`.campaign_budgets`).

A record's value (an opportunity's discount, a campaign's budget) falls in one band of the
mapping's ``bands``: half-open intervals, each band ending at ``up_to`` (included) or
``below`` (excluded), the next one starting where it ends, the last one open above. The band
names its approver: the record's owner (within the owner's authority: nothing to ask), the
owner's manager (``User.ManagerId``), or a user the mapping names (``approvers``).

With ``approval_process`` set, the record is submitted to that approval process through the
REST ``process/approvals`` resource, the approver as the next approver; otherwise the
approver gets a Task and the record's ``required_level_field`` says which level must
approve. Either way a value is asked about once: the state comes from the org, never from
the worker's database. A submission carries its action key (band and value) in its comments,
which Salesforce keeps on the approval's first step (``ProcessInstanceStep.Comments``); a
Task carries it in its key field. A record with an approval pending is not submitted again
(Salesforce would refuse it, ``ALREADY_IN_PROCESS``) until that approval is decided; a new
value or band is a new request.

Bad input is said, not guessed: a negative value, and a value on the wrong scale (a fraction
such as 0.15 where the field holds percents, ``value_scale = "percent"``, or 15 where it holds
fractions) are errors for that record; an empty value needs no approval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.keys import key_marker
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import Emit, is_completed, render, worker_tasks

RULE_ID = "deal_approvals"
STEPS = ("submit", "request", "level")

OWNER = "owner"
MANAGER = "manager"
PENDING = "Pending"

# What every template of these rules may use.
_VALUES = frozenset({"name", "value", "band", "level", "approver", "owner", "field"})
_Text = Annotated[str, Placeholders(_VALUES)]


class Band(StrictModel):
    """One interval of the approval matrix and who approves in it."""

    approver: str = Field(
        description="'owner', 'manager' (the owner's User.ManagerId) or a key of approvers."
    )
    level: Annotated[str, ValuesOf("required_level_field")] = Field(
        description="The SOP's name for the approver (written to required_level_field)."
    )
    up_to: Decimal | None = Field(default=None, description="The band ends here, included.")
    below: Decimal | None = Field(default=None, description="The band ends before this.")

    def holds(self, value: Decimal) -> bool:
        if self.up_to is not None:
            return value <= self.up_to
        if self.below is not None:
            return value < self.below
        return True

    @property
    def bound(self) -> Decimal | None:
        return self.up_to if self.up_to is not None else self.below

    def label(self, lower: Band | None, unit: str) -> str:
        """``(10%, 20%]``-style text for people."""
        if lower is None:
            start = f"[{_show(Decimal(0), unit)}"
        else:
            start = f"{'(' if lower.up_to is not None else '['}{_show(lower.bound, unit)}"
        if self.up_to is not None:
            return f"{start}, {_show(self.up_to, unit)}]"
        if self.below is not None:
            return f"{start}, {_show(self.below, unit)})"
        return f"{start}, ∞)"


class ApprovalSettings(RuleSettings):
    """What a by-band approval rule reads from its mapping section."""

    required_steps: ClassVar[tuple[str, ...]] = STEPS
    scope_key: ClassVar[str] = "scope"
    reads: ClassVar = {"sobject": (schema.OWNER_ID,), schema.USER: ("IsActive", "ManagerId")}

    sobject: str = Field(description="The object whose records are approved.")
    value_field: Annotated[str, FieldOf("sobject")] = Field(
        description="The number approved by band (discount, budget)."
    )
    value_scale: Literal["percent", "fraction", "amount"] = Field(
        description="How the field holds the value: 'percent' (15 is 15%), 'fraction' (0.15 "
        "is 15%; bands are still written in percent) or 'amount' (currency, as is)."
    )
    bands: tuple[Band, ...] = Field(min_length=1)
    approvers: dict[str, str] = Field(
        default_factory=dict, description="Approver name -> User Id (a VP, the CEO, ...)."
    )
    approval_process: str = Field(
        default="",
        description="Developer name of the approval process records are submitted to; empty: "
        "a Task to the approver and required_level_field instead.",
    )
    submit_as_owner: bool = Field(
        default=True, description="Submit on the owner's behalf (contextActorId)."
    )
    required_level_field: Annotated[str, FieldOf("sobject", write=True)] = Field(
        default="",
        description="Field set to the band's level when no approval process is used.",
    )
    closed_field: Annotated[str, FieldOf("sobject")] = Field(
        default="", description="Checkbox that ends approvals (IsClosed); empty: none."
    )
    task_due_business_days: int = Field(default=1, ge=0)
    comments: _Text
    task_subject: _Text
    task_description: _Text

    @model_validator(mode="after")
    def _bands_in_order(self) -> ApprovalSettings:
        last = len(self.bands) - 1
        previous: Decimal | None = None
        for i, band in enumerate(self.bands):
            given = [b for b in (band.up_to, band.below) if b is not None]
            if i < last and len(given) != 1:
                raise ValueError(f"bands[{i}]: give exactly one of up_to and below")
            if i == last and given:
                raise ValueError(f"bands[{i}]: the last band is open above (no up_to/below)")
            if given and previous is not None and given[0] <= previous:
                raise ValueError(f"bands[{i}]: its end must be above the band before it")
            if given:
                previous = given[0]
            if band.approver not in (OWNER, MANAGER) and band.approver not in self.approvers:
                raise ValueError(
                    f"bands[{i}].approver: {band.approver!r} is not 'owner', 'manager' or a "
                    f"key of approvers ({', '.join(self.approvers) or 'none given'})"
                )
        if not self.approval_process and not self.required_level_field:
            raise ValueError("give approval_process, or required_level_field for the Task way")
        return self

    @property
    def scope(self) -> Mapping[str, tuple[str, ...]]:
        scope: Mapping[str, tuple[str, ...]] = getattr(self, self.scope_key)
        return scope

    @property
    def unit(self) -> str:
        return "" if self.value_scale == "amount" else "%"

    def needs(self) -> dict[str, set[str]]:
        """Beside the annotated settings: the approval history, when records are submitted
        to an approval process (its instances and their steps' comments)."""
        out = super().needs()
        if self.approval_process:
            out[schema.PROCESS_INSTANCE] = {schema.TARGET_OBJECT_ID, schema.STATUS}
            out[schema.PROCESS_INSTANCE_STEP] = {
                schema.PROCESS_INSTANCE_ID,
                schema.STEP_STATUS,
                schema.COMMENTS,
            }
        return out


class DealApprovalsSettings(ApprovalSettings):
    scope_key: ClassVar[str] = "opportunity_scope"

    opportunity_scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = Field(
        default_factory=dict,
        description="Opportunity field (dotted paths allowed) -> allowed values, ANDed.",
    )


@dataclass(frozen=True)
class Reading:
    """The value as the SOP's bands read it, and its band."""

    value: Decimal  # in band units: percent or currency
    index: int
    band: Band
    label: str


def candidates(snapshot: Snapshot, settings: ApprovalSettings, org: OrgMapping) -> Iterable[Record]:
    return snapshot.where(settings.sobject, settings.scope)


def read_value(record: Record, s: ApprovalSettings) -> Reading | str | None:
    """The record's band, None for an empty value, or what is wrong with the value."""
    raw = record.number(s.value_field)
    if raw is None:
        return None
    shown = f"{s.value_field} = {raw}"
    if raw < 0:
        return f"{shown} is negative: no band holds it; correct the value"
    value = raw
    if s.value_scale == "percent" and 0 < raw < 1:
        return (
            f"{shown} reads as a fraction ({_plain(raw * 100)}%?) but value_scale = 'percent' "
            f"(15 is 15%): correct the value, or set value_scale = 'fraction'"
        )
    if s.value_scale == "fraction":
        if raw > 1:
            return (
                f"{shown} reads as a percent but value_scale = 'fraction' (0.15 is 15%): "
                f"correct the value, or set value_scale = 'percent'"
            )
        value = raw * 100
    for i, band in enumerate(s.bands):
        if band.holds(value):
            lower = s.bands[i - 1] if i else None
            return Reading(value, i, band, band.label(lower, s.unit))
    raise AssertionError("the last band is open above")  # pragma: no cover


def decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: ApprovalSettings, org: OrgMapping
) -> Evaluation:
    return decide_approval(RULE_ID, record, snapshot, at, s, org)


def decide_approval(
    rule_id: str,
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: ApprovalSettings,
    org: OrgMapping,
) -> Evaluation:
    """One record's band, approver and approval state (see the module's docstring)."""
    emit = Emit.on(rule_id, s, org, record)

    def verdict(v: Verdict, why: str, actions: Iterable[Action | None] = ()) -> Evaluation:
        return _evaluation(emit, v, why, actions)

    if s.closed_field and record.flag(s.closed_field):
        return verdict(Verdict.EXCLUDED, f"excluded because {s.closed_field} is true")
    reading = read_value(record, s)
    if reading is None:
        return verdict(Verdict.EXCLUDED, f"{s.value_field} is empty: nothing to approve")
    if isinstance(reading, str):
        return verdict(Verdict.ERROR, reading)
    value = _plain(reading.value)
    band_text = f"{s.value_field} {_show(reading.value, s.unit)}: band {reading.label}"
    owner = record.text(schema.OWNER_ID)
    if reading.band.approver == OWNER:
        level = _level_update(emit, s, reading, value)
        return verdict(
            Verdict.DONE,
            f"{band_text}, {reading.band.level} (the owner) approves: nothing to ask",
            (level,),
        )
    approver = _approver(record, snapshot, s, reading.band, owner)
    values = {
        "name": emit.target.name or record.id,
        "value": _show(reading.value, s.unit),
        "band": reading.label,
        "level": reading.band.level,
        "approver": approver,
        "owner": owner,
        "field": s.value_field,
    }
    where = f"rules.{rule_id}"
    step = f"{_slug(reading.band.approver)}-{value}"
    if s.approval_process:
        return _by_process(emit, s, snapshot, record, step, band_text, values, owner)
    task_key = emit.key(f"request-{step}")
    task = worker_tasks(snapshot, record.id, rule_id, org).get(task_key)
    level = _level_update(emit, s, reading, value)
    if task is not None:
        state = "done" if is_completed(task, org) else "open"
        return verdict(
            Verdict.DONE,
            f"{band_text}; {reading.band.level} ({approver}) asked by Task "
            f"{task.text(schema.SUBJECT)!r} ({state})",
            (level,),
        )
    request = emit.task(
        "request",
        subject=render(s.task_subject, values, f"{where}.task_subject", record.id),
        description=render(s.task_description, values, f"{where}.task_description", record.id),
        reason=f"{band_text}: {reading.band.level} approves",
        due=org.calendar.add_days(at.date, s.task_due_business_days),
        owner_id=approver,
        step_key=f"request-{step}",
    )
    return verdict(
        Verdict.ACT, f"{band_text}: ask {reading.band.level} ({approver})", (level, request)
    )


def _by_process(
    emit: Emit,
    s: ApprovalSettings,
    snapshot: Snapshot,
    record: Record,
    step: str,
    band_text: str,
    values: Mapping[str, object],
    owner: str | None,
) -> Evaluation:
    def verdict(v: Verdict, why: str, actions: Iterable[Action | None] = ()) -> Evaluation:
        return _evaluation(emit, v, why, actions)

    key = emit.key(f"submit-{step}")
    instances = snapshot.children(schema.PROCESS_INSTANCE, schema.TARGET_OBJECT_ID, record.id)
    ours = submitted(snapshot, instances, key)
    level = values["level"]
    if ours is not None:
        return verdict(
            Verdict.DONE,
            f"{band_text}; submitted to {s.approval_process} for {level}: "
            f"{ours.text(schema.STATUS) or 'status unknown'} (instance {ours.id})",
        )
    pending = [i for i in instances if i.text(schema.STATUS) == PENDING]
    if pending:
        return verdict(
            Verdict.NOT_DUE,
            f"{band_text}; an earlier approval is pending (instance {pending[0].id}): "
            f"this value is submitted once it is decided",
        )
    submission = emit.submit_approval(
        "submit",
        process=s.approval_process,
        approver_ids=(str(values["approver"]),),
        comments=render(s.comments, values, f"rules.{emit.rule}.comments", record.id),
        reason=f"{band_text}: {level} approves",
        submitter_id=owner if s.submit_as_owner else None,
        step_key=f"submit-{step}",
    )
    return verdict(
        Verdict.ACT, f"{band_text}: submit to {s.approval_process} for {level}", (submission,)
    )


def _evaluation(
    emit: Emit, v: Verdict, why: str, actions: Iterable[Action | None] = ()
) -> Evaluation:
    acts = tuple(a for a in actions if a is not None)
    return Evaluation(
        rule=emit.rule,
        target=emit.target,
        verdict=Verdict.ACT if acts else v,
        why=why,
        actions=acts,
    )


def submitted(snapshot: Snapshot, instances: Iterable[Record], key: str) -> Record | None:
    """The approval instance whose submission carried ``key`` in its comments."""
    marker = key_marker(key)
    for instance in instances:
        for step in snapshot.children(
            schema.PROCESS_INSTANCE_STEP, schema.PROCESS_INSTANCE_ID, instance.id
        ):
            if marker in (step.text(schema.COMMENTS) or ""):
                return instance
    return None


def _approver(
    record: Record, snapshot: Snapshot, s: ApprovalSettings, band: Band, owner: str | None
) -> str:
    if band.approver == MANAGER:
        user = snapshot.get(owner)
        if user is None:
            raise RecordError(record.id, schema.OWNER_ID, f"owner {owner} was not read (User)")
        manager = user.text("ManagerId")
        if manager is None:
            raise RecordError(
                record.id, schema.OWNER_ID, f"owner {owner} has no manager (User.ManagerId)"
            )
        approver = manager
    else:
        approver = s.approvers[band.approver]
    user = snapshot.get(approver)
    if user is not None and user.get("IsActive") is False:
        raise RecordError(record.id, schema.OWNER_ID, f"approver {approver} is inactive")
    return approver


def _level_update(emit: Emit, s: ApprovalSettings, reading: Reading, value: str) -> Action | None:
    if s.approval_process or not s.required_level_field:
        return None
    return emit.update(
        "level",
        {s.required_level_field: reading.band.level},
        reason=f"{s.value_field} {_show(reading.value, s.unit)} is in band {reading.label}",
        step_key=f"level-{_slug(reading.band.approver)}-{value}",
    )


def _plain(value: Decimal) -> str:
    """A number as it goes into a key: ``15``, ``10.01``, ``25000``."""
    text = f"{value.normalize():f}"
    return text


def _show(value: Decimal | None, unit: str) -> str:
    if value is None:
        return ""
    if unit == "%":
        return f"{_plain(value)}%"
    return f"${value:,.2f}".replace(".00", "")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


RULE: Rule[DealApprovalsSettings] = Rule(
    id=RULE_ID,
    title="Discount approvals by band",
    settings_model=DealApprovalsSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
