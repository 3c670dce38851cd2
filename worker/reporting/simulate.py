"""``sop-worker simulate``: what the rules would do over the coming days, read-only.

The cached records are copied into memory and stepped forward, day by day (or every few
hours, for minute-level SLAs): at each step the rules evaluate the simulated records, the
plan is made as a run would make it (keys already applied, in the store's ledger or earlier
in the simulation, are left out), and its actions are applied to the copy the way the local
org applies them (:func:`worker.localorg.apply_actions`). Nothing else is written: the
pipeline around it has the dry-run sink, and the store is only read.

Assumptions, each an option: nobody answers (no reply, no response, no stage change made by
a person is simulated); each Task is done on its due date (its status set to the first of
``[tasks] completed_statuses`` once that date has passed), unless ``tasks_done`` is off.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any

from worker import schema
from worker.actions import Outcome
from worker.localorg import apply_actions
from worker.pipeline import Pipeline
from worker.plan import build_plan
from worker.ports import OrgIdentity
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Verdict

SIMULATION_SCHEMA = "sop-worker/simulation"


@dataclass(frozen=True)
class Assumptions:
    tasks_done: bool = True  # every Task is done on its due date
    every_hours: int = 24  # the step between two simulated evaluations

    def to_dict(self) -> dict[str, Any]:
        return {
            "nobody answers": "no reply, response or change by a person is simulated",
            "tasks done on their due date": self.tasks_done,
            "hours between evaluations": self.every_hours,
        }


def simulate(
    pipeline: Pipeline,
    org: OrgIdentity,
    start: dt.date,
    days: int,
    assumptions: Assumptions = Assumptions(),
) -> dict[str, Any]:
    """The simulation of ``days`` days from ``start`` (the as-of date) on, as plain data."""
    mapping = pipeline.mapping
    snapshot, _ = pipeline.store.load_snapshot(mapping.object_fields())
    records: dict[str, dict[str, Any]] = {
        r.id: r.to_json() for sobject in snapshot.records for r in snapshot.of(sobject)
    }
    done: dict[str, Outcome] = {}
    first = pipeline.instant(start).instant
    end = first + dt.timedelta(days=days)
    step = dt.timedelta(hours=assumptions.every_hours)
    by_day: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    at = first
    while at < end:
        if assumptions.tasks_done:
            _complete_tasks_due_before(records, at.date(), mapping.common.tasks.completed_statuses)
        current = Snapshot.build(Record.from_json(raw) for raw in records.values())
        evaluations, _ = pipeline.evaluate(AsOf(at), snapshot=current)
        keys = [a.key for e in evaluations for a in e.actions]
        keys += [s.key for e in evaluations for s in e.skipped]
        ledger = {**pipeline.store.ledger_status(keys), **done}
        plan = build_plan(
            evaluations,
            org=org,
            mapping=mapping.path,
            as_of=AsOf(at),
            generated_at=at,
            precedence=mapping.precedence,
            rule_order=[r.id for r in pipeline.rules],
            ledger=ledger,
            sops={r.id: mapping.rules[r.id].sop_file for r in pipeline.rules},
        )
        results = apply_actions(
            records, plan.actions, at.astimezone(dt.UTC), mapping.common.org.task_key_field
        )
        outcome = {r.key: r for r in results}
        for skip in (*plan.skipped, *plan.superseded):
            done[skip.action.key] = Outcome.SKIPPED
        day = by_day.setdefault(
            at.date().isoformat(),
            {
                "day": at.date().isoformat(),
                "actions": 0,
                "failed": 0,
                "skipped": 0,
                "errors": 0,
                "by_rule": Counter[str](),
                "by_step": Counter[str](),
                "items": [],
            },
        )
        day["skipped"] += len(plan.skipped)
        day["errors"] += sum(1 for e in evaluations if e.verdict is Verdict.ERROR)
        for action in plan.actions:
            result = outcome[action.key]
            done[action.key] = result.outcome
            if result.outcome is not Outcome.APPLIED:
                day["failed"] += 1
                continue
            day["actions"] += 1
            day["by_rule"][action.rule] += 1
            day["by_step"][f"{action.rule}:{action.step}"] += 1
            totals[f"{action.rule}:{action.step}"] += 1
            day["items"].append(
                {
                    "at": at.isoformat(),
                    "key": action.key,
                    "rule": action.rule,
                    "step": action.step,
                    "kind": action.kind.value,
                    "record_id": action.target.id,
                    "record_name": action.target.name,
                    "summary": action.summary(),
                }
            )
        at += step
    for day in by_day.values():
        day["by_rule"] = dict(sorted(day["by_rule"].items()))
        day["by_step"] = dict(sorted(day["by_step"].items()))
    return {
        "schema": SIMULATION_SCHEMA,
        "version": 1,
        "org": {"id": org.org_id, "name": org.name},
        "as_of": start.isoformat(),
        "horizon_days": days,
        "assumptions": assumptions.to_dict(),
        "days": list(by_day.values()),
        "totals": dict(sorted(totals.items())),
    }


def _complete_tasks_due_before(
    records: dict[str, dict[str, Any]], day: dt.date, completed: tuple[str, ...]
) -> None:
    """Every open Task due before ``day`` was done on its due date."""
    status = completed[0] if completed else "Completed"
    for raw in records.values():
        if (raw.get(schema.ATTRIBUTES) or {}).get("type") != schema.TASK or raw.get(
            schema.IS_CLOSED
        ):
            continue
        due = raw.get(schema.ACTIVITY_DATE)
        if (
            isinstance(due, str)
            and due < day.isoformat()
            and raw.get(schema.STATUS) not in completed
        ):
            raw[schema.STATUS] = status
            raw[schema.IS_CLOSED] = True
