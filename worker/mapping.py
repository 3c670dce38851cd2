"""The mapping file: everything org- and SOP-specific, validated when it is loaded.

A mapping is a TOML file (``mappings/default.toml`` is the demo org's). It names the
SOP files and steps, the day counts, the custom field API names and picklist values
the rules use. The code holds none of these; a new org is a new mapping file.

Layout::

    [org]              org facts: name, time zone, Task key field, holiday calendar
    [tasks]            Task picklist values the org uses (open/completed status, subtypes)
    [objects.<Name>]   per sObject: the name field, extra fields and scope filters to pull
    [retention]        how long cached records and audit rows are kept
    [calendar]         business hours for every rule (or read from the org), closed days
    [suppression]      who may not be called or emailed: opt-out fields, Do Not Contact statuses
    precedence = [...] rule ids, strongest first, when two rules touch one record
    [rules.<id>]       one section per rule, validated by that rule's settings model
    [report]           the report's period and SOP figures (worker.reporting.config)

Every problem is reported with the file and the dotted key path, never a traceback.
Message templates (Task subjects, notes, scripts) are marked ``Annotated[str,
Placeholders(...)]`` (:mod:`worker.declarations`) in their rule's settings model, naming the values the rule fills in;
each is checked at load, so a misspelt ``{acount}`` is a mapping error, not a record error
at plan time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from worker import schema
from worker.business_hours import (
    BUSINESS_HOURS_FIELDS,
    HOLIDAY_FIELDS,
    WEEKDAYS,
    BusinessCalendar,
    Shift,
)
from worker.declarations import Placeholders, declarations
from worker.errors import ConfigError, MappingError
from worker.records import full_record_id
from worker.reporting.config import ReportSection


def template_problems(model: BaseModel, prefix: str) -> list[tuple[str, str]]:
    """(key path, problem) for every template in ``model`` (nested sections, tables of
    sections included) that is malformed or uses a placeholder its rule does not fill in."""
    out: list[tuple[str, str]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}.{name}"
        marks = [m for m in info.metadata if isinstance(m, Placeholders)]
        if not marks:
            out.extend(_nested_template_problems(value, path))
        elif isinstance(value, str) and (problem := _template_problem(value, marks[0].names)):
            out.append((path, problem))
    return out


def _nested_template_problems(value: object, path: str) -> list[tuple[str, str]]:
    if isinstance(value, BaseModel):
        return template_problems(value, path)
    items: Iterable[tuple[object, object]] = ()
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    return [p for key, item in items for p in _nested_template_problems(item, f"{path}.{key}")]


def _template_problem(template: str, allowed: frozenset[str]) -> str | None:
    try:
        fields = [(n, spec, conv) for _, n, spec, conv in string.Formatter().parse(template)]
    except ValueError as exc:
        return f"malformed template: {exc} (write {{{{ and }}}} for a literal brace)"
    used = [(n, spec, conv) for n, spec, conv in fields if n is not None]
    if any(not n for n, _, _ in used):
        return "a placeholder without a name: {} (write {{}} for literal braces)"
    unknown = sorted({n for n, _, _ in used} - allowed)
    if unknown:
        return (
            f"unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)} "
            f"(this template can use {', '.join('{' + a + '}' for a in sorted(allowed))})"
        )
    formatted = sorted({n for n, spec, conv in used if spec or conv})
    if formatted:
        return (
            f"placeholder(s) {', '.join(formatted)}: write {{name}} without a format or conversion"
        )
    return None


class StrictModel(BaseModel):
    """Unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class OrgSection(StrictModel):
    name: str = Field(description="A label for the org, shown in plans and the audit.")
    task_key_field: str = Field(
        default="",
        description="External-id field on Task holding the worker's action key; empty = "
        "the key is written into the Task description and looked up before creating.",
    )
    time_zone: str = Field(
        default="UTC",
        description="The org's IANA time zone: 'today' and the day a record arrived are "
        "taken there.",
    )
    holiday_country: str = Field(
        default="US", description="ISO country of the business-day calendar."
    )
    phone_region: str = Field(
        default="US",
        description="ISO country whose numbering plan applies to phone numbers written "
        "without a +country code (ContactPhone '(951) 555-1207').",
    )
    holiday_subdivision: str | None = Field(
        default=None, description="State or province for regional holidays, if any."
    )
    email_action_enabled: bool = Field(
        default=False,
        description="Send emails through Salesforce's emailSimple action; when false, "
        "rules create a Task for a person to send the email instead.",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name)") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @field_validator("phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"not a country with a phone numbering plan: {value!r}")
        return region


