"""What a rule is, what it returns, and the loop that runs it safely over every record.

A rule is two pure functions over cached data:

- ``candidates(snapshot, settings, org)``: the records the rule looks at;
- ``decide(record, snapshot, as_of, settings, org)``: one :class:`Evaluation` for a record.

No I/O, no clock, no Salesforce: ``as_of`` is passed in. :func:`evaluate_rule` runs
``decide`` per record and turns a malformed record (``RecordError``) or a template with a
missing value (``TemplateError``) into an ``error`` verdict for that record alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from worker.actions import Action
from worker.errors import RecordError, TemplateError
from worker.mapping import OrgMapping, RuleSettings
from worker.records import Record, RecordRef, Snapshot

S = TypeVar("S", bound=RuleSettings)


class Verdict(StrEnum):
    ACT = "act"  # actions are due now
    NOT_DUE = "not_due"  # in scope, nothing due until next_due
    EXCLUDED = "excluded"  # out of scope (resolved, closed, opted out, ...)
    DONE = "done"  # the cadence has ended for this record
    ERROR = "error"  # the record could not be evaluated


@dataclass(frozen=True)
class SkippedStep:
    """A step that fell due while the worker was not running and is deliberately not done."""

    key: str
    step: str
    due: dt.date
    reason: str


@dataclass(frozen=True)
class Evaluation:
    rule: str
    target: RecordRef
    verdict: Verdict
    why: str
    actions: tuple[Action, ...] = ()
    next_due: dt.date | None = None
    next_step: str | None = None
    skipped: tuple[SkippedStep, ...] = ()


@dataclass(frozen=True)
class Rule(Generic[S]):
    """A rule module's entry: its id, settings model, steps, and its two functions."""

    id: str
    title: str
    settings_model: type[S]
    step_ids: tuple[str, ...]
    candidates: Callable[[Snapshot, S, OrgMapping], Iterable[Record]]
    decide: Callable[[Record, Snapshot, dt.date, S, OrgMapping], Evaluation]


def evaluate_rule(
    rule: Rule[S], snapshot: Snapshot, as_of: dt.date, settings: S, org: OrgMapping
) -> Iterator[Evaluation]:
    """Run one rule over its candidates; one bad record never stops the others."""
    for record in rule.candidates(snapshot, settings, org):
        try:
            yield rule.decide(record, snapshot, as_of, settings, org)
        except (RecordError, TemplateError) as exc:
            yield Evaluation(
                rule=rule.id,
                target=RecordRef(record.sobject, record.id, _safe_name(record, org)),
                verdict=Verdict.ERROR,
                why=str(exc),
            )


def _safe_name(record: Record, org: OrgMapping) -> str:
    value = record.get(org.name_field(record.sobject))
    return value if isinstance(value, str) else ""
