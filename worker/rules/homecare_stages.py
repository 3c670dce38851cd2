"""Home-care leads and early opportunities: keep every record moving through its stage.

Implements the SOP named by ``sop_file`` in the ``[rules.homecare_stages]`` mapping section
(the home-care agency's Salesforce Stages SOP). Every status and stage value, field name,
count, spacing and Task text comes from that section; the steps are:

Leads (in scope by ``lead_scope``; converted leads are excluded):

- ``first_contact`` (New Lead): a first-contact call Task for the owner, due the day the lead
  arrives (``CreatedDate`` in the org's ``time_zone``), or today when it arrived earlier.
- ``followup`` (Contact Attempted): the next follow-up call Task ``followup_every_days``
  after the last contact attempt, until the first contact and ``max_contact_followups``
  follow-ups are logged.
  Attempts are call/email Tasks (``attempt_task_types`` / ``attempt_task_subtypes``) that
  are completed (``attempt_count = "completed"``) or any, open ones too (``"any"``).
- ``lead_closeout``: ``closeout_after_days`` after the last of those attempts with no
  conversation (the status never left New/Attempted) the lead is closed
  (``lead_closed_status``, ``lead_closeout_reason``, ``lead_closed_date_field`` = today).
- ``reengage``: a closed lead whose reason is in ``reengage_reasons`` gets a call Task every
  ``reengage_every_months`` calendar months after its closed date (month ends clamp:
  Jan 31 -> Feb 28/29, anchored on the closed date so later months do not drift).
- ``qualify`` (Contact Successful - Pending Qualification, or Qualified with a criterion
  missing): a Task to complete qualification naming what is missing; another one
  ``qualify_every_days`` after the previous one is completed.
- ``budget_guard``: a lead closed as ``financially_unqualified_reason`` with no budget in
  ``budget_field`` is flagged to its owner (the SOP: not closed as financially unqualified
  until the budget is known).
- ``convert`` (Qualified Lead = Opportunity): a lead meeting the three criteria (service area
  by normalised ZIP-5 or city, looking for home care, financially qualified) is converted
  (``convert_enabled``), or its owner gets a Task to convert it.

Opportunities (in scope by ``opportunity_scope``, e.g. ``Type = "Home Care"``):

- ``close_nurture``: an open opportunity below ``minimum_hours`` or declined for one of
  ``decline_reasons`` is closed (``closed_stage``, ``loss_reason_field``, close date today).
- ``nurture``: a closed opportunity with a nurture reason gets a call Task
  ``nurture_first_after_days`` after its close date, then every ``nurture_every_months``.
- ``assessment_followup`` (Assessment Pending, no date yet): a follow-up Task every
  ``assessment_followup_every_days``, up to ``max_assessment_attempts`` attempts.
- ``assessment_closeout``: after those attempts the opportunity is closed
  (``assessment_closeout_reason``) and so moves to nurture.
- ``schedule``: a pending opportunity whose ``assessment_field`` is set moves to
  ``scheduled_stage``.

A Do Not Call / opt-out flag (``lead_opt_out_fields``, ``opportunity_opt_out_fields``) stops
all outreach at once: nothing is created, closed or converted for the record any more (the
budget guard, a note to the owner, still runs). No step creates a Task while a Task of the
same step is still open. Catch-up: a record several touches behind gets the one due now;
the touches and follow-up slots that fell due while the worker was not running are
returned as skipped steps.

Interpretations (each a setting; docs/rules/homecare_stages.md quotes the SOP for each):
"5 follow ups" = 5 attempts after the first contact (6 in all), as "closed out after 5
follow up attempts" counts an opportunity's follow-ups; an attempt is a completed
call/email Task logged by anyone; "every month" is counted from the closed date (or the
first nurture call) so month ends clamp without drifting; an opportunity's attempts are
those since it was created (calls made while it was a lead do not count).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator

from worker import schema
from worker.actions import Action
from worker.declarations import FieldOf, FieldValues, Placeholders, ValuesOf
from worker.errors import RecordError
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, SkippedStep, Verdict
from worker.rules.kit import (
    Channel,
    Emit,
    add_months,
    is_completed,
    phone_to_call,
    render,
    worker_tasks,
)

RULE_ID = "homecare_stages"
STEPS = (
    "first_contact",
    "followup",
    "lead_closeout",
    "reengage",
    "qualify",
    "budget_guard",
    "convert",
    "close_nurture",
    "nurture",
    "assessment_followup",
    "assessment_closeout",
    "schedule",
)


# The templates, each with the placeholders it may use (checked when the mapping is loaded).
# Every Task text may also use {phone}: the record's number to call (``_Ctx.phone``).
def _task_text(*names: str) -> Placeholders:
    return Placeholders(frozenset({*names, "phone"}))


_FirstContactText = Annotated[str, _task_text("name", "status", "created")]
_FollowupText = Annotated[
    str, _task_text("name", "status", "attempt", "max_attempts", "followup", "max_followups")
]
_TouchText = Annotated[str, _task_text("name", "touch", "closed", "reason")]
_QualifyText = Annotated[str, _task_text("name", "status", "missing")]
_BudgetGuardText = Annotated[str, _task_text("name", "reason", "budget_field")]
_ConvertText = Annotated[str, _task_text("name", "status")]
_AssessmentText = Annotated[str, _task_text("name", "stage", "attempt", "max_attempts")]
_OpportunityName = Annotated[str, Placeholders(frozenset({"name"}))]

_ZIP5 = re.compile(r"\d{5}")


class HomecareStagesSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    replaced_keys: ClassVar[Mapping[str, str]] = {
        "max_contact_attempts": "replaced by max_contact_followups: the follow-ups after the "
        "first contact attempt (the SOP's 5 follow-ups are max_contact_followups = 5, 6 "
        "attempts in all; max_contact_attempts = 5 was 4 follow-ups)",
    }

    reads: ClassVar = {
        schema.LEAD: (schema.STATUS, schema.IS_CONVERTED, schema.CREATED_DATE, schema.OWNER_ID),
        "opportunity_sobject": (schema.CREATED_DATE, schema.OWNER_ID),
        schema.TASK: (schema.COMPLETED_DATE,),
    }
    # The lead close-out sets the status.
    updates: ClassVar = {schema.LEAD: (schema.STATUS,)}

    # -- scope -------------------------------------------------------------------------------
    opportunity_sobject: str = Field(default="Opportunity", description="The opportunity object.")
    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1,
        description="Lead field (dotted paths allowed) -> allowed values, ANDed: the "
        "home-care leads, e.g. RecordType.DeveloperName = Home_Care.",
    )
    opportunity_scope: Annotated[
        dict[str, tuple[str, ...]], FieldValues("opportunity_sobject", write=True)
    ] = Field(
        min_length=1,
        description="Opportunity field -> allowed values, ANDed, e.g. Type = Home Care. Must "
        "not overlap other rules' opportunities (payment_followup uses Type = Payment).",
    )
    # -- lead statuses ---------------------------------------------------------------------
    new_statuses: Annotated[tuple[str, ...], ValuesOf(schema.STATUS, sobject=schema.LEAD)] = Field(
        min_length=1, description="New Lead: not contacted."
    )
    attempted_statuses: Annotated[tuple[str, ...], ValuesOf(schema.STATUS, sobject=schema.LEAD)] = (
        Field(min_length=1)
    )
    pending_statuses: Annotated[tuple[str, ...], ValuesOf(schema.STATUS, sobject=schema.LEAD)] = (
        Field(min_length=1, description="Contact Successful - Pending Qualification.")
    )
    qualified_statuses: Annotated[tuple[str, ...], ValuesOf(schema.STATUS, sobject=schema.LEAD)] = (
        Field(default=(), description="Qualified but not yet converted.")
    )
    lead_closed_status: Annotated[str, ValuesOf(schema.STATUS, sobject=schema.LEAD)] = Field(
        description="Status of a closed, unconverted lead."
    )
    lead_reason_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        description="Lead field holding why it was closed."
    )
    lead_closed_date_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        description="Lead date field set on close-out; re-engagement is counted from it."
    )
    lead_closeout_reason: Annotated[str, ValuesOf("lead_reason_field")] = Field(
        description="Reason set after the last contact attempt."
    )
    reengage_reasons: Annotated[tuple[str, ...], ValuesOf("lead_reason_field")] = Field(
        min_length=1, description="Closed reasons that put a lead in monthly re-engagement."
    )
    financially_unqualified_reason: Annotated[str, ValuesOf("lead_reason_field")]
    budget_field: Annotated[str, FieldOf(schema.LEAD)] = Field(
        description="Lead field where the prospect's budget is recorded."
    )
    lead_opt_out_fields: Annotated[tuple[str, ...], FieldOf(schema.LEAD)] = Field(
        min_length=1, description="Lead checkboxes that stop all outreach (DoNotCall, ...)."
    )
    # -- contact attempts ------------------------------------------------------------------
    attempt_count: Literal["completed", "any"] = Field(
        default="completed",
        description="Which call/email Tasks are attempts: completed ones, or any (open too).",
    )
    attempt_task_types: tuple[str, ...] = Field(
        default=(), description="Task Type values that are contact attempts."
    )
    attempt_task_subtypes: Annotated[
        tuple[str, ...], ValuesOf(schema.TASK_SUBTYPE, sobject=schema.TASK)
    ] = Field(
        default=(),
        validate_default=True,
        description="TaskSubtype values that are contact attempts.",
    )
    max_contact_followups: int = Field(
        ge=1,
        description="'5 follow ups before closing out': follow-ups after the first contact "
        "attempt; the lead is closed after this many plus one attempts in all.",
    )
    followup_every_days: int = Field(ge=1, description="Days from one attempt to the next.")
    closeout_after_days: int = Field(
        ge=0, description="Days after the last allowed attempt before closing out."
    )
    reengage_every_months: int = Field(ge=1)
    # -- qualification ---------------------------------------------------------------------
    postal_code_field: Annotated[str, FieldOf(schema.LEAD)]
    city_field: Annotated[str, FieldOf(schema.LEAD)]
    service_area_postal_codes: tuple[str, ...] = Field(
        default=(), description="ZIP codes served; compared on their first 5 digits."
    )
    service_area_cities: tuple[str, ...] = Field(
        default=(),
        validate_default=True,
        description="Cities served; compared trimmed and case-insensitively.",
    )
    looking_for_care_field: Annotated[str, FieldOf(schema.LEAD)] = Field(
        description="Checkbox: looking for home care."
    )
    financially_qualified_field: Annotated[str, FieldOf(schema.LEAD)] = Field(
        description="Checkbox: financially qualified."
    )
    qualify_every_days: int = Field(
        ge=1, description="Days after a completed qualification Task before the next one."
    )
    convert_enabled: bool = Field(
        description="Convert qualified leads (convertLead); false = a Task to convert."
    )
    converted_status: Annotated[str, ValuesOf(schema.STATUS, sobject=schema.LEAD)]
    # -- opportunities ---------------------------------------------------------------------
    stage_field: Annotated[str, FieldOf("opportunity_sobject", write=True)]
    close_date_field: Annotated[str, FieldOf("opportunity_sobject", write=True)]
    pending_stages: Annotated[tuple[str, ...], ValuesOf("stage_field")] = Field(
        min_length=1, description="Assessment Pending."
    )
    scheduled_stage: Annotated[str, ValuesOf("stage_field")] = Field(
        description="Assessment Scheduled."
    )
    closed_stage: Annotated[str, ValuesOf("stage_field")] = Field(
        description="Stage of a closed-out (lost) opportunity."
    )
    loss_reason_field: Annotated[str, FieldOf("opportunity_sobject", write=True)]
    decline_reasons: Annotated[tuple[str, ...], ValuesOf("loss_reason_field")] = Field(
        default=(), description="Reasons (another company, family care) that close + nurture."
    )
    hours_field: Annotated[str, FieldOf("opportunity_sobject")] = Field(
        description="Opportunity field with the hours asked for."
    )
    minimum_hours: Decimal = Field(ge=0, description="The hourly minimum.")
    below_minimum_reason: Annotated[str, ValuesOf("loss_reason_field")]
    assessment_field: Annotated[str, FieldOf("opportunity_sobject")] = Field(
        description="Assessment date/time; set = scheduled."
    )
    max_assessment_attempts: int = Field(ge=1)
    assessment_followup_every_days: int = Field(ge=1)
    assessment_closeout_reason: Annotated[str, ValuesOf("loss_reason_field")]
    opportunity_opt_out_fields: Annotated[tuple[str, ...], FieldOf("opportunity_sobject")] = Field(
        default=()
    )
    lead_phone_field: Annotated[str | None, FieldOf(schema.LEAD)] = Field(
        default=None, description="The lead's number, given to its Tasks as {phone}."
    )
    opportunity_phone_field: Annotated[str | None, FieldOf("opportunity_sobject")] = Field(
        default=None,
        description="The opportunity's number (e.g. Account.Phone), given to its Tasks as {phone}.",
    )
    nurture_first_after_days: int = Field(ge=0, description="'a follow up call three weeks out'.")
    nurture_every_months: int = Field(ge=1)
    # -- texts -----------------------------------------------------------------------------
    first_contact_subject: _FirstContactText
    first_contact_description: _FirstContactText
    followup_subject: _FollowupText
    followup_description: _FollowupText
    reengage_subject: _TouchText
    reengage_description: _TouchText
    qualify_subject: _QualifyText
    qualify_description: _QualifyText
    budget_guard_subject: _BudgetGuardText
    budget_guard_description: _BudgetGuardText
    convert_subject: _ConvertText
    convert_description: _ConvertText
    opportunity_name: _OpportunityName
    nurture_subject: _TouchText
    nurture_description: _TouchText
    assessment_followup_subject: _AssessmentText
    assessment_followup_description: _AssessmentText

    # Cross-field checks sit on the later field, so an error names the key to fix.
    @field_validator("lead_closed_status")
    @classmethod
    def _statuses_distinct(cls, value: str, info: ValidationInfo) -> str:
        groups = ("new_statuses", "attempted_statuses", "pending_statuses", "qualified_statuses")
        seen: dict[str, str] = {}
        for group, statuses in [(g, info.data.get(g, ())) for g in groups] + [
            ("lead_closed_status", (value,))
        ]:
            for status in statuses:
                if status in seen:
                    raise ValueError(f"status {status!r} is in both {seen[status]} and {group}")
                seen[status] = group
        return value

    @field_validator("reengage_reasons")
    @classmethod
    def _closeout_reengages(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        reason = info.data.get("lead_closeout_reason")
        if reason is not None and reason not in value:
            raise ValueError(f"must include lead_closeout_reason {reason!r}")
        return value

    @field_validator("financially_unqualified_reason")
    @classmethod
    def _not_reengaged(cls, value: str, info: ValidationInfo) -> str:
        if value in info.data.get("reengage_reasons", ()):
            raise ValueError("cannot also be one of reengage_reasons")
        return value

    @field_validator("attempt_task_subtypes")
    @classmethod
    def _some_attempt_kind(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and not info.data.get("attempt_task_types"):
            raise ValueError("set attempt_task_types or attempt_task_subtypes")
        return value

    @field_validator("service_area_cities")
    @classmethod
    def _some_area(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and not info.data.get("service_area_postal_codes"):
            raise ValueError("the service area is empty: set postal codes and/or cities")
        return value

    @field_validator("closed_stage")
    @classmethod
    def _stages_distinct(cls, value: str, info: ValidationInfo) -> str:
        stages = (*info.data.get("pending_stages", ()), info.data.get("scheduled_stage"), value)
        if len(set(stages)) != len(stages):
            raise ValueError("pending_stages, scheduled_stage and closed_stage must all differ")
        return value

    @property
    def nurture_reasons(self) -> tuple[str, ...]:
        return (*self.decline_reasons, self.below_minimum_reason, self.assessment_closeout_reason)

    def converted_statuses(self) -> set[str]:
        return {self.converted_status} if self.convert_enabled else set()

    def converted_opportunity_values(self) -> dict[str, str | bool | int]:
        """What a converted lead's new opportunity is given, so this rule picks it up: the
        first value of each plain scope field, and the first pending stage."""
        values: dict[str, str | bool | int] = {
            name: allowed[0]
            for name, allowed in self.opportunity_scope.items()
            if "." not in name and allowed
        }
        values[self.stage_field] = self.pending_stages[0]
        return values


def candidates(
    snapshot: Snapshot, settings: HomecareStagesSettings, org: OrgMapping
) -> Iterable[Record]:
    yield from snapshot.where(schema.LEAD, settings.lead_scope)
    yield from snapshot.where(settings.opportunity_sobject, settings.opportunity_scope)


def decide(
    record: Record,
    snapshot: Snapshot,
    at: AsOf,
    s: HomecareStagesSettings,
    org: OrgMapping,
) -> Evaluation:
    as_of = at.date  # this rule decides by day
    c = _Ctx(record, snapshot, as_of, s, org, Emit.on(RULE_ID, s, org, record))
    if record.sobject == schema.LEAD:
        return _decide_lead(c)
    return _decide_opportunity(c)


# -- context -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ctx:
    """One record's evaluation: the record, its Tasks and the settings."""

    record: Record
    snapshot: Snapshot
    as_of: dt.date
    s: HomecareStagesSettings
    org: OrgMapping
    emit: Emit

    def verdict(self, v: Verdict, why: str, **kw: Any) -> Evaluation:
        return Evaluation(rule=RULE_ID, target=self.emit.target, verdict=v, why=why, **kw)

    def act(
        self, why: str, *actions: Action | None, skipped: Iterable[SkippedStep] = ()
    ) -> Evaluation:
        return self.verdict(
            Verdict.ACT,
            why,
            actions=tuple(a for a in actions if a is not None),
            skipped=tuple(skipped),
        )

    def not_due(self, why: str, next_due: dt.date, step: str) -> Evaluation:
        return self.verdict(
            Verdict.NOT_DUE, why, next_due=next_due, next_step=self.s.step_label(step)
        )

    @property
    def name(self) -> str:
        return self.emit.target.name

    @property
    def phone(self) -> str:
        lead = self.record.sobject == schema.LEAD
        field = self.s.lead_phone_field if lead else self.s.opportunity_phone_field
        where = "lead" if lead else "opportunity"
        return phone_to_call(self.record, field, self.org.org.phone_region, where)

    @cached_property
    def mine(self) -> list[tuple[str, int | None, Record]]:
        """This rule's Tasks on the record: (step id, number or None, Task), oldest first."""
        out: list[tuple[str, int | None, Record]] = []
        for key, task in worker_tasks(self.snapshot, self.record.id, RULE_ID, self.org).items():
            step_key = key.split(":")[1]
            head, _, tail = step_key.rpartition("-")
            if head and tail.isdigit():
                out.append((head, int(tail), task))
            else:
                out.append((step_key, None, task))
        return sorted(out, key=lambda t: (t[1] or 0, t[2].id))

    def tasks_of(self, step: str) -> list[tuple[int | None, Record]]:
        return [(n, task) for s, n, task in self.mine if s == step]

    def last_number(self, step: str) -> int:
        return max((n or 0 for n, _ in self.tasks_of(step)), default=0)

    def open_task(self, *steps: str) -> tuple[str, Record] | None:
        for step, _, task in self.mine:
            if step in steps and not is_completed(task, self.org):
                return step, task
        return None

    def local_day(self, record: Record, name: str) -> dt.date | None:
        """A date, or a datetime's day in the org's time zone."""
        value = record.get(name)
        if isinstance(value, str) and "T" not in value:
            return record.date(name)
        moment = record.datetime(name)
        return moment.astimezone(self.org.org.zone).date() if moment else None

    def created_day(self) -> dt.date:
        day = self.local_day(self.record, schema.CREATED_DATE)
        if day is None:
            raise RecordError(self.record.id, schema.CREATED_DATE, "missing")
        return day

    def task_day(self, task: Record) -> dt.date:
        """When an attempt happened: completed time, else due date, else creation."""
        for name in (schema.COMPLETED_DATE, schema.ACTIVITY_DATE, schema.CREATED_DATE):
            day = self.local_day(task, name)
            if day is not None:
                return day
        return self.as_of

    def attempts(self, since: dt.date | None = None) -> list[tuple[dt.date, Record]]:
        """Contact attempts logged on the record (on or after ``since``), oldest first."""
        s, tasks = self.s, self.org.tasks
        out = []
        for task in self.snapshot.tasks_for(self.record.id):
            kind = task.text(tasks.type_field)
            subtype = task.text(schema.TASK_SUBTYPE)
            if kind not in s.attempt_task_types and subtype not in s.attempt_task_subtypes:
                continue
            if s.attempt_count == "completed" and not is_completed(task, self.org):
                continue
            day = self.task_day(task)
            if since is None or day >= since:
                out.append((day, task))
        return sorted(out, key=lambda a: (a[0], a[1].id))

    def opted_out(self, fields: tuple[str, ...]) -> str | None:
        for name in fields:
            if self.record.flag(name):
                return name
        return None

    def task(
        self,
        step: str,
        step_key: str,
        values: Mapping[str, Any],
        reason: str,
        channel: Channel = "call",
    ) -> Action:
        where = f"rules.{RULE_ID}"
        values = {"phone": self.phone, **values}
        return self.emit.task(
            step,
            subject=render(
                getattr(self.s, f"{step}_subject"),
                values,
                f"{where}.{step}_subject",
                self.record.id,
            ),
            description=render(
                getattr(self.s, f"{step}_description"),
                values,
                f"{where}.{step}_description",
                self.record.id,
            ),
            due=self.as_of,
            reason=reason,
            channel=channel,
            step_key=step_key,
        )

    def waiting(self, found: tuple[str, Record], then: str) -> Evaluation:
        step, task = found
        due = task.date(schema.ACTIVITY_DATE)
        shown = f" (due {due})" if due else ""
        return self.not_due(
            f"open Task {task.text(schema.SUBJECT)!r}{shown} from step "
            f"{self.s.step_label(step)!r}: nothing new until it is completed",
            max(due or self.as_of, self.as_of) + dt.timedelta(days=1),
            then,
        )


