"""SOP 004 lead scoring: a 0-100 score from three point tables, its category and a breakdown.

Implements Lead Management step 3 of the SOP named by ``sop_file`` in ``[rules.lead_scoring]``
(``004_decc60c4b5a2963f.txt``, "3. Lead Scoring (Immediate)"):

- steps 1-3, the demographic (0-30), firmographic (0-30) and behavioural (0-40) scores: each
  a point table in the mapping (``groups``), summed and capped at the group's ``cap``. A row
  matches a lead field, the lead's Tasks logged by people, or its responded campaign
  memberships; behaviour counts only within ``behaviour_window_days`` of the evaluation day.
  Rows sharing a ``tier`` are alternatives: only the highest-scoring match of a tier counts
  (1,000+ employees, else 200+, else 50+).
- step 4, the total: the three capped groups summed; the caps add up to 100 (checked at load).
- step 5, the category: the first band of ``bands`` (highest minimum first) the total reaches.

The score, the category and a short breakdown (``D22 F18 B35: VP +12, Software +10, demo
request +20``) are written to the mapped Lead fields, only when one of them changes.
:func:`score_lead` is pure and shared: ``lead_routing`` writes the same values in its one
update of a lead it routes (so a routed lead gets one update, not two).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from worker import schema
from worker.declarations import FieldOf, FieldValues, ValuesOf
from worker.keys import task_key
from worker.mapping import OrgMapping, RuleSettings, StrictModel
from worker.records import Record, Snapshot
from worker.rules.base import AsOf, Evaluation, Rule, Verdict
from worker.rules.kit import Emit, in_scope

RULE_ID = "lead_scoring"
STEPS = ("score",)
GROUP_CAPS_TOTAL = 100  # "Sum total score (0-100 points)"


class PointRow(StrictModel):
    """One line of a point table: ``points`` when ``field`` matches, by exactly one of
    ``equals``, ``contains``, ``at_least`` and ``is_set``."""

    label: str = Field(min_length=1, description="Shown in the breakdown: 'VP +12'.")
    points: int = Field(ge=0, description="Points for a match (a table never goes negative).")
    source: Literal["Lead", "Task", "CampaignMember"] = Field(
        default="Lead",
        description="Lead: a field of the lead; Task: a Task a person logged on the lead; "
        "CampaignMember: a campaign membership of the lead that has responded.",
    )
    field: Annotated[str, FieldOf("source")] = Field(
        min_length=1, description="The field compared (dotted paths allowed)."
    )
    equals: Annotated[tuple[str, ...], ValuesOf("field")] = Field(
        default=(), description="Matches when the field holds one of these values."
    )
    contains: tuple[str, ...] = Field(
        default=(),
        description="Matches when the field holds one of these as whole words, in any case.",
    )
    at_least: Decimal | None = Field(default=None, description="A number at least this.")
    is_set: bool = Field(default=False, description="Matches when the field is not empty.")
    dated_by: Annotated[str, FieldOf("source")] = Field(
        default="",
        description="For a lead row: a date field that must fall within the behaviour window "
        "(empty: the row is not windowed). Tasks are dated by ActivityDate (else "
        "CreatedDate), campaign responses by FirstRespondedDate (else CreatedDate).",
    )
    tier: str = Field(
        default="", description="Rows of one tier are alternatives: the best match counts."
    )

    @model_validator(mode="after")
    def _one_test(self) -> PointRow:
        given = [
            name
            for name, value in (
                ("equals", self.equals),
                ("contains", self.contains),
                ("at_least", self.at_least is not None),
                ("is_set", self.is_set),
            )
            if value
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of equals, contains, at_least, is_set"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.source != schema.LEAD and self.dated_by:
            raise ValueError(
                "dated_by is for Lead rows (Tasks and campaign responses have their own dates)"
            )
        return self


class PointGroup(StrictModel):
    """A score group (demographic, firmographic, behavioural): rows summed, then capped."""

    letter: str = Field(min_length=1, max_length=3, description="Its letter in the breakdown.")
    cap: int = Field(ge=0, description="The group's maximum (the SOP's 30/30/40).")
    rows: tuple[PointRow, ...] = Field(min_length=1)


class LeadScoringSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = STEPS
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {schema.LEAD: (schema.IS_CONVERTED,)}

    lead_scope: Annotated[dict[str, tuple[str, ...]], FieldValues(schema.LEAD)] = Field(
        min_length=1,
        description="Lead field (dotted paths allowed) -> allowed values, ANDed: SOP 004's "
        "leads, e.g. RecordType.DeveloperName = Sales.",
    )
    score_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        description="Number field holding the 0-100 score."
    )
    category_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        description="Picklist holding the score's category."
    )
    breakdown_field: Annotated[str, FieldOf(schema.LEAD, write=True)] = Field(
        description="Text field holding the breakdown."
    )
    breakdown_max_chars: int = Field(default=255, ge=20, le=131072)
    bands: Annotated[dict[str, int], ValuesOf("category_field")] = Field(
        min_length=1,
        description="Category -> the lowest score in it (the SOP's 80/60/40/20/0).",
    )
    behaviour_window_days: int = Field(ge=1, description="How far back behaviour counts.")
    groups: dict[str, PointGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _tables_add_up(self) -> LeadScoringSettings:
        caps = sum(g.cap for g in self.groups.values())
        if caps != GROUP_CAPS_TOTAL:
            shown = ", ".join(f"{name} {g.cap}" for name, g in self.groups.items())
            raise ValueError(f"groups: the caps add up to {caps} ({shown}), not 100")
        if 0 not in self.bands.values():
            raise ValueError("bands: no band starts at 0, so a low score has no category")
        if any(not 0 <= low <= GROUP_CAPS_TOTAL for low in self.bands.values()):
            raise ValueError("bands: a band's lowest score must be within 0-100")
        return self

    @functools.cached_property
    def _ready(self) -> ScoreTable:
        return ScoreTable.of(self)

    @property
    def table(self) -> ScoreTable:
        """The tables made ready to match, once per loaded mapping rather than once per
        lead. A copy given other ``groups`` or ``bands`` (``model_copy`` keeps what the
        original cached) has its own made."""
        table = self._ready
        return table if table.made_from(self) else ScoreTable.of(self)

    def category(self, total: int) -> str:
        return self.table.category(total)

    def needs(self) -> dict[str, set[str]]:
        """The annotated fields, and what a campaign row reads to find the lead's responses."""
        out = super().needs()
        if any(r.source == schema.CAMPAIGN_MEMBER for g in self.groups.values() for r in g.rows):
            out[schema.CAMPAIGN_MEMBER].update(_RESPONSE_FIELDS)
        return out


