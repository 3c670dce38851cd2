"""Plans: the actions one cycle will take, why, what they cost, and what was left out.

:func:`build_plan` is pure. It takes the rules' evaluations, resolves conflicts between
rules on the same record by the mapping's precedence (a rule that closes or converts a
record, or sets a field, wins over rules after it in ``precedence``; the loser's action is
kept in the plan as ``superseded`` with the winner named), and leaves out keys the ledger
has already applied.

A plan file is JSON (``schema`` = :data:`PLAN_SCHEMA`, ``version`` = :data:`PLAN_VERSION`):

.. code-block:: text

    {"schema": "sop-worker/plan", "version": 2,
     "org": {"id": "00D... (18 characters)", "name": str,
             "user_id": str | null, "username": str | null},
     "mapping": str,
     "as_of": "YYYY-MM-DD", "as_of_instant": ISO datetime with the org's offset | null,
     "generated_at": ISO datetime,
     "actions":    [action, ...],                  # to apply, in order
     "skipped":    [{"action": action, "why": str}, ...],   # steps missed, not done late
     "superseded": [{"action": action, "why": str}, ...],   # lost to a stronger rule
     "deferred":   [{"action": action, "why": str}, ...],   # waits for the next run
     "suppressed": [{"action": action, "why": str}, ...],   # a call or email to a person
                                                    # who may not be contacted that way
     "done":       [key, ...],                      # already applied earlier
     "errors":     [{"rule", "record_id", "record_name", "why"}, ...],
     "cost":       {"api_calls": int, "remaining_daily": int | null}}

where ``action`` is :meth:`worker.actions.Action.to_dict` output: ``kind``, ``rule``,
``sop``, ``step``, ``target`` {sobject, id, name, stamp}, ``reason``, ``key`` and the
kind's own fields.

``org`` is the org the plan was made on, read from the org itself (its Organization Id)
or from a local org's manifest, with the user the worker signed in as (null for a local
org; ``username`` null where knowing it would cost an API call). ``apply`` applies a plan
only to that org, compared by Organization Id (never by ``name``, the mapping's label).
Version 1 plans named the org by the mapping's label only, which a sandbox and production
can share: they are refused, with a message saying to plan again.

``suppressed`` actions (:mod:`worker.suppression`) are shown, never applied nor recorded in
the ledger: the check is made again at every plan.

``deferred`` actions wait for the next run: a merge whose master or victim another rule
writes in the same plan (an update, a closure, a conversion, an approval) would be sent on
the values read before that write, and would clobber it (on the master) or delete it with
the victim. Applying records it as a ``conflict`` (``WRITTEN_IN_RUN``, the rule and record
named), which is not final: the next run plans the merge afresh from the values the other
rule left.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.actions import (
    Action,
    CloseRecord,
    ConvertLead,
    MergeRecords,
    Outcome,
    SubmitApproval,
    UpdateRecord,
    action_from_dict,
)
from worker.errors import PlanFileError
from worker.ports import OrgIdentity
from worker.records import RecordRef, id18
from worker.rules.base import AsOf, Evaluation, SkippedStep, Verdict

PLAN_SCHEMA = "sop-worker/plan"
PLAN_VERSION = 2
# The CSV view of a plan (``plan --format csv``): for reading, not for ``apply``.
PLAN_CSV_COLUMNS = (
    "key",
    "kind",
    "rule",
    "sop",
    "step",
    "sobject",
    "record_id",
    "record_name",
    "change",
    "reason",
)


@dataclass(frozen=True)
class Skip:
    action: Action
    why: str


@dataclass(frozen=True)
class RecordProblem:
    rule: str
    target: RecordRef
    why: str


@dataclass(frozen=True)
class Plan:
    org: OrgIdentity
    mapping: str
    as_of: dt.date
    generated_at: dt.datetime
    actions: tuple[Action, ...]
    skipped: tuple[Skip, ...] = ()
    superseded: tuple[Skip, ...] = ()
    suppressed: tuple[Skip, ...] = ()
    deferred: tuple[Skip, ...] = ()
    done: tuple[str, ...] = ()
    errors: tuple[RecordProblem, ...] = ()
    api_calls: int = 0
    remaining_daily: int | None = None
    as_of_instant: dt.datetime | None = None  # when the rules evaluated, in the org's zone

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "version": PLAN_VERSION,
            "org": {
                "id": self.org.org_id,
                "name": self.org.name,
                "user_id": self.org.user_id,
                "username": self.org.username,
            },
            "mapping": self.mapping,
            "as_of": self.as_of.isoformat(),
            "as_of_instant": self.as_of_instant.isoformat() if self.as_of_instant else None,
            "generated_at": self.generated_at.isoformat(),
            "actions": [a.to_dict() for a in self.actions],
            "skipped": [{"action": s.action.to_dict(), "why": s.why} for s in self.skipped],
            "superseded": [{"action": s.action.to_dict(), "why": s.why} for s in self.superseded],
            "suppressed": [{"action": s.action.to_dict(), "why": s.why} for s in self.suppressed],
            "deferred": [{"action": s.action.to_dict(), "why": s.why} for s in self.deferred],
            "done": list(self.done),
            "errors": [
                {
                    "rule": e.rule,
                    "record_id": e.target.id,
                    "record_name": e.target.name,
                    "sobject": e.target.sobject,
                    "why": e.why,
                }
                for e in self.errors
            ],
            "cost": {"api_calls": self.api_calls, "remaining_daily": self.remaining_daily},
        }

    def narrowed(self, *, rule: str | None = None, record_id: str | None = None) -> Plan:
        """The part of the plan for one rule and/or one record (the cost is left to the caller,
        who knows the sink)."""

        def keep(rule_id: str, target_id: str) -> bool:
            return rule in (None, rule_id) and record_id in (None, target_id)

        return dataclasses.replace(
            self,
            actions=tuple(a for a in self.actions if keep(a.rule, a.target.id)),
            skipped=tuple(s for s in self.skipped if keep(s.action.rule, s.action.target.id)),
            superseded=tuple(s for s in self.superseded if keep(s.action.rule, s.action.target.id)),
            suppressed=tuple(s for s in self.suppressed if keep(s.action.rule, s.action.target.id)),
            deferred=tuple(s for s in self.deferred if keep(s.action.rule, s.action.target.id)),
            done=tuple(k for k in self.done if keep(k.split(":", 1)[0], k.rsplit(":", 1)[-1])),
            errors=tuple(e for e in self.errors if keep(e.rule, e.target.id)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=str) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if data.get("schema") != PLAN_SCHEMA:
            raise PlanFileError("not a sop-worker plan file (no 'schema': 'sop-worker/plan')")
        if data.get("version") == 1:
            raise PlanFileError(
                "plan file version 1 does not record the Id of the org it was made on, so "
                "this worker cannot tell it from another org's plan: make the plan again "
                "(sop-worker plan --out FILE)"
            )
        if data.get("version") != PLAN_VERSION:
            raise PlanFileError(
                f"plan file version {data.get('version')!r}; this worker reads version "
                f"{PLAN_VERSION}: plan again"
            )
        try:
            org = data["org"]
            return cls(
                org=OrgIdentity(
                    org_id=id18(org["id"]),
                    name=str(org["name"]),
                    user_id=org.get("user_id"),
                    username=org.get("username"),
                ),
                mapping=data["mapping"],
                as_of=dt.date.fromisoformat(data["as_of"]),
                as_of_instant=(
                    dt.datetime.fromisoformat(data["as_of_instant"])
                    if data.get("as_of_instant")
                    else None
                ),
                generated_at=dt.datetime.fromisoformat(data["generated_at"]),
                actions=tuple(action_from_dict(a) for a in data["actions"]),
                skipped=_skips(data.get("skipped", ())),
                superseded=_skips(data.get("superseded", ())),
                suppressed=_skips(data.get("suppressed", ())),
                deferred=_skips(data.get("deferred", ())),
                done=tuple(data.get("done", ())),
                errors=tuple(
                    RecordProblem(
                        e["rule"],
                        RecordRef(e.get("sobject", ""), e["record_id"], e.get("record_name", "")),
                        e["why"],
                    )
                    for e in data.get("errors", ())
                ),
                api_calls=int(data.get("cost", {}).get("api_calls", 0)),
                remaining_daily=data.get("cost", {}).get("remaining_daily"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanFileError(f"plan file is malformed: {exc}") from None

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        what = "a plan file is the JSON that `sop-worker plan --out FILE.json` writes"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PlanFileError(f"{path}: no such plan file") from None
        except UnicodeDecodeError:
            raise PlanFileError(f"{path}: not a plan file (not UTF-8 text); {what}") from None
        except OSError as exc:
            raise PlanFileError(f"{path}: cannot read plan: {exc}") from None
        if text.lstrip("\ufeff").split("\n", 1)[0].strip() == ",".join(PLAN_CSV_COLUMNS):
            raise PlanFileError(
                f"{path} is the CSV view of a plan, for reading; apply takes the JSON plan "
                "file: sop-worker plan --out plan.json"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFileError(f"{path}: cannot read plan: {exc}; {what}") from None
        if not isinstance(data, dict):
            raise PlanFileError(f"{path}: not a plan file; {what}")
        return cls.from_dict(data)


def _skips(entries: Iterable[Mapping[str, Any]]) -> tuple[Skip, ...]:
    return tuple(Skip(action_from_dict(s["action"]), s["why"]) for s in entries)


def _rank(precedence: Sequence[str], rule_order: Sequence[str]) -> dict[str, int]:
    order = list(precedence) + [r for r in rule_order if r not in precedence]
    return {rule: i for i, rule in enumerate(order)}


def _skip_action(rule: str, target: RecordRef, step: SkippedStep, sop: str) -> Action:
    return UpdateRecord(
        rule=rule,
        sop=sop,
        step=step.step,
        target=target,
        reason=f"due {step.due.isoformat()}: {step.reason}",
        key=step.key,
        changes=(),
    )


def resolve_precedence(
    actions: Iterable[Action], rank: Mapping[str, int]
) -> tuple[list[Action], list[Skip]]:
    """Drop actions that a stronger rule's action on the same record overrides."""
    by_target: dict[str, list[Action]] = defaultdict(list)
    for action in actions:
        by_target[action.target.id].append(action)
    kept: list[Action] = []
    dropped: list[Skip] = []
    for group in by_target.values():
        group.sort(key=lambda a: rank.get(a.rule, len(rank)))
        closer: str | None = None
        fields_owner: dict[str, str] = {}
        for action in group:
            if closer and action.rule != closer:
                dropped.append(Skip(action, f"superseded: rule {closer} closes this record"))
                continue
            if isinstance(action, UpdateRecord):
                taken = [
                    c.field
                    for c in action.changes
                    if fields_owner.get(c.field, action.rule) != action.rule
                ]
                if taken:
                    owner = fields_owner[taken[0]]
                    dropped.append(Skip(action, f"superseded: rule {owner} sets {taken[0]}"))
                    continue
                for change in action.changes:
                    fields_owner[change.field] = action.rule
            if isinstance(action, (CloseRecord, ConvertLead)):
                closer = action.rule
            kept.append(action)
    return kept, dropped