# -- leads ---------------------------------------------------------------------------------


def _decide_lead(c: _Ctx) -> Evaluation:
    s, record = c.s, c.record
    if record.flag(schema.IS_CONVERTED):
        return c.verdict(Verdict.EXCLUDED, f"excluded because {schema.IS_CONVERTED}=true")
    status = record.text(schema.STATUS)
    if status == s.lead_closed_status:
        return _closed_lead(c)
    opted = c.opted_out(s.lead_opt_out_fields)
    if opted:
        return c.verdict(
            Verdict.EXCLUDED, f"excluded because {opted}=true: no outreach (status {status!r})"
        )
    if status in s.new_statuses or status in s.attempted_statuses:
        return _contact_cadence(c, status or "")
    if status in s.pending_statuses or status in s.qualified_statuses:
        return _qualification(c, status or "")
    return c.verdict(
        Verdict.EXCLUDED, f"excluded because {schema.STATUS}={status!r} (not a stage of this SOP)"
    )


def _contact_cadence(c: _Ctx, status: str) -> Evaluation:
    s, as_of = c.s, c.as_of
    created = c.created_day()
    attempts = c.attempts()
    n = len(attempts)
    # The first contact, then max_contact_followups follow-ups: the attempts in all.
    allowed = s.max_contact_followups + 1
    values = {
        "name": c.name,
        "status": status,
        "created": created.isoformat(),
        "attempt": n + 1,
        "max_attempts": allowed,
        "followup": max(n, 1),
        "max_followups": s.max_contact_followups,
    }
    if n >= allowed:
        last = attempts[-1][0]
        due = last + dt.timedelta(days=s.closeout_after_days)
        done = f"{n} contact attempts logged (last {last}), status still {status!r}"
        if as_of < due:
            return c.not_due(f"{done}; close-out on {due}", due, "lead_closeout")
        why = (
            f"{done}: no conversation after the first contact and "
            f"{s.max_contact_followups} follow-ups; closed as "
            f"{s.lead_closeout_reason!r} and moved to re-engagement every "
            f"{s.reengage_every_months} month(s)"
        )
        close = c.emit.close(
            "lead_closeout",
            {
                schema.STATUS: s.lead_closed_status,
                s.lead_reason_field: s.lead_closeout_reason,
                s.lead_closed_date_field: as_of.isoformat(),
            },
            reason=why,
        )
        return c.act(why, close)

    found = c.open_task("first_contact", "followup")
    if found:
        return c.waiting(found, "followup")
    first = c.tasks_of("first_contact")
    if n == 0 and not first:
        if created > as_of:
            return c.not_due(f"lead arrives on {created}", created, "first_contact")
        when = "today" if created == as_of else f"on {created}"
        why = (
            f"lead arrived {when} ({c.org.org.time_zone}), status {status!r}, no contact attempt "
            f"logged: first contact"
        )
        return c.act(why, c.task("first_contact", "first_contact", values, why))

    last = attempts[-1][0] if attempts else c.task_day(first[-1][1])
    step = max(n + 1, c.last_number("followup") + 1)
    due = last + dt.timedelta(days=s.followup_every_days)
    since = f"{n} of {allowed} contact attempts logged (last {last})"
    if as_of < due:
        return c.not_due(f"{since}; next follow-up on {due}", due, "followup")
    skipped = _missed_slots(c, "followup", due, s.followup_every_days)
    why = f"{since}, status {status!r}: follow-up {n + 1} due {due}"
    return c.act(why, c.task("followup", f"followup-{step}", values, why), skipped=skipped)