# What a campaign row reads of a CampaignMember beside its own field.
_RESPONSE_FIELDS = (schema.LEAD_ID, "HasResponded", "FirstRespondedDate", schema.CREATED_DATE)


@dataclass(frozen=True, slots=True, eq=False)  # by identity: two rows may be alike
class _Row:
    label: str
    points: int
    tier: str
    item: tuple[str, int]  # (label, points), as the score lists it


@dataclass(frozen=True, slots=True)
class _Read:
    """Consecutive rows of a group that read the same field the same way and test it the
    same way (``equals``, ``contains``, ``at_least`` or ``is_set``), ready to match: the
    field is read once for them all, as each row would read it, and the values of
    ``equals`` rows are a lookup."""

    source: str
    field: str
    dated_by: str
    test: str  # equals, contains, at_least or is_set
    rows: tuple[_Row, ...]
    by_value: Mapping[str | Decimal, tuple[_Row, ...]]  # equals: value -> its rows, in order
    patterns: tuple[tuple[re.Pattern[str], _Row], ...]  # contains
    limits: tuple[tuple[Decimal, _Row], ...]  # at_least

    @classmethod
    def group(cls, rows: Iterable[PointRow]) -> tuple[_Read, ...]:
        runs: list[tuple[tuple[str, str, str, str], list[PointRow]]] = []
        for row in rows:
            test = next(
                name
                for name, given in (
                    ("equals", row.equals),
                    ("contains", row.contains),
                    ("at_least", row.at_least is not None),
                    ("is_set", row.is_set),
                )
                if given
            )
            how = (row.source, row.field, row.dated_by, test)
            if runs and runs[-1][0] == how:
                runs[-1][1].append(row)
            else:
                runs.append((how, [row]))
        return tuple(cls.of(*how, run) for how, run in runs)

    @classmethod
    def of(cls, source: str, field: str, dated_by: str, test: str, run: list[PointRow]) -> _Read:
        ready = [_Row(r.label, r.points, r.tier, (r.label, r.points)) for r in run]
        by_value: dict[str | Decimal, tuple[_Row, ...]] = {}
        for row, r in zip(run, ready, strict=True):
            for value in dict.fromkeys(row.equals):
                by_value[value] = (*by_value.get(value, ()), r)
        return cls(
            source=source,
            field=field,
            dated_by=dated_by,
            test=test,
            rows=tuple(ready),
            by_value=by_value,
            patterns=tuple(
                (_words(row.contains), r) for row, r in zip(run, ready, strict=True) if row.contains
            ),
            limits=tuple(
                (row.at_least, r)
                for row, r in zip(run, ready, strict=True)
                if row.at_least is not None
            ),
        )

    def value(self, record: Record) -> str | Decimal | None:
        if self.test == "at_least":
            return record.number(self.field)
        return record.text(self.field)

    def matched(self, value: str | Decimal) -> Sequence[_Row]:
        """The rows a set value matches, in order (a number: an ``at_least`` read's)."""
        if self.test == "equals":
            return self.by_value.get(value, ())
        if self.test == "is_set":
            return self.rows
        if isinstance(value, Decimal):
            return [row for limit, row in self.limits if value >= limit]
        return [row for words, row in self.patterns if words.search(value)]

    def collect(self, found: tuple[Record, ...], hits: list[_Row]) -> None:
        """Append the rows that one of the lead's Tasks (or responses) matches to ``hits``."""
        for row in self.rows:  # each row looks through them until one matches
            if any((v := self.value(r)) is not None and row in self.matched(v) for r in found):
                hits.append(row)


