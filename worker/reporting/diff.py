"""``sop-worker diff --mapping NEW.toml``: the impact of a mapping change before it goes live.

Today's plan is made twice over the same cached records, once under the current mapping and
once under NEW (both validated first), and compared action by action (an action's key names
its rule, step and record): actions added, removed, and changed (same key, another Task,
field value, comment or email), per rule and step, with the records affected. Nothing is
written: both plans are made with the dry-run sink.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from worker.actions import Action
from worker.dryrun import DryRunSink, ReadOnlyLedger
from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline
from worker.plan import Plan
from worker.rules import Rule, runnable

DIFF_SCHEMA = "sop-worker/mapping-diff"


def plan_under(
    pipeline: Pipeline,
    mapping: LoadedMapping,
    rules: Sequence[Rule[Any]],
    as_of: dt.date,
    now: dt.datetime,
) -> Plan:
    """Today's plan over the same cache and org under ``mapping``, with the dry-run sink,
    evaluated at ``now`` (both plans of a diff at one instant: a rule that stamps the
    instant it evaluated at, lead routing's Routed_At__c, shows no change between them)."""
    other = Pipeline(
        store=pipeline.store,
        source=pipeline.source,
        sink=DryRunSink(),
        ledger=ReadOnlyLedger(pipeline.store),
        mapping=mapping,
        rules=runnable(rules, mapping),
        clock=lambda: now,
    )
    return other.plan(as_of)


def uncached_fields(current: Pipeline, new: LoadedMapping) -> dict[str, list[str]]:
    """Fields NEW's rules read that the cache, filled under the current mapping, lacks: the
    new plan sees them empty until a pull under NEW has read them."""
    have = current.mapping.object_fields()
    want = new.object_fields()
    out = {}
    for sobject, names in want.items():
        missing = sorted(set(names) - set(have.get(sobject, ())))
        if missing:
            out[sobject] = missing
    return out


def _comparable(action: Action) -> dict[str, Any]:
    """What an action does (its reason, the explanation of why, aside)."""
    data = action.to_dict()
    data.pop("reason", None)
    return data


def diff_plans(
    before: Plan, after: Plan, *, current: str, new: str, uncached: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    old_actions = {a.key: a for a in before.actions}
    new_actions = {a.key: a for a in after.actions}
    steps: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(action: Action) -> dict[str, Any]:
        return steps.setdefault(
            (action.rule, action.step),
            {
                "rule": action.rule,
                "step": action.step,
                "before": 0,
                "after": 0,
                "added": [],
                "removed": [],
                "changed": [],
            },
        )

    for action in old_actions.values():
        entry(action)["before"] += 1
    for action in new_actions.values():
        entry(action)["after"] += 1
    for key in sorted(new_actions.keys() - old_actions.keys()):
        entry(new_actions[key])["added"].append(_item(new_actions[key]))
    for key in sorted(old_actions.keys() - new_actions.keys()):
        entry(old_actions[key])["removed"].append(_item(old_actions[key]))
    for key in sorted(old_actions.keys() & new_actions.keys()):
        was, now = old_actions[key], new_actions[key]
        if _comparable(was) != _comparable(now):
            entry(now)["changed"].append(
                {**_item(now), "before": was.summary(), "after": now.summary()}
            )
    rows = []
    records: set[str] = set()
    for step in sorted(steps):
        row = steps[step]
        touched = {i["record_id"] for part in ("added", "removed", "changed") for i in row[part]}
        if not touched:
            continue
        row["records_affected"] = sorted(touched)
        records |= touched
        rows.append(row)
    return {
        "schema": DIFF_SCHEMA,
        "version": 1,
        "as_of": before.as_of.isoformat(),
        "current_mapping": current,
        "new_mapping": new,
        "actions": {"before": len(before.actions), "after": len(after.actions)},
        "records_affected": sorted(records),
        "steps": rows,
        "uncached_fields": {k: list(v) for k, v in uncached.items()},
    }


def _item(action: Action) -> dict[str, Any]:
    return {
        "key": action.key,
        "record_id": action.target.id,
        "record_name": action.target.name,
        "summary": action.summary(),
    }