def _missed_slots(c: _Ctx, step: str, due: dt.date, every: int) -> list[SkippedStep]:
    """Follow-up slots that passed while the worker was not running (only the last is done)."""
    missed = []
    while due + dt.timedelta(days=every) <= c.as_of:
        missed.append(
            SkippedStep(
                c.emit.key(f"{step}-missed-{due.isoformat()}"),
                c.s.step_label(step),
                due,
                "fell due while the worker was not running; catch-up does the step due now only",
            )
        )
        due += dt.timedelta(days=every)
    return missed


def _closed_lead(c: _Ctx) -> Evaluation:
    s, record = c.s, c.record
    reason = record.text(s.lead_reason_field)
    closed = f"{schema.STATUS}={s.lead_closed_status!r} ({s.lead_reason_field}={reason!r})"
    if reason == s.financially_unqualified_reason:
        budget = record.text(s.budget_field)
        if budget is not None:
            return c.verdict(
                Verdict.EXCLUDED, f"excluded because {closed}, {s.budget_field}={budget}"
            )
        flagged = c.tasks_of("budget_guard")
        if flagged:
            day = flagged[-1][1].date(schema.ACTIVITY_DATE)
            return c.verdict(
                Verdict.DONE, f"{closed} without a budget; flagged to the owner on {day}"
            )
        why = (
            f"closed as {reason!r} but {s.budget_field} is empty: the SOP says a lead is not "
            f"closed as financially unqualified until the budget is known"
        )
        values = {"name": c.name, "reason": reason, "budget_field": s.budget_field}
        return c.act(why, c.task("budget_guard", "budget_guard", values, why, channel="task"))
    if reason in s.reengage_reasons:
        closed_on = record.date(s.lead_closed_date_field)
        if closed_on is None:
            raise RecordError(record.id, s.lead_closed_date_field, "empty on a closed lead")
        every = s.reengage_every_months
        return _touches(
            c,
            "reengage",
            lambda k: add_months(closed_on, k * every),
            f"closed {closed_on} as {reason!r}",
            {"closed": closed_on.isoformat(), "reason": reason},
            s.lead_opt_out_fields,
            "re-engagement",
        )
    return c.verdict(Verdict.EXCLUDED, f"excluded because {closed}")


