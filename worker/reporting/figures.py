"""SOP figures (KPIs, QA checks, data quality) computed from the cached records.

Pure: a figure's settings (:class:`~worker.reporting.config.Figure`), the cached records,
the rules the mapping enables and the report's period in; a :class:`FigureResult` out.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from worker.errors import RecordError
from worker.records import Record, Snapshot
from worker.reporting.config import Condition, Figure, parse_target
from worker.rules.base import RuleFigure

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"
_KEY_CHARS = re.compile(r"[^a-z0-9@]")


@dataclass(frozen=True)
class FigureResult:
    id: str
    label: str
    group: str
    sop: str
    formula: str
    target: str
    status: str  # met, missed or not measured
    value: float | None
    unit: str  # "%", "h", or what a rule's figure counts ("leads")
    numerator: int | None = None
    denominator: int | None = None
    note: str = ""

    def shown(self) -> str:
        """The value as the page shows it (and the browser test reads)."""
        if self.value is None:
            return NOT_MEASURED
        return f"{self.value:.1f}{'%' if self.unit == '%' else ' ' + self.unit}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "group": self.group,
            "sop": self.sop,
            "formula": self.formula,
            "target": self.target,
            "status": self.status,
            "value": None if self.value is None else round(self.value, 1),
            "shown": self.shown(),
            "unit": self.unit,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "note": self.note,
        }


@dataclass(frozen=True)
class Period:
    """The report's days, first to last inclusive, and the instant it is made at."""

    first: dt.date
    last: dt.date
    now: dt.datetime  # aware

    def holds(self, when: dt.datetime | dt.date) -> bool:
        day = when.astimezone(self.now.tzinfo).date() if isinstance(when, dt.datetime) else when
        return self.first <= day <= self.last


def compute(
    figure_id: str,
    figure: Figure,
    snapshot: Snapshot,
    enabled_rules: Iterable[str],
    period: Period,
) -> FigureResult:
    target = figure.parsed_target()
    unit = "h" if figure.kind == "elapsed" and figure.within_hours is None else "%"

    def result(
        value: float | None, num: int | None = None, den: int | None = None, note: str = ""
    ) -> FigureResult:
        status = NOT_MEASURED if value is None else MET if target.met(value) else MISSED
        return FigureResult(
            figure_id,
            figure.label,
            figure.group,
            figure.sop,
            figure.formula(),
            target.text(),
            status,
            value,
            unit,
            num,
            den,
            note,
        )

    enabled = set(enabled_rules)
    absent = [r for r in figure.requires_rules if r not in enabled]
    if absent:
        return result(None, note=f"rule(s) {', '.join(absent)} not enabled in this mapping")
    records = snapshot.of(figure.sobject)
    if not records:
        return result(None, note=f"no {figure.sobject} records in the cache")
    cached = set().union(*(r.fields for r in records))
    missing = sorted(f for f in figure.needed_fields() if f.split(".")[0] not in cached)
    if missing:
        return result(
            None,
            note=f"{figure.sobject} field(s) {', '.join(missing)} not cached (a rule must "
            f"read them, or list them in [objects.{figure.sobject}] fields)",
        )
    population: list[Record] = []
    unreadable: list[str] = []
    for record in records:
        try:
            if _meets(record, figure.where) and _in_period(record, figure, period):
                for name in (
                    (figure.start_field, figure.end_field) if figure.kind == "elapsed" else ()
                ):
                    record.datetime(name)
                population.append(record)
        except RecordError as exc:
            unreadable.append(str(exc))
    note = (
        f"{len(unreadable)} record(s) left out, unreadable: {unreadable[0]}" if unreadable else ""
    )
    if not population:
        return result(None, 0, 0, note=note or "no records in the population this period")
    if figure.kind == "share":
        hits = sum(1 for r in population if _meets(r, figure.match))
        return result(100 * hits / len(population), hits, len(population), note)
    if figure.kind == "completeness":
        cells = len(population) * len(figure.fields)
        filled = sum(1 for r in population for f in figure.fields if _filled(r.get(f)))
        return result(100 * filled / cells, filled, cells, note)
    if figure.kind == "duplicates":
        dupes = _duplicates(population, figure.keys)
        return result(100 * dupes / len(population), dupes, len(population), note)
    value, num, den = _elapsed(figure, population, period)
    if value is None:
        note = note or f"no record has {figure.end_field} yet, or none is due"
    return result(value, num, den, note)


def from_rule(figure: RuleFigure) -> FigureResult:
    """A rule's own figure (:class:`~worker.rules.base.RuleFigure`) as the report shows one."""
    target = parse_target(figure.target)
    status = NOT_MEASURED if figure.value is None else MET if target.met(figure.value) else MISSED
    return FigureResult(
        figure.id,
        figure.label,
        figure.group,
        figure.sop,
        figure.formula,
        target.text(),
        status,
        figure.value,
        figure.unit,
        note=figure.note,
    )


def _in_period(record: Record, figure: Figure, period: Period) -> bool:
    if not figure.since_field:
        return True
    name = figure.since_field
    when = record.datetime(name) if "T" in str(record.get(name)) else record.date(name)
    return when is not None and period.holds(when)


def _filled(value: Any) -> bool:
    return value is not None and value != ""


def _meets(record: Record, condition: Condition) -> bool:
    for name, allowed in condition.equals.items():
        if record.get(name) not in allowed:
            return False
    if not all(_filled(record.get(name)) for name in condition.filled):
        return False
    if any(_filled(record.get(name)) for name in condition.empty):
        return False
    return all(
        str(record.get(name) or "").startswith(prefix)
        for name, prefix in condition.starts_with.items()
    )


def _duplicates(records: list[Record], keys: Iterable[str]) -> int:
    """Records that share the normalised value of any key field with another record."""
    dupes: set[str] = set()
    for key in keys:
        by_value: dict[str, list[str]] = {}
        for record in records:
            value = _KEY_CHARS.sub("", str(record.get(key) or "").lower())
            if value:
                by_value.setdefault(value, []).append(record.id)
        for ids in by_value.values():
            if len(ids) > 1:
                dupes.update(ids)
    return len(dupes)


def _elapsed(
    figure: Figure, records: list[Record], period: Period
) -> tuple[float | None, int, int]:
    """(value, counted, out of): the median hours, or the share of records whose end came
    within ``within_hours`` (one with no end yet counts, as missed, once that has passed)."""
    hours: list[float] = []
    late_open = 0
    for record in records:
        start = record.datetime(figure.start_field)
        if start is None:
            continue
        end = record.datetime(figure.end_field)
        if end is not None:
            hours.append((end - start).total_seconds() / 3600)
        elif (
            figure.within_hours is not None
            and (period.now - start).total_seconds() / 3600 > figure.within_hours
        ):
            late_open += 1
    if figure.within_hours is None:
        if not hours:
            return None, 0, 0
        return statistics.median(hours), len(hours), len(hours)
    counted = len(hours) + late_open
    if not counted:
        return None, 0, 0
    within = sum(1 for h in hours if h <= figure.within_hours)
    return 100 * within / counted, within, counted