@dataclass(frozen=True)
class ScoreTable:
    """The settings' point tables and bands as scoring reads them, built once per loaded
    mapping rather than once per lead: (letter, cap, rows) per group, the bands highest
    first."""

    groups: tuple[tuple[str, int, tuple[_Read, ...]], ...]
    bands: tuple[tuple[str, int], ...]
    # What it was made from, by identity: a copy of the settings with other tables is seen.
    source: tuple[object, object]

    @classmethod
    def of(cls, s: LeadScoringSettings) -> ScoreTable:
        return cls(
            groups=tuple((g.letter, g.cap, _Read.group(g.rows)) for g in s.groups.values()),
            bands=tuple(sorted(s.bands.items(), key=lambda kv: -kv[1])),
            source=(s.groups, s.bands),
        )

    def made_from(self, s: LeadScoringSettings) -> bool:
        return self.source[0] is s.groups and self.source[1] is s.bands

    def category(self, total: int) -> str:
        """The first band (highest first) the total reaches."""
        return next(name for name, low in self.bands if total >= low)


@dataclass(frozen=True)
class Score:
    """A lead's score: per group (capped), the matched rows, the total and category."""

    groups: tuple[tuple[str, int], ...]  # (letter, capped points)
    items: tuple[tuple[str, int], ...]  # (row label, points) that counted
    total: int
    category: str
    capped: tuple[str, ...] = ()  # letters of groups whose rows passed the cap

    def breakdown(self, max_chars: int) -> str:
        head = " ".join([f"{letter}{points}" for letter, points in self.groups])
        parts = ", ".join([f"{label} +{points}" for label, points in self.items])
        text = f"{head}: {parts}" if parts else f"{head}: no points"
        return text if len(text) <= max_chars else text[: max_chars - 1] + "…"

    def values(self, s: LeadScoringSettings) -> dict[str, object]:
        """The lead fields this score is written to."""
        return {
            s.score_field: self.total,
            s.category_field: self.category,
            s.breakdown_field: self.breakdown(s.breakdown_max_chars),
        }


def open_in_scope(lead: Record, scope: Mapping[str, tuple[str, ...]]) -> bool:
    """An unconverted lead of ``scope``."""
    return not lead.flag(schema.IS_CONVERTED) and in_scope(lead, scope)