def _touches(
    c: _Ctx,
    step: str,
    due_of: Callable[[int], dt.date],
    since: str,
    values: Mapping[str, Any],
    opt_out_fields: tuple[str, ...],
    noun: str,
) -> Evaluation:
    """Re-engagement / nurture: touch k falls due on ``due_of(k)``; the latest due is done."""
    opted = c.opted_out(opt_out_fields)
    if opted:
        return c.verdict(Verdict.DONE, f"{since}; {noun} stopped: {opted}=true")
    made = c.last_number(step)
    k = 0
    while due_of(k + 1) <= c.as_of:
        k += 1
    found = c.open_task(step)
    if found:
        return c.waiting(found, step)
    if k <= made:
        upcoming = due_of(max(k, made) + 1)
        done = f"call {made} made, " if made else ""
        return c.not_due(f"{since}; {noun} {done}call {made + 1} on {upcoming}", upcoming, step)
    skipped = [
        SkippedStep(
            c.emit.key(f"{step}-{j}"),
            c.s.step_label(step),
            due_of(j),
            "fell due while the worker was not running; catch-up makes the touch due now only",
        )
        for j in range(made + 1, k)
    ]
    why = f"{since}: {noun} call {k} due {due_of(k)}"
    task = c.task(step, f"{step}-{k}", {"name": c.name, "touch": k, **values}, why)
    return c.act(why, task, skipped=skipped)