# What another rule may write on a merge's records that the merge must not be sent beside.
_WRITES = (UpdateRecord, CloseRecord, ConvertLead, SubmitApproval, MergeRecords)


def defer_merges(actions: Sequence[Action]) -> tuple[list[Action], list[Skip]]:
    """Merges whose master or victim another rule's action writes in the same plan wait
    for the next run (all the merges into that master: they share its surviving values)."""
    writers: dict[str, list[Action]] = defaultdict(list)
    for action in actions:
        if isinstance(action, _WRITES):
            writers[action.target.id].append(action)
    why: dict[str, str] = {}
    for action in actions:
        if not isinstance(action, MergeRecords) or action.target.id in why:
            continue
        for record in action.checked_records():
            other = next((w for w in writers[record.id] if w.rule != action.rule), None)
            if other is not None:
                role = "the master" if record.id == action.target.id else f"victim {record.id}"
                why[action.target.id] = (
                    f"deferred to the next run: rule {other.rule} writes {role} in this run "
                    f"({other.summary()}); the merge is planned again from the values it leaves"
                )
                break
    kept = [a for a in actions if not (isinstance(a, MergeRecords) and a.target.id in why)]
    deferred = [
        Skip(a, why[a.target.id])
        for a in actions
        if isinstance(a, MergeRecords) and a.target.id in why
    ]
    return kept, deferred