class TaskSection(StrictModel):
    open_status: str = "Not Started"
    completed_statuses: tuple[str, ...] = ("Completed",)
    priority: str = "Normal"
    high_priority: str = "High"
    type_field: str = Field(default="Type", description="Task field holding the kind of activity.")
    call_type: str = "Call"
    email_type: str = "Email"
    call_subtype: str = "Call"
    email_subtype: str = "Email"
    task_subtype: str = "Task"
    due_time_field: str = Field(
        default="",
        description="Task datetime field given a step's minute-level deadline (ActivityDate "
        "holds its date): ReminderDateTime sets the owner's reminder (IsReminderSet), a "
        "custom datetime field holds it as is; empty: the deadline is in the plan only.",
    )

    def picklist_values(self) -> dict[tuple[str, str], set[str]]:
        """The Task picklist values the worker writes (doctor checks the org has them)."""
        return {
            (schema.TASK, schema.STATUS): {self.open_status, *self.completed_statuses},
            (schema.TASK, schema.PRIORITY): {self.priority, self.high_priority},
            (schema.TASK, self.type_field): {self.call_type, self.email_type},
            (schema.TASK, schema.TASK_SUBTYPE): {
                self.call_subtype,
                self.email_subtype,
                self.task_subtype,
            },
        }


class SuppressionSection(StrictModel):
    """Who the worker never plans a call or an email for, whichever rule asks
    (:mod:`worker.suppression`). Keys of the per-object tables are sObject API names."""

    email_opt_out: dict[str, str] = Field(
        default_factory=lambda: {
            schema.LEAD: "HasOptedOutOfEmail",
            "Contact": "HasOptedOutOfEmail",
        },
        description="Checkbox per person object: set, no email to that person.",
    )
    call_opt_out: dict[str, str] = Field(
        default_factory=lambda: {schema.LEAD: "DoNotCall", "Contact": "DoNotCall"},
        description="Checkbox per person object: set, no call to that person.",
    )
    status_field: dict[str, str] = Field(
        default_factory=dict, description="Status field per person object (Lead = Status)."
    )
    do_not_contact_statuses: tuple[str, ...] = Field(
        default=(), description="Statuses that suppress both calls and emails."
    )
    email_field: dict[str, str] = Field(
        default_factory=lambda: {schema.LEAD: "Email", "Contact": "Email"},
        description="Email field per person object: an email sent to that address is for "
        "that person.",
    )
    person_field: dict[str, str] = Field(
        default_factory=dict,
        description="Per object a rule acts on that is not a person (Opportunity, Case): "
        "the lookup naming its person, called by a call Task without a WhoId.",
    )
    call_task_types: tuple[str, ...] = Field(
        default=("Call",),
        description="A new Task whose [tasks] type_field or TaskSubtype is one of these is a call.",
    )
    email_task_types: tuple[str, ...] = Field(
        default=("Email",),
        description="A new Task whose [tasks] type_field or TaskSubtype is one of these is an "
        "email.",
    )

    def person_objects(self) -> set[str]:
        return {*self.email_opt_out, *self.call_opt_out, *self.status_field, *self.email_field}

    def fields_of(self, sobject: str) -> set[str]:
        """The fields the check reads on a record of ``sobject``."""
        tables = (
            self.email_opt_out,
            self.call_opt_out,
            self.status_field,
            self.email_field,
            self.person_field,
        )
        return {table[sobject] for table in tables if sobject in table}