def _qualification(c: _Ctx, status: str) -> Evaluation:
    s = c.s
    met, missing = _criteria(c)
    if not missing:
        why = f"status {status!r}, meets the three criteria: {'; '.join(met)}"
        if s.convert_enabled:
            name = render(
                s.opportunity_name,
                {"name": c.name},
                f"rules.{RULE_ID}.opportunity_name",
                c.record.id,
            )
            return c.act(
                f"{why}: convert to an opportunity",
                c.emit.convert(
                    "convert",
                    converted_status=s.converted_status,
                    reason=f"{why}: convert to an opportunity",
                    opportunity_name=name,
                    opportunity_values=s.converted_opportunity_values(),
                ),
            )
        found = c.open_task("convert")
        if found:
            return c.waiting(found, "convert")
        done = c.tasks_of("convert")
        if done:
            return c.verdict(
                Verdict.DONE, f"{why}; the convert Task was completed, lead not yet converted"
            )
        why = f"{why}: conversion is off (convert_enabled=false), the owner converts it"
        values = {"name": c.name, "status": status}
        return c.act(why, c.task("convert", "convert", values, why, channel="task"))

    found = c.open_task("qualify")
    if found:
        return c.waiting(found, "qualify")
    made = c.tasks_of("qualify")
    gaps = "; ".join(missing)
    if made:
        last = c.task_day(made[-1][1])
        due = last + dt.timedelta(days=s.qualify_every_days)
        if c.as_of < due:
            return c.not_due(
                f"status {status!r}, still not qualified ({gaps}); qualification Task "
                f"completed {last}, next on {due}",
                due,
                "qualify",
            )
    n = c.last_number("qualify") + 1
    why = f"status {status!r}, not yet qualified: {gaps}"
    values = {"name": c.name, "status": status, "missing": gaps}
    return c.act(why, c.task("qualify", f"qualify-{n}", values, why, channel="task"))


