"""SOQL built from checked identifiers and escaped values, never from raw strings.

Identifiers (objects, fields, dotted relationship paths) must match
``^[A-Za-z][A-Za-z0-9_]*(\\.[A-Za-z][A-Za-z0-9_]*)*$`` or :func:`identifier` raises;
values go through :func:`literal`, which escapes strings per the SOQL quoted-string rules
(backslash, quotes, ``\\n \\r \\t \\b \\f``; ``%`` and ``_`` in LIKE patterns) and
writes datetimes as UTC without milliseconds (``2026-11-23T10:00:00Z``).

:func:`select` assembles the whole statement from a :class:`Select` so no caller
concatenates SOQL by hand.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from worker import schema

# SOQL's escape sequences in quoted strings (the same tables simple-salesforce's format
# module holds; importing that module loads the whole library, SOAP client included).
_ESCAPES = str.maketrans(
    {"\\": "\\\\", "'": "\\'", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    | {"\b": "\\b", "\f": "\\f"}
)
_LIKE_ESCAPES = str.maketrans({"%": "\\%", "_": "\\_"})
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")

Value = str | bool | int | float | Decimal | dt.date | dt.datetime | None


def identifier(name: str) -> str:
    """Return ``name`` if it is a valid (possibly dotted) API name, else raise ValueError."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ValueError(f"not a valid Salesforce API name: {name!r}")
    return name


def escape(text: str) -> str:
    """Escape the inside of a quoted SOQL string."""
    return text.translate(_ESCAPES)


def like_pattern(text: str) -> str:
    """A quoted LIKE pattern matching ``text`` anywhere (``%`` and ``_`` escaped)."""
    return "'%" + escape(text).translate(_LIKE_ESCAPES) + "%'"


def datetime_literal(value: dt.datetime) -> str:
    """UTC, no fractional seconds: ``2026-11-23T10:00:00Z``. Naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("SOQL datetimes must be timezone-aware")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def literal(value: Value) -> str:
    """One SOQL value literal."""
    # bool before int: True is an int in Python.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("SOQL has no NaN or infinity")
        text = repr(value)
        # SOQL has no exponent notation: 1e-05 must be written 0.00001.
        return text if "e" not in text else format(Decimal(text), "f")
    if isinstance(value, dt.datetime):
        return datetime_literal(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return "'" + escape(value) + "'"
    raise ValueError(f"cannot write a {type(value).__name__} as a SOQL value")


@dataclass(frozen=True)
class Condition:
    """``field op value`` or ``field IN (values)``; rendered with checked names only."""

    field: str
    op: str
    value: Value | tuple[Value, ...]

    _OPS = ("=", "!=", "<", "<=", ">", ">=", "IN", "NOT IN", "LIKE")

    def render(self) -> str:
        name = identifier(self.field)
        if self.op not in self._OPS:
            raise ValueError(f"unsupported SOQL operator {self.op!r}")
        if self.op in ("IN", "NOT IN"):
            values = self.value if isinstance(self.value, tuple) else (self.value,)
            if not values:
                raise ValueError(f"{name} {self.op} () is not valid SOQL")
            return f"{name} {self.op} ({', '.join(literal(v) for v in values)})"
        if isinstance(self.value, tuple):
            raise ValueError(f"{self.op} takes one value")
        if self.op == "LIKE":
            if not isinstance(self.value, str):
                raise ValueError("LIKE takes a string")
            return f"{name} LIKE {like_pattern(self.value)}"
        return f"{name} {self.op} {literal(self.value)}"


@dataclass(frozen=True)
class AllOf:
    """``(a AND b ...)`` of conditions, for use inside :class:`AnyOf`."""

    conditions: tuple[Condition, ...]

    def render(self) -> str:
        if not self.conditions:
            raise ValueError("empty AND")
        return "(" + " AND ".join(c.render() for c in self.conditions) + ")"


@dataclass(frozen=True)
class AnyOf:
    """``(a OR b ...)`` of conditions."""

    conditions: tuple[Condition | AllOf, ...]

    def render(self) -> str:
        if not self.conditions:
            raise ValueError("empty OR")
        if len(self.conditions) == 1:
            return self.conditions[0].render()
        return "(" + " OR ".join(c.render() for c in self.conditions) + ")"


@dataclass(frozen=True)
class Select:
    """A SELECT statement: fields, object, ANDed conditions, ORDER BY."""

    sobject: str
    fields: tuple[str, ...]
    where: tuple[Condition | AnyOf, ...] = ()
    order_by: tuple[str, ...] = ()
    limit: int | None = None


def select(query: Select) -> str:
    parts = [
        "SELECT " + ", ".join(identifier(f) for f in unique_fields(query.fields)),
        "FROM " + identifier(query.sobject),
    ]
    if query.where:
        parts.append("WHERE " + " AND ".join(c.render() for c in query.where))
    if query.order_by:
        parts.append("ORDER BY " + ", ".join(identifier(f) for f in query.order_by))
    if query.limit is not None:
        parts.append(f"LIMIT {int(query.limit)}")
    return " ".join(parts)


def unique_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """Fields in first-seen order, case-insensitively unique (SOQL rejects duplicates)."""
    seen: set[str] = set()
    out = []
    for name in fields:
        key = name.lower()
        if key not in seen:
            seen.add(key)
            out.append(name)
    return tuple(out)


def filter_conditions(filters: Mapping[str, Sequence[Any]]) -> tuple[Condition, ...]:
    """Mapping scope filters (field -> allowed values) as ANDed conditions."""
    out = []
    for name, values in sorted(filters.items()):
        vals = tuple(values)
        if len(vals) == 1:
            out.append(Condition(name, "=", vals[0]))
        else:
            out.append(Condition(name, "IN", vals))
    return tuple(out)


def incremental_select(
    sobject: str,
    fields: Sequence[str],
    filters: Mapping[str, Sequence[Any]],
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    ordered: bool = True,
    replication: schema.Replication = schema.USUAL,
    after_id: str | None = None,
) -> str:
    """The pull query of one object: always Id, its stamp (SystemModstamp, or CreatedDate
    for a field-history object) and IsDeleted where the object has it; the scope filters;
    the stamp between the (inclusive) bounds; ordered by stamp then Id. With ``after_id``
    the lower bound is a cursor on (stamp, Id), exclusive: ``(stamp > since OR (stamp =
    since AND Id > after_id))``, so rows read already at the same stamp are not read again.

    Bulk API 2.0 gets ``ordered=False`` (ORDER BY defeats its PK chunking).
    """
    stamp = replication.stamp
    where: list[Condition | AnyOf] = list(filter_conditions(filters))
    if since is not None and after_id is not None:
        same = AllOf((Condition(stamp, "=", since), Condition(schema.ID, ">", after_id)))
        where.append(AnyOf((Condition(stamp, ">", since), same)))
    elif since is not None:
        where.append(Condition(stamp, ">=", since))
    if until is not None:
        where.append(Condition(stamp, "<=", until))
    return select(
        Select(
            sobject=sobject,
            fields=(*replication.fields(), *fields),
            where=tuple(where),
            order_by=(stamp, schema.ID) if ordered else (),
        )
    )