def build_plan(
    evaluations: Sequence[Evaluation],
    *,
    org: OrgIdentity,
    mapping: str,
    as_of: AsOf | dt.date,
    generated_at: dt.datetime,
    precedence: Sequence[str],
    rule_order: Sequence[str],
    ledger: Mapping[str, Outcome],
    sops: Mapping[str, str],
) -> Plan:
    """Pure: evaluations + ledger state -> the plan."""
    rank = _rank(precedence, rule_order)
    proposed = [a for e in evaluations for a in e.actions]
    kept, dropped = resolve_precedence(proposed, rank)
    # A failed action is planned again next cycle (the cause may have been fixed); only an
    # applied or deliberately skipped key is final.
    final_states = {Outcome.APPLIED, Outcome.SKIPPED}
    done = tuple(sorted(a.key for a in kept if ledger.get(a.key) in final_states))
    todo, deferred = defer_merges([a for a in kept if ledger.get(a.key) not in final_states])
    # Stable: within one record, actions keep the order their rule emitted them in.
    todo.sort(key=lambda a: (rank.get(a.rule, len(rank)), a.target.sobject, a.target.id))
    skipped = [
        Skip(_skip_action(e.rule, e.target, s, sops.get(e.rule, "")), s.reason)
        for e in evaluations
        for s in e.skipped
        if s.key not in ledger
    ]
    errors = tuple(
        RecordProblem(e.rule, e.target, e.why) for e in evaluations if e.verdict is Verdict.ERROR
    )
    return Plan(
        org=org,
        mapping=mapping,
        as_of=as_of.date if isinstance(as_of, AsOf) else as_of,
        as_of_instant=as_of.instant if isinstance(as_of, AsOf) else None,
        generated_at=generated_at,
        actions=tuple(todo),
        skipped=tuple(skipped),
        superseded=tuple(d for d in dropped if ledger.get(d.action.key) not in final_states),
        suppressed=tuple(
            Skip(s.action, s.why)
            for e in evaluations
            for s in e.suppressed
            if ledger.get(s.action.key) not in final_states
        ),
        deferred=tuple(deferred),
        done=done,
        errors=errors,
    )