def _criteria(c: _Ctx) -> tuple[list[str], list[str]]:
    """The three qualification criteria: (met, not met), each a human phrase."""
    s, record = c.s, c.record
    met: list[str] = []
    missing: list[str] = []
    zip_raw = record.text(s.postal_code_field)
    city_raw = record.text(s.city_field)
    zips = {_norm_zip(z) for z in s.service_area_postal_codes}
    cities = {_norm_city(x) for x in s.service_area_cities}
    if zip_raw and _norm_zip(zip_raw) in zips:
        met.append(f"in service area ({s.postal_code_field} {zip_raw.strip()})")
    elif city_raw and _norm_city(city_raw) in cities:
        met.append(f"in service area ({s.city_field} {city_raw.strip()})")
    else:
        missing.append(
            f"not in the service area ({s.postal_code_field}={zip_raw!r}, "
            f"{s.city_field}={city_raw!r})"
        )
    for name, label in (
        (s.looking_for_care_field, "looking for home care"),
        (s.financially_qualified_field, "financially qualified"),
    ):
        if record.flag(name):
            met.append(f"{label} ({name})")
        else:
            missing.append(f"{label} not confirmed ({name} unchecked)")
    return met, missing


def _norm_zip(value: str) -> str:
    text = value.strip()
    found = _ZIP5.match(text)
    return found.group(0) if found else text.casefold()


