"""Check a rule's declarations for doctor (``writes()``, ``picklist_values()``) against what
the rule does: run it day after day over the demo org, applying its actions as the local
org would and completing its Tasks as a rep would, and collect every update it makes."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker import schema
from worker.actions import Action, ConvertLead, UpdateRecord
from worker.localorg import apply_actions, iter_raw_records, read_manifest
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot, format_sf_datetime
from worker.rules import ALL_RULES, evaluate_rule

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo-org"
METADATA = ROOT / "salesforce" / "force-app" / "main" / "default" / "objects"
_MD = "{http://soap.sforce.com/2006/04/metadata}"

# The platform's standard picklists among the fields the rules touch (fixed by Salesforce).
STANDARD_PICKLISTS = frozenset(
    {
        ("Opportunity", "StageName"),
        ("Opportunity", "Type"),
        ("Lead", "Status"),
        ("Case", "Status"),
        ("Task", "Status"),
        ("Task", "Type"),
        ("Task", "Priority"),
        ("Task", "TaskSubtype"),
    }
)


def shipped_picklists() -> frozenset[tuple[str, str]]:
    """(object, field) of every picklist shipped under salesforce/ (Activity fields on Task)."""
    out = set()
    for path in METADATA.glob("*/fields/*.field-meta.xml"):
        root = ET.parse(path).getroot()  # noqa: S314 - our own repository files
        if root.findtext(_MD + "type") == "Picklist":
            obj = path.parent.parent.name
            out.add(("Task" if obj == "Activity" else obj, root.findtext(_MD + "fullName") or ""))
    return frozenset(out)


def is_picklist(sobject: str, name: str) -> bool:
    return (sobject, name) in STANDARD_PICKLISTS or (sobject, name) in shipped_picklists()


@dataclass
class Behaviour:
    """What a rule did over a walk."""

    writes: dict[str, set[str]] = field(default_factory=dict)  # sObject -> fields updated
    values: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # picklists set
    updates: int = 0

    def wrote(self, sobject: str, name: str, value: Any) -> None:
        self.writes.setdefault(sobject, set()).add(name)
        if value is not None and is_picklist(sobject, name):
            self.values.setdefault((sobject, name), set()).add(str(value))


def walk_demo(rule_id: str, mapping: LoadedMapping, days: int) -> Behaviour:
    """Run one rule over the demo org from its as-of date for ``days`` days."""
    rule = next(r for r in ALL_RULES if r.id == rule_id)
    settings = mapping.rules[rule_id]
    key_field = mapping.common.org.task_key_field
    org = {r[schema.ID]: r for r in iter_raw_records(DEMO)}
    start = read_manifest(DEMO).as_of
    seen = Behaviour()
    for offset in range(days):
        day = start + dt.timedelta(days=offset)
        now = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
        snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
        actions: list[Action] = [
            a
            for e in evaluate_rule(rule, snapshot, day, settings, mapping.common)  # type: ignore[arg-type]
            for a in e.actions
        ]
        for action in actions:
            if isinstance(action, UpdateRecord):  # CloseRecord too
                seen.updates += 1
                for change in action.changes:
                    seen.wrote(action.target.sobject, change.field, change.after)
            elif isinstance(action, ConvertLead):
                # convertLead writes the converted status into Lead.Status
                value = action.converted_status
                seen.values.setdefault((schema.LEAD, schema.STATUS), set()).add(value)
                # then the new opportunity is updated with the mapped values
                for name, after in action.opportunity_values.items():
                    seen.wrote("Opportunity", name, after)
        apply_actions(org, actions, now, key_field)
        _complete_yesterdays_tasks(org, rule_id, day, key_field, mapping)
    return seen


def _complete_yesterdays_tasks(
    org: dict[str, dict[str, Any]], rule_id: str, day: dt.date, key_field: str, m: LoadedMapping
) -> None:
    """A rep completes the rule's Tasks the day after they fall due (so cadences go on,
    while Tasks are still open for a day when an exit comes)."""
    completed = m.common.tasks.completed_statuses[0]
    for rec in org.values():
        if rec.get(schema.ATTRIBUTES, {}).get("type") != schema.TASK or rec.get(schema.IS_CLOSED):
            continue
        if not str(rec.get(key_field) or "").startswith(f"{rule_id}:"):
            continue
        due = rec.get(schema.ACTIVITY_DATE)
        if due and dt.date.fromisoformat(str(due)) < day:
            rec[schema.STATUS] = completed
            rec[schema.IS_CLOSED] = True
            rec[schema.COMPLETED_DATE] = format_sf_datetime(
                dt.datetime.combine(day, dt.time(17), tzinfo=dt.UTC)
            )


def org_level_values(mapping: LoadedMapping) -> dict[tuple[str, str], set[str]]:
    """Task picklist values from the mapping's ``[tasks]`` section: the org's, not a rule's
    (a rule's ``picklist_values()`` only sees its own section)."""
    t = mapping.common.tasks
    return {
        (schema.TASK, schema.STATUS): {t.open_status, *t.completed_statuses},
        (schema.TASK, schema.PRIORITY): {t.priority, t.high_priority},
        (schema.TASK, t.type_field): {t.call_type, t.email_type},
        (schema.TASK, schema.TASK_SUBTYPE): {t.call_subtype, t.email_subtype, t.task_subtype},
    }


def undeclared(
    seen: Behaviour, declared: dict[tuple[str, str], set[str]], mapping: LoadedMapping
) -> dict[tuple[str, str], set[str]]:
    """Picklist values the rule wrote that neither it nor the ``[tasks]`` section declares."""
    org = org_level_values(mapping)
    out = {}
    for key, values in seen.values.items():
        extra = values - declared.get(key, set()) - org.get(key, set())
        if extra:
            out[key] = extra
    return out