def score_lead(
    lead: Record, snapshot: Snapshot, day: dt.date, s: LeadScoringSettings, org: OrgMapping
) -> Score:
    """The lead's score on ``day`` (pure)."""
    table = s.table
    since = day - dt.timedelta(days=s.behaviour_window_days)
    # The lead's Tasks and responses in the window, each gathered when a row first asks.
    behaviour: dict[str, tuple[Record, ...]] = {}
    groups: list[tuple[str, int]] = []
    items: list[tuple[str, int]] = []
    capped: list[str] = []
    for letter, cap, reads in table.groups:
        hits: list[_Row] = []
        for read in reads:
            if read.source != schema.LEAD:
                found = behaviour.get(read.source)
                if found is None:
                    found = behaviour[read.source] = _behaviour(
                        read.source, lead, snapshot, since, day, org
                    )
                if found:
                    read.collect(found, hits)
            elif not read.dated_by or _within(lead.date(read.dated_by), since, day):
                value = read.value(lead)
                if value is not None:
                    hits.extend(read.matched(value))
        best: dict[str, _Row] = {}
        for t in hits:
            if t.tier and (t.tier not in best or t.points > best[t.tier].points):
                best[t.tier] = t
        raw = 0
        for t in hits:  # in the table's order; by identity, as two rows may be alike
            if not t.tier or best[t.tier] is t:
                raw += t.points
                items.append(t.item)
        if raw > cap:
            capped.append(letter)
        groups.append((letter, min(raw, cap)))
    total = sum(points for _, points in groups)
    return Score(tuple(groups), tuple(items), total, table.category(total), tuple(capped))


def _behaviour(
    source: str, lead: Record, snapshot: Snapshot, since: dt.date, day: dt.date, org: OrgMapping
) -> tuple[Record, ...]:
    """The lead's Tasks logged by people (``source`` Task) or its campaign responses, dated
    within the window (``since`` to ``day``)."""
    if source == schema.TASK:
        return tuple(
            t
            for t in snapshot.tasks_for(lead.id)
            if not task_key(t, org)
            and _within(t.date(schema.ACTIVITY_DATE) or t.date(schema.CREATED_DATE), since, day)
        )
    return tuple(
        m
        for m in snapshot.children(schema.CAMPAIGN_MEMBER, schema.LEAD_ID, lead.id)
        if m.flag("HasResponded")
        and _within(m.date("FirstRespondedDate") or m.date(schema.CREATED_DATE), since, day)
    )


def _within(when: dt.date | None, since: dt.date, day: dt.date) -> bool:
    return when is not None and since <= when <= day


@functools.cache
def _words(phrases: tuple[str, ...]) -> re.Pattern[str]:
    """Any of ``phrases`` as whole words in any case: "CTO" is in "CTO, Acme", not in
    "Director"."""
    alternatives = "|".join(re.escape(p) for p in phrases)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def score_key(values: Mapping[str, object], day: dt.date) -> str:
    """The step key of writing these values on ``day``: a new score is a new key, so an
    earlier score's write (applied, or superseded by lead_routing's) never hides it."""
    digest = hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()[:10]
    return f"score-{day.isoformat()}-{digest}"


def candidates(snapshot: Snapshot, s: LeadScoringSettings, org: OrgMapping) -> Iterable[Record]:
    return (r for r in snapshot.of(schema.LEAD) if open_in_scope(r, s.lead_scope))


def decide(
    lead: Record, snapshot: Snapshot, at: AsOf, s: LeadScoringSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on(RULE_ID, s, org, lead)
    score = score_lead(lead, snapshot, at.date, s, org)
    values = score.values(s)
    text = values[s.breakdown_field]
    why = f"score {score.total} ({score.category}): {text}"
    if score.capped:
        why += f"; capped: {', '.join(score.capped)}"
    action = emit.update("score", values, reason=why, step_key=score_key(values, at.date))
    if action is None:
        return Evaluation(RULE_ID, emit.target, Verdict.DONE, f"{why}; already written")
    return Evaluation(RULE_ID, emit.target, Verdict.ACT, why, (action,))


RULE: Rule[LeadScoringSettings] = Rule(
    id=RULE_ID,
    title="SOP 004 lead scoring",
    settings_model=LeadScoringSettings,
    step_ids=STEPS,
    candidates=candidates,
    decide=decide,
)