def _norm_city(value: str) -> str:
    return " ".join(value.split()).casefold()


# -- opportunities -------------------------------------------------------------------------


def _decide_opportunity(c: _Ctx) -> Evaluation:
    s, record = c.s, c.record
    stage = record.text(s.stage_field)
    if stage == s.closed_stage:
        reason = record.text(s.loss_reason_field)
        if reason in s.nurture_reasons:
            closed_on = record.date(s.close_date_field)
            if closed_on is None:
                raise RecordError(record.id, s.close_date_field, "empty on a closed opportunity")
            first = closed_on + dt.timedelta(days=s.nurture_first_after_days)
            every = s.nurture_every_months
            return _touches(
                c,
                "nurture",
                lambda k: add_months(first, (k - 1) * every),
                f"closed {closed_on} as {reason!r}",
                {"closed": closed_on.isoformat(), "reason": reason},
                s.opportunity_opt_out_fields,
                "nurture",
            )
        return c.verdict(
            Verdict.EXCLUDED,
            f"excluded because {s.stage_field}={stage!r} ({s.loss_reason_field}={reason!r})",
        )
    if stage not in s.pending_stages and stage != s.scheduled_stage:
        return c.verdict(
            Verdict.EXCLUDED,
            f"excluded because {s.stage_field}={stage!r} (not a stage of this SOP)",
        )
    opted = c.opted_out(s.opportunity_opt_out_fields)
    if opted:
        return c.verdict(
            Verdict.EXCLUDED, f"excluded because {opted}=true: no outreach (stage {stage!r})"
        )

    closing = _nurture_reason(c)
    if closing:
        reason, why = closing
        why = (
            f"stage {stage!r}, {why}: closed as {reason!r} and moved to nurture (first call "
            f"in {s.nurture_first_after_days} days, then every {s.nurture_every_months} month(s))"
        )
        return c.act(why, _close(c, reason, "close_nurture", why))

    assessment = record.datetime(s.assessment_field)
    if stage == s.scheduled_stage:
        when = _show(c, assessment) if assessment else "no date recorded"
        return c.verdict(
            Verdict.DONE, f"stage {stage!r} (assessment {when}); the SOP's stages end here"
        )
    if assessment is not None:
        why = f"{s.assessment_field} is {_show(c, assessment)}: the local office has a date"
        return c.act(why, c.emit.update("schedule", {s.stage_field: s.scheduled_stage}, reason=why))
    return _assessment_cadence(c, stage or "")