class ObjectSection(StrictModel):
    name_field: str = Field(
        default="",
        description="Field shown as the record's name; empty: Name, or the standard object's "
        "own name field (Subject on Task, CaseNumber on Case).",
    )
    fields: tuple[str, ...] = Field(default=(), description="Extra fields to cache.")
    filters: dict[str, tuple[str | bool | int, ...]] = Field(
        default_factory=dict,
        description="Scope filters: field -> allowed values (ANDed, values escaped). Values "
        "of an Id field (Id, OwnerId, RecordTypeId, ...) may be 15-character Ids.",
    )
    replication_key: str = Field(
        default="",
        description="Datetime field the incremental read orders and resumes on; empty: the "
        "platform's own (SystemModstamp; CreatedDate for field-history objects).",
    )

    @field_validator("filters")
    @classmethod
    def _full_ids(
        cls, filters: dict[str, tuple[str | bool | int, ...]]
    ) -> dict[str, tuple[str | bool | int, ...]]:
        """Values of an Id field in the 18-character form the records carry."""
        return {
            name: tuple(
                full_record_id(v) if isinstance(v, str) and name.endswith("Id") else v
                for v in values
            )
            for name, values in filters.items()
        }


class RetentionSection(StrictModel):
    prospect_days: int = Field(default=730, ge=1, description="SOP retention: prospects 2 years.")
    customer_days: int = Field(default=2555, ge=1, description="SOP retention: customers 7 years.")
    customer_objects: tuple[str, ...] = ("Account", "Opportunity", "Case")
    audit_days: int = Field(default=2555, ge=1)

    def kept_for(self, sobject: str) -> dt.timedelta:
        """How long a cached record of this object is kept: customers' or prospects'."""
        days = self.customer_days if sobject in self.customer_objects else self.prospect_days
        return dt.timedelta(days=days)


class CalendarSection(StrictModel):
    """When the business is open: one calendar for every rule and object, in the [org] time
    zone. See docs/engine.md."""

    source: Literal["mapping", "org"] = Field(
        default="mapping",
        description="'mapping': the hours below; 'org': the org's default BusinessHours (in "
        "its own time zone) and its Holiday records, read at every pull.",
    )
    monday: tuple[str, ...] = ("09:00-17:00",)
    tuesday: tuple[str, ...] = ("09:00-17:00",)
    wednesday: tuple[str, ...] = ("09:00-17:00",)
    thursday: tuple[str, ...] = ("09:00-17:00",)
    friday: tuple[str, ...] = ("09:00-17:00",)
    saturday: tuple[str, ...] = ()
    sunday: tuple[str, ...] = ()
    public_holidays: bool = Field(
        default=True,
        description="Closed on the public holidays of [org] holiday_country (and subdivision).",
    )
    closed_days: tuple[dt.date, ...] = Field(
        default=(), description="Further days the business is closed (YYYY-MM-DD)."
    )

    @field_validator(*WEEKDAYS, mode="before")
    @classmethod
    def _shifts(cls, value: Any) -> Any:
        shifts = (value,) if isinstance(value, str) else value
        if isinstance(shifts, (list, tuple)):
            for shift in shifts:
                Shift.parse(str(shift))
        return shifts

    @model_validator(mode="after")
    def _hours_in_one_place(self) -> CalendarSection:
        given = sorted(set(WEEKDAYS) & self.model_fields_set)
        if self.source == "org" and given:
            raise ValueError(
                f"source = 'org' reads the hours from the org: remove {', '.join(given)}"
            )
        return self

    def build(self, org: OrgSection) -> BusinessCalendar:
        """The calendar of these hours in the org's time zone (with ``source = "org"``, the
        org's hours take their place at each evaluation)."""
        return BusinessCalendar.weekdays(
            {day: getattr(self, day) for day in WEEKDAYS},
            org.zone,
            closed=self.closed_days,
            country=org.holiday_country if self.public_holidays else None,
            subdivision=org.holiday_subdivision,
        )


