"""What a rule is, what it returns, and the loop that runs it safely over every record.

A rule is two pure functions over cached data:

- ``candidates(snapshot, settings, org)``: the records the rule looks at;
- ``decide(record, snapshot, at, settings, org)``: one :class:`Evaluation` for a record.

A batch rule decides over a set of records together (a territory's new leads, a group of
duplicates): ``batches(snapshot, settings, org)`` yields :class:`Batch` es and
``decide_batch(batch, snapshot, at, settings, org)`` returns one evaluation per record of
the batch. Any state it needs (whose turn it is) is derived from the snapshot, so a lost
database never changes the next decision.

No I/O, no clock, no Salesforce: the evaluation instant ``at`` (an :class:`AsOf`: a
timezone-aware instant in the org's time zone and its date there) is passed in. A rule
that decides by day reads ``at.date``; one with minute-level deadlines reads ``at.instant``
and ``org.calendar``. :func:`evaluate_rule` runs ``decide`` per record and turns a
malformed record (``RecordError``) or a template with a missing value (``TemplateError``)
into an ``error`` verdict for that record alone. Every evaluation then passes the one
suppression check (:mod:`worker.suppression`): a new call or email for a person who may not
be contacted that way moves from ``actions`` to ``suppressed``, with the reason.
"""

from __future__ import annotations

import dataclasses
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
from worker.suppression import Suppressed, SuppressionCheck, suppress

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
    batch: str | None = None  # the batch this record was decided with (a batch rule's)
    # Actions the rule planned that the suppression check left out (worker.suppression).
    suppressed: tuple[Suppressed, ...] = ()


@dataclass(frozen=True)
class Batch:
    """Records a batch rule decides over together: a territory's new leads, a group of
    duplicates. ``key`` names the batch in explanations (``territory:West``)."""

    key: str
    records: tuple[Record, ...]


@dataclass(frozen=True)
class RuleFigure:
    """A figure a rule measures of its own work over the report's days (round-robin
    fairness), shown by ``sop-worker report`` beside the mapping's ``[report]`` figures.
    ``target`` is written as theirs are ('<=1'); ``value`` None: not measured, ``note`` why."""

    id: str
    label: str
    sop: str
    formula: str
    target: str
    value: float | None
    unit: str  # shown after the value: "%", "h", "leads"
    note: str = ""
    group: str = "qa"


@dataclass(frozen=True)
class Rule(Generic[S]):
    """A rule module's entry: its id, settings model, steps, and its two functions.

    A per-record rule gives ``candidates`` and ``decide``; a batch rule gives ``batches``
    (the groups of records it decides over) and ``decide_batch``, which returns one
    :class:`Evaluation` per record of the batch (actions on several records, each with its
    record's verdict and reason for ``explain``). ``figures``, optional, measures the rule's
    own work for ``sop-worker report`` (:class:`RuleFigure`).
    """

    id: str
    title: str
    settings_model: type[S]
    step_ids: tuple[str, ...]
    candidates: Callable[[Snapshot, S, OrgMapping], Iterable[Record]] | None = None
    decide: Callable[[Record, Snapshot, AsOf, S, OrgMapping], Evaluation] | None = None
    batches: Callable[[Snapshot, S, OrgMapping], Iterable[Batch]] | None = None
    decide_batch: Callable[[Batch, Snapshot, AsOf, S, OrgMapping], Iterable[Evaluation]] | None = (
        None
    )
    # The report's figures of this rule: (records, settings, org, first day, last day).
    figures: Callable[[Snapshot, S, OrgMapping, dt.date, dt.date], Iterable[RuleFigure]] | None = (
        None
    )

    def __post_init__(self) -> None:
        shapes = ((self.candidates, self.decide), (self.batches, self.decide_batch))
        given = [any(f is not None for f in pair) for pair in shapes]
        complete = [all(f is not None for f in pair) for pair in shapes]
        if given.count(True) != 1 or complete != given:
            raise TypeError(
                f"rule {self.id}: give candidates and decide, or batches and decide_batch"
            )


def evaluate_rule(
    rule: Rule[S], snapshot: Snapshot, as_of: AsOf | dt.date, settings: S, org: OrgMapping
) -> Iterator[Evaluation]:
    """Run one rule over its candidates (or batches); one bad record never stops the
    others, nor another batch. A bare date is evaluated at its start (:meth:`AsOf.start_of`).
    Each evaluation has passed the suppression check."""
    check = SuppressionCheck(snapshot, org)
    for evaluation in _evaluate(rule, snapshot, as_of, settings, org):
        if not evaluation.actions:
            yield evaluation
            continue
        kept, suppressed = suppress(evaluation.actions, check.check)
        if suppressed:
            evaluation = dataclasses.replace(
                evaluation, actions=kept, suppressed=evaluation.suppressed + suppressed
            )
        yield evaluation


def _evaluate(
    rule: Rule[S], snapshot: Snapshot, as_of: AsOf | dt.date, settings: S, org: OrgMapping
) -> Iterator[Evaluation]:
    at = as_of if isinstance(as_of, AsOf) else AsOf.start_of(as_of, org.org.zone)
    if rule.batches is not None and rule.decide_batch is not None:
        for batch in rule.batches(snapshot, settings, org):
            yield from _evaluate_batch(rule, rule.decide_batch, batch, snapshot, at, settings, org)
        return
    assert rule.candidates is not None
    assert rule.decide is not None
    for record in rule.candidates(snapshot, settings, org):
        try:
            yield rule.decide(record, snapshot, at, settings, org)
        except (RecordError, TemplateError) as exc:
            yield _error(rule.id, record, org, str(exc))


def _evaluate_batch(
    rule: Rule[S],
    decide_batch: Callable[[Batch, Snapshot, AsOf, S, OrgMapping], Iterable[Evaluation]],
    batch: Batch,
    snapshot: Snapshot,
    at: AsOf,
    settings: S,
    org: OrgMapping,
) -> Iterator[Evaluation]:
    """One evaluation per record of the batch, each naming the batch. A record that cannot
    be read stops its whole batch (the decision needs every member): that record's error,
    and the same reason on the others, so each says why nothing was done."""
    try:
        found = list(decide_batch(batch, snapshot, at, settings, org))
    except (RecordError, TemplateError) as exc:
        culprit = getattr(exc, "record_id", None)
        for record in batch.records:
            why = str(exc)
            if record.id != culprit:
                why = f"not decided: batch {batch.key} has a record that cannot be read: {exc}"
            yield dataclasses.replace(_error(rule.id, record, org, why), batch=batch.key)
        return
    members = {r.id: r for r in batch.records}
    seen: set[str] = set()
    for evaluation in found:
        if evaluation.target.id not in members or evaluation.target.id in seen:
            raise ValueError(
                f"rule {rule.id}: batch {batch.key} returned a verdict on "
                f"{evaluation.target.id}, which is not a record of the batch or has one already"
            )
        seen.add(evaluation.target.id)
        yield dataclasses.replace(evaluation, batch=batch.key)
    for record in batch.records:
        if record.id not in seen:
            raise ValueError(
                f"rule {rule.id}: batch {batch.key} returned no verdict on {record.id}"
            )


def _error(rule_id: str, record: Record, org: OrgMapping, why: str) -> Evaluation:
    return Evaluation(
        rule=rule_id,
        target=RecordRef(record.sobject, record.id, _safe_name(record, org)),
        verdict=Verdict.ERROR,
        why=why,
    )


def _safe_name(record: Record, org: OrgMapping) -> str:
    value = record.get(org.name_field(record.sobject))
    return value if isinstance(value, str) else ""