def _nurture_reason(c: _Ctx) -> tuple[str, str] | None:
    s, record = c.s, c.record
    declined = record.text(s.loss_reason_field)
    if declined in s.decline_reasons:
        return declined, f"{s.loss_reason_field}={declined!r}"
    hours = record.number(s.hours_field)
    if hours is not None and hours < s.minimum_hours:
        return (
            s.below_minimum_reason,
            f"{s.hours_field}={hours} is below the minimum of {s.minimum_hours}",
        )
    return None


def _close(c: _Ctx, reason: str, step: str, why: str) -> Action | None:
    s = c.s
    return c.emit.close(
        step,
        {
            s.stage_field: s.closed_stage,
            s.loss_reason_field: reason,
            s.close_date_field: c.as_of.isoformat(),
        },
        reason=why,
    )


def _assessment_cadence(c: _Ctx, stage: str) -> Evaluation:
    s, as_of = c.s, c.as_of
    created = c.created_day()
    # Calls made while it was a lead (moved here by the conversion) are not assessment
    # follow-ups: only attempts since the opportunity was created count.
    attempts = c.attempts(since=created)
    n = len(attempts)
    if n >= s.max_assessment_attempts:
        last = attempts[-1][0]
        due = last + dt.timedelta(days=s.closeout_after_days)
        done = f"stage {stage!r}, {n} follow-up attempts logged (last {last}), no assessment date"
        if as_of < due:
            return c.not_due(f"{done}; close-out on {due}", due, "assessment_closeout")
        why = f"{done}: closed as {s.assessment_closeout_reason!r} and moved to nurture"
        return c.act(why, _close(c, s.assessment_closeout_reason, "assessment_closeout", why))

    found = c.open_task("assessment_followup")
    if found:
        return c.waiting(found, "assessment_followup")
    last = attempts[-1][0] if attempts else created
    due = last + dt.timedelta(days=s.assessment_followup_every_days)
    since = (
        f"{n} of {s.max_assessment_attempts} follow-up attempts logged (last {last})"
        if attempts
        else f"created {last}, no follow-up attempt yet"
    )
    if as_of < due:
        return c.not_due(
            f"stage {stage!r}, {since}; next follow-up on {due}", due, "assessment_followup"
        )
    skipped = _missed_slots(c, "assessment_followup", due, s.assessment_followup_every_days)
    why = f"stage {stage!r}, {since}, no assessment date: follow-up {n + 1} due {due}"
    number = max(n + 1, c.last_number("assessment_followup") + 1)
    values = {
        "name": c.name,
        "stage": stage,
        "attempt": n + 1,
        "max_attempts": s.max_assessment_attempts,
    }
    task = c.task("assessment_followup", f"assessment_followup-{number}", values, why)
    return c.act(why, task, skipped=skipped)


def _show(c: _Ctx, moment: dt.datetime) -> str:
    zone = c.org.org
    return moment.astimezone(zone.zone).strftime(f"%Y-%m-%d %H:%M ({zone.time_zone})")


RULE: Rule[HomecareStagesSettings] = Rule(
    id=RULE_ID,
    title="Home-care lead and opportunity stages",
    settings_model=HomecareStagesSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