class RuleSettings(StrictModel):
    """Base of every rule's mapping section."""

    required_steps: ClassVar[tuple[str, ...]] = ()
    # Keys a rule no longer reads -> what to write instead: refused, naming the new key.
    replaced_keys: ClassVar[Mapping[str, str]] = {}
    # Fields the rule reads that no setting names (OwnerId, CreatedDate), per sObject: an
    # object's API name, or the name of the setting holding it. Settings that name fields
    # and values are marked instead (FieldOf, ValuesOf, FieldValues: worker.declarations).
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # Likewise the standard fields it updates (a lead's Status at close-out).
    updates: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    enabled: bool = True
    sop_file: str = Field(description="The SOP document this rule implements.")
    steps: dict[str, str] = Field(description="Step id -> the SOP's own label for the step.")
    assignment_rule_steps: tuple[str, ...] = Field(
        default=(),
        description="Step ids whose record writes let the org's active assignment rules "
        "reassign the record (Sforce-Auto-Assign: TRUE), e.g. a 'return to queue' step. "
        "Every other write is sent with Sforce-Auto-Assign: FALSE.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_replaced_keys(cls, data: Any) -> Any:
        old = [k for k in cls.replaced_keys if isinstance(data, dict) and k in data]
        if old:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("replaced_key", cls.replaced_keys[k]),
                        loc=(k,),
                        input=data[k],
                    )
                    for k in old
                ],
            )
        return data

    @model_validator(mode="after")
    def _all_steps_labelled(self) -> RuleSettings:
        missing = [s for s in self.required_steps if s not in self.steps]
        if missing:
            raise ValueError(f"steps: no label for step(s) {', '.join(missing)}")
        unknown = [s for s in self.steps if self.required_steps and s not in self.required_steps]
        if unknown:
            raise ValueError(f"steps: unknown step(s) {', '.join(unknown)}")
        not_steps = [s for s in self.assignment_rule_steps if s not in self.steps]
        if not_steps:
            raise ValueError(
                f"assignment_rule_steps: not a step of this rule: {', '.join(not_steps)} "
                f"(steps: {', '.join(self.steps)})"
            )
        return self

    def needs(self) -> dict[str, set[str]]:
        """Fields this rule reads, per sObject, beyond the standard ones: derived from the
        settings' annotations (:mod:`worker.declarations`) and the class's ``reads``."""
        return declarations(self).needs

    def writes(self) -> dict[str, set[str]]:
        """Fields this rule updates on existing records, per sObject (doctor checks that
        each is updateable): the settings marked ``write``."""
        return declarations(self).writes

    def picklist_values(self) -> dict[tuple[str, str], set[str]]:
        """(sObject, field) -> the picklist values this rule writes or compares against
        (doctor checks that the org has each, active)."""
        return declarations(self).picklists

    def converted_statuses(self) -> set[str]:
        """Lead statuses this rule converts leads into (doctor checks each is Converted)."""
        return set()

    def object_fixes(self) -> dict[str, str]:
        """Objects this rule reads that exist only when the org turns a feature on, and how
        to fix their absence (doctor says it instead of its generic advice)."""
        return {}

    def step_label(self, step_id: str) -> str:
        return self.steps.get(step_id, step_id)

    def link(self, rules: Mapping[str, RuleSettings]) -> list[tuple[str, str]]:
        """Called once every rule's section is loaded: a rule that relies on another rule's
        section (lead routing writes the lead score) takes what it needs from ``rules`` here.
        Returns (key, problem) pairs, keys relative to this section; none by default."""
        return []


class _MappingFile(StrictModel):
    org: OrgSection
    tasks: TaskSection = TaskSection()
    objects: dict[str, ObjectSection] = Field(default_factory=dict)
    retention: RetentionSection = RetentionSection()
    calendar: CalendarSection = CalendarSection()
    suppression: SuppressionSection = SuppressionSection()
    precedence: tuple[str, ...] = ()
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    report: ReportSection = ReportSection()

    @model_validator(mode="after")
    def _precedence_unique(self) -> _MappingFile:
        if len(set(self.precedence)) != len(self.precedence):
            raise ValueError("precedence lists a rule twice")
        return self


@dataclass(frozen=True)
class OrgMapping:
    """The parts of a mapping every rule may read."""

    org: OrgSection
    tasks: TaskSection
    objects: Mapping[str, ObjectSection]
    calendar: BusinessCalendar
    calendar_from_org: bool = False  # the pipeline puts the org's BusinessHours in its place
    suppression: SuppressionSection = dataclasses.field(default_factory=SuppressionSection)

    def replication(self, sobject: str) -> schema.Replication:
        """How ``sobject`` is read incrementally (see :func:`worker.schema.replication`)."""
        found = schema.replication(sobject)
        section = self.objects.get(sobject)
        if section and section.replication_key:
            return dataclasses.replace(found, stamp=section.replication_key)
        return found

    def name_field(self, sobject: str) -> str:
        section = self.objects.get(sobject)
        if section and section.name_field:
            return section.name_field
        return schema.name_field(sobject)


