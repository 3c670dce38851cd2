"""What a rule is, what it returns, and the loop that runs it safely over every record.

A rule is two pure functions over cached data:

- ``candidates(snapshot, settings, org)``: the records the rule looks at;
- ``decide(record, snapshot, at, settings, org)``: one :class:`Evaluation` for a record.

No I/O, no clock, no Salesforce: the evaluation instant ``at`` (an :class:`AsOf`: a
timezone-aware instant in the org's time zone and its date there) is passed in. A rule
that decides by day reads ``at.date``; one with minute-level deadlines reads ``at.instant``
and ``org.calendar``. :func:`evaluate_rule` runs ``decide`` per record and turns a
malformed record (``RecordError``) or a template with a missing value (``TemplateError``)
into an ``error`` verdict for that record alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

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
class AsOf:
    """When rules evaluate: an aware instant in the org's time zone, and its date there."""

    instant: dt.datetime

    def __post_init__(self) -> None:
        if self.instant.tzinfo is None or self.instant.utcoffset() is None:
            raise ValueError(f"the as-of instant must be timezone-aware: {self.instant}")

    @property
    def date(self) -> dt.date:
        return self.instant.date()

    @classmethod
    def on(cls, day: dt.date, now: dt.datetime, zone: ZoneInfo) -> AsOf:
        """``now`` in ``zone`` when it falls on ``day``; else ``day`` at ``now``'s time of
        day there (``--as-of DATE`` evaluates that day as if the run were made then)."""
        local = now.astimezone(zone)
        if local.date() == day:
            return cls(local)
        return cls(dt.datetime.combine(day, local.time(), tzinfo=zone))

    @classmethod
    def start_of(cls, day: dt.date, zone: ZoneInfo) -> AsOf:
        """Midnight at the start of ``day`` in ``zone``: a bare date given to
        :func:`evaluate_rule`."""
        return cls(dt.datetime.combine(day, dt.time(0), tzinfo=zone))


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
    # A minute-level deadline of the next step (its date is ``next_due``), when it has one.
    next_due_at: dt.datetime | None = None


@dataclass(frozen=True)
class Rule(Generic[S]):
    """A rule module's entry: its id, settings model, steps, and its two functions."""

    id: str
    title: str
    settings_model: type[S]
    step_ids: tuple[str, ...]
    candidates: Callable[[Snapshot, S, OrgMapping], Iterable[Record]]
    decide: Callable[[Record, Snapshot, AsOf, S, OrgMapping], Evaluation]


def evaluate_rule(
    rule: Rule[S], snapshot: Snapshot, as_of: AsOf | dt.date, settings: S, org: OrgMapping
) -> Iterator[Evaluation]:
    """Run one rule over its candidates; one bad record never stops the others. A bare
    date is evaluated at its start (:meth:`AsOf.start_of`)."""
    at = as_of if isinstance(as_of, AsOf) else AsOf.start_of(as_of, org.org.zone)
    for record in rule.candidates(snapshot, settings, org):
        try:
            yield rule.decide(record, snapshot, at, settings, org)
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
