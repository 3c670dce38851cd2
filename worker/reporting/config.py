"""The mapping's ``[report]`` section: the report's period, the API allowance, and the
KPIs, QA checks and data-quality figures (SOP 004) with their formulas and targets.

Each figure is computed from the cached records by one of a few kinds (see
:class:`Figure`); its formula is written out from its settings, so the page says exactly
what was counted. A figure whose rules are not enabled or whose fields are not cached is
"not measured", with the reason, never a made-up number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TARGET = re.compile(r"^\s*(<=|>=|<|>|=)\s*(\d+(?:\.\d+)?)\s*(%|h)?\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Condition(_Strict):
    """Which records count (every part must hold): a field's value among ``equals``, a
    field filled or empty, a text (an Id) starting with a prefix (``005``: a user, not a
    queue)."""

    equals: dict[str, tuple[str | bool | int, ...]] = Field(default_factory=dict)
    filled: tuple[str, ...] = ()
    empty: tuple[str, ...] = ()
    starts_with: dict[str, str] = Field(default_factory=dict)

    def fields(self) -> set[str]:
        return {*self.equals, *self.filled, *self.empty, *self.starts_with}

    def text(self) -> str:
        parts = [f"{f} in ({', '.join(_shown(v) for v in vs)})" for f, vs in self.equals.items()]
        parts += [f"{f} filled" for f in self.filled]
        parts += [f"{f} empty" for f in self.empty]
        parts += [f"{f} starts with {p}" for f, p in self.starts_with.items()]
        return " and ".join(parts)


def _shown(value: str | bool | int) -> str:
    """A value as the mapping writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Target:
    op: str
    value: float
    unit: str  # "%", "h" or ""

    def met(self, value: float) -> bool:
        return {
            "<": value < self.value,
            "<=": value <= self.value,
            ">": value > self.value,
            ">=": value >= self.value,
            "=": value == self.value,
        }[self.op]

    def text(self) -> str:
        number = f"{self.value:g}"
        return f"{self.op} {number}{' h' if self.unit == 'h' else self.unit}"


def parse_target(text: str) -> Target:
    """'>35%', '<1h', '<=1' as a :class:`Target` (ValueError for another shape)."""
    found = _TARGET.match(text)
    if found is None:
        raise ValueError(f"not a target: {text!r} (an operator and a number: '>35%', '<=1')")
    return Target(found.group(1), float(found.group(2)), found.group(3) or "")


class Figure(_Strict):
    """One KPI, QA check or data-quality figure.

    Kinds (each over the cached records of ``sobject`` that meet ``where``, and, with
    ``since_field``, whose value of it falls in the report's period):

    - ``share``: the percentage of them that meet ``match``;
    - ``completeness``: the percentage of their ``fields`` that are filled;
    - ``duplicates``: the percentage of them sharing the value of a ``keys`` field with
      another (compared lower case, letters, digits and @ only);
    - ``elapsed``: hours from ``start_field`` to ``end_field``: their median, or with
      ``within_hours`` the percentage whose end came within that many hours (a record
      with no end yet counts once that time has passed).
    """

    label: str
    group: Literal["kpi", "qa", "data_quality"] = "kpi"
    sop: str = Field(default="", description="Where the SOP states it, shown on the page.")
    kind: Literal["share", "completeness", "duplicates", "elapsed"]
    sobject: str
    target: str = Field(description="'>35%', '<1h', '=100%': the SOP's target.")
    where: Condition = Condition()
    since_field: str = ""
    match: Condition = Condition()
    fields: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    start_field: str = ""
    end_field: str = ""
    within_hours: float | None = Field(default=None, gt=0)
    requires_rules: tuple[str, ...] = Field(
        default=(),
        description="Rules whose work the figure measures: not measured unless each is "
        "enabled in this mapping.",
    )

    @field_validator("target")
    @classmethod
    def _target_shape(cls, value: str) -> str:
        if not _TARGET.match(value):
            raise ValueError("write the target as an operator and a number: '>35%', '<1h', '=100%'")
        return value

    @model_validator(mode="after")
    def _kind_settings(self) -> Figure:
        needed = {
            "share": ("match",),
            "completeness": ("fields",),
            "duplicates": ("keys",),
            "elapsed": ("start_field", "end_field"),
        }[self.kind]
        missing = [name for name in needed if not getattr(self, name)]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(missing)}")
        return self

    def parsed_target(self) -> Target:
        return parse_target(self.target)

    def needed_fields(self) -> set[str]:
        """Every field the figure reads: each must be cached for it to be measured."""
        out = self.where.fields() | self.match.fields() | set(self.fields) | set(self.keys)
        out |= {f for f in (self.since_field, self.start_field, self.end_field) if f}
        return out

    def formula(self) -> str:
        """The formula as the page writes it."""
        base = self.sobject + " records"
        if self.where.text():
            base += f" with {self.where.text()}"
        if self.since_field:
            base += f" whose {self.since_field} is in the period"
        if self.kind == "share":
            return f"({base} that have {self.match.text()}) ÷ ({base}) × 100"
        if self.kind == "completeness":
            return (
                f"(filled values of {', '.join(self.fields)}) ÷ ({base} × {len(self.fields)}) × 100"
            )
        if self.kind == "duplicates":
            return (
                f"({base} sharing {' or '.join(self.keys)} with another of them) ÷ ({base}) × 100 "
                "(values compared lower case, letters, digits and @ only)"
            )
        span = f"hours from {self.start_field} to {self.end_field}"
        if self.within_hours is None:
            return f"median of the {span}, over {base} with {self.end_field} filled"
        return (
            f"({base} whose {span} are ≤ {self.within_hours:g}) ÷ ({base} whose {self.end_field} "
            f"is filled or whose {self.start_field} is more than {self.within_hours:g} hours ago) "
            "× 100"
        )


class ReportSection(_Strict):
    """``[report]``: the defaults of ``sop-worker report`` and its SOP figures."""

    period_days: int = Field(default=7, ge=1, le=366, description="Days the report covers.")
    at_risk_days: int = Field(
        default=2,
        ge=0,
        description="A record whose next step falls due within this many days is at risk.",
    )
    daily_api_allowance: int = Field(
        default=0,
        ge=0,
        description="The org's daily API request allowance, drawn on the API chart; 0: "
        "unknown (a run's remaining calls are shown as it reported them).",
    )
    figures: dict[str, Figure] = Field(default_factory=dict)
