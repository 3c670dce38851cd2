"""``sop-worker undo RUN_ID``: a plan that reverses what one run wrote, from its audit rows.

For each action the run applied:

- a field update or close: the fields are set back to the audit's before-values, where the
  record still holds what the run wrote; a record changed since (by a person, or by a later
  run) is a conflict, listed and left as it is;
- a Task it created: closed (set to ``task_status``, by default the first of ``[tasks]
  completed_statuses``) unless already closed or ``tasks="keep"``;
- a case comment, a sent email, a lead conversion, an approval submission: listed as not
  reversible.

The result is an ordinary plan: reviewed with ``--format`` and applied with ``apply``, which
reads each target again first (a record changed after the undo was planned is a conflict
there). Its keys (``rule:undo-RUN-step:record``) are new, so the ledger applies each once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker import schema
from worker.actions import Action, ActionKind, FieldChange, Outcome, UpdateRecord
from worker.mapping import LoadedMapping
from worker.plan import Plan
from worker.ports import OrgIdentity
from worker.records import Record, RecordRef
from worker.store import ActionOutcome, AuditRow, Store

NOT_REVERSIBLE = {
    ActionKind.CASE_COMMENT.value: "a case comment stays on the case (the worker deletes nothing)",
    ActionKind.SEND_EMAIL.value: "a sent email cannot be unsent",
    ActionKind.CONVERT_LEAD.value: "a lead conversion cannot be undone through the API",
    ActionKind.SUBMIT_APPROVAL.value: "a submitted approval request is recalled in Salesforce "
    "(the record's Approval History)",
    ActionKind.MERGE.value: "a merge is undone from its snapshot in the org: "
    "sop-worker undo-merge KEY",
    ActionKind.ADD_CAMPAIGN_MEMBER.value: "a campaign member stays on the campaign (the worker "
    "deletes nothing)",
}


@dataclass(frozen=True)
class NotUndone:
    key: str
    record_id: str
    record_name: str
    kind: str
    why: str
    conflict: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "record_id": self.record_id,
            "record_name": self.record_name,
            "kind": self.kind,
            "why": self.why,
            "conflict": self.conflict,
        }


def undo_key(key: str, run_id: str) -> str:
    """``rule:undo-RUN-step:record`` for the action key ``rule:step:record``."""
    rule, rest = key.split(":", 1)
    step, record = rest.rsplit(":", 1)
    return f"{rule}:undo-{run_id}-{step}:{record}"


def undo_plan(
    store: Store,
    mapping: LoadedMapping,
    run_id: str,
    *,
    org: OrgIdentity,
    as_of: dt.date,
    now: dt.datetime,
    tasks: str = "close",
    task_status: str | None = None,
) -> tuple[Plan, list[NotUndone]]:
    """The plan reversing run ``run_id`` against the records as cached now."""
    status = task_status or mapping.common.tasks.completed_statuses[0]
    actions: list[Action] = []
    left: list[NotUndone] = []
    applied = [o for o in store.run_results(run_id) if o.audit.outcome == Outcome.APPLIED.value]
    for outcome in _merged_updates(applied):
        found = _reverse(store, outcome, run_id, tasks, status)
        if isinstance(found, NotUndone):
            left.append(found)
        elif found is not None:
            actions.append(found)
    plan = Plan(
        org=org,
        mapping=mapping.path,
        as_of=as_of,
        generated_at=now,
        actions=tuple(actions),
    )
    return plan, left


def _merged_updates(outcomes: Sequence[ActionOutcome]) -> list[ActionOutcome]:
    """The run's updates of one record as one (in the order they were written): each field
    goes back to its value before the first and is checked against what the last wrote."""
    out: list[ActionOutcome] = []
    updates: dict[str, int] = {}  # record Id -> its merged entry in ``out``
    for outcome in outcomes:
        row = outcome.audit
        if row.kind not in (ActionKind.UPDATE.value, ActionKind.CLOSE.value):
            out.append(outcome)
            continue
        if row.record_id not in updates:
            updates[row.record_id] = len(out)
            out.append(outcome)
            continue
        first = out[updates[row.record_id]].audit
        before = {**json.loads(row.before or "{}"), **json.loads(first.before or "{}")}
        after = {**json.loads(first.after or "{}"), **json.loads(row.after or "{}")}
        merged = dataclasses.replace(first, before=json.dumps(before), after=json.dumps(after))
        out[updates[row.record_id]] = dataclasses.replace(outcome, audit=merged)
    return out


def _reverse(
    store: Store, outcome: ActionOutcome, run_id: str, tasks: str, task_status: str
) -> Action | NotUndone | None:
    row = outcome.audit

    def not_undone(why: str, conflict: bool = False) -> NotUndone:
        return NotUndone(row.key, row.record_id, row.record_name, row.kind, why, conflict)

    if row.kind in NOT_REVERSIBLE:
        return not_undone(f"not reversible: {NOT_REVERSIBLE[row.kind]}")
    if row.kind == ActionKind.CREATE_TASK.value:
        if tasks == "keep":
            return not_undone("the Task it created is kept (--tasks keep)")
        task = store.cached_record(outcome.created_id) if outcome.created_id else None
        if task is None:
            return not_undone("the Task it created is not in the cache (deleted since?)", True)
        if task.flag(schema.IS_CLOSED) or task.text(schema.STATUS) == task_status:
            return not_undone("the Task it created is closed already")
        return _update(
            row,
            task,
            task.text(schema.SUBJECT) or "",
            run_id,
            {schema.STATUS: task_status},
            f"undo of run {run_id}: close the Task it created on {row.record_name or row.record_id}",
        )
    if row.kind in (ActionKind.UPDATE.value, ActionKind.CLOSE.value):
        before = json.loads(row.before or "{}")
        after = json.loads(row.after or "{}")
        if not before:
            return None  # a skipped step's marker: nothing was written
        record = store.cached_record(row.record_id)
        if record is None:
            return not_undone("the record is not in the cache (deleted since?)", True)
        moved = [f for f in after if record.get(f) != after[f]]
        if moved:
            changes = ", ".join(f"{f} is now {record.get(f)!r}" for f in moved)
            return not_undone(f"changed since the run: {changes}", True)
        return _update(
            row,
            record,
            row.record_name,
            run_id,
            before,
            f"undo of run {run_id}: restore the values before it",
        )
    return not_undone(f"not reversible: {row.kind}")


def _update(
    row: AuditRow, record: Record, name: str, run_id: str, values: dict[str, Any], reason: str
) -> UpdateRecord:
    """Set ``values`` on the record as cached now (its stamp: apply checks it has not moved)."""
    return UpdateRecord(
        rule=row.rule,
        sop=row.sop,
        step=f"undo: {row.step}",
        target=RecordRef(record.sobject, record.id, name, record.text(schema.SYSTEM_MODSTAMP)),
        reason=reason,
        key=undo_key(row.key, run_id),
        changes=tuple(FieldChange(f, record.get(f), v) for f, v in values.items()),
    )


def not_undone_records(left: Sequence[NotUndone]) -> list[dict[str, Any]]:
    return [n.to_dict() for n in left]