@dataclass(frozen=True)
class LoadedMapping:
    path: str
    common: OrgMapping
    retention: RetentionSection
    precedence: tuple[str, ...]
    rules: Mapping[str, RuleSettings]
    report: ReportSection = dataclasses.field(default_factory=ReportSection)

    def enabled(self, rule_id: str) -> bool:
        """The rule has a section here and it is not switched off."""
        section = self.rules.get(rule_id)
        return section is not None and section.enabled

    def object_fields(self) -> dict[str, tuple[str, ...]]:
        """Every field to read per sObject: what the enabled rules' settings declare, the
        mapping's extras, the standard fields the worker itself reads."""
        common = self.common
        needed: dict[str, set[str]] = {}
        for rule_id, section in self.rules.items():
            if self.enabled(rule_id):
                for sobject, names in section.needs().items():
                    needed.setdefault(sobject, set()).update(names)
        if common.calendar_from_org:
            needed.setdefault(schema.BUSINESS_HOURS, set()).update(BUSINESS_HOURS_FIELDS)
            needed.setdefault(schema.HOLIDAY, set()).update(HOLIDAY_FIELDS)
        for sobject, extra in common.objects.items():
            if sobject in needed:
                needed[sobject].update(extra.fields)
        for sobject, names in needed.items():
            names.update(common.suppression.fields_of(sobject))  # on objects read anyway
        for sobject, names in needed.items():
            names.update(common.replication(sobject).fields())
            names.add(common.name_field(sobject))
            if sobject == schema.TASK:
                names.update(schema.TASK_FIELDS)
                if common.org.task_key_field:
                    names.add(common.org.task_key_field)
            if sobject == schema.CASE_COMMENT:
                names.update(schema.CASE_COMMENT_FIELDS)
        return {k: tuple(sorted(v)) for k, v in sorted(needed.items())}


def load_mapping(path: str | Path, rule_models: Mapping[str, type[RuleSettings]]) -> LoadedMapping:
    """Read and validate a mapping file against the known rules' settings models."""
    shown = str(path)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MappingError(
            shown, [("", "file not found (choose one with --mapping or WORKER_MAPPING)")]
        ) from None
    except OSError as exc:
        raise MappingError(shown, [("", f"cannot read: {exc.strerror}")]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MappingError(shown, [("", f"not valid TOML: {exc}")]) from None

    problems: list[tuple[str, str]] = []
    try:
        top = _MappingFile.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(shown, _problems(exc)) from None

    try:
        calendar = top.calendar.build(top.org)
    except ValueError as exc:
        raise MappingError(shown, [("calendar", str(exc))]) from None
    except ConfigError as exc:
        raise MappingError(shown, [("org.holiday_country", str(exc))]) from None

    rules: dict[str, RuleSettings] = {}
    for rule_id, section in top.rules.items():
        model = rule_models.get(rule_id)
        if model is None:
            known = ", ".join(sorted(rule_models))
            problems.append((f"rules.{rule_id}", f"unknown rule (known rules: {known})"))
            continue
        try:
            rules[rule_id] = model.model_validate(section)
        except ValidationError as exc:
            problems.extend(_problems(exc, prefix=f"rules.{rule_id}"))
            continue
        problems.extend(template_problems(rules[rule_id], f"rules.{rule_id}"))
    if not problems:
        for rule_id, settings in rules.items():
            problems.extend(
                (".".join(p for p in (f"rules.{rule_id}", key) if p), problem)
                for key, problem in settings.link(rules)
            )
    for i, rule_id in enumerate(top.precedence):
        if rule_id not in rule_models:
            problems.append((f"precedence[{i}]", f"unknown rule {rule_id!r}"))
    if problems:
        raise MappingError(shown, problems)
    return LoadedMapping(
        path=shown,
        common=OrgMapping(
            org=top.org,
            tasks=top.tasks,
            objects=dict(top.objects),
            calendar=calendar,
            calendar_from_org=top.calendar.source == "org",
            suppression=top.suppression,
        ),
        retention=top.retention,
        precedence=top.precedence,
        rules=rules,
        report=top.report,
    )


def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        key = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {err['input']!r})"
        out.append((key, msg))
    return out
