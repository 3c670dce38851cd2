"""Records as the rules see them: immutable, typed readers over Salesforce REST JSON.

A :class:`Record` wraps the JSON of one sObject row as ``query`` returns it. Its readers
(:meth:`Record.date`, :meth:`Record.number`, ...) raise :class:`~worker.errors.RecordError`
on a malformed value, so a rule never guesses: the runner records the error, skips that
record and goes on with the rest.

A :class:`Snapshot` is every cached record of one cycle with the indexes rules need
(Tasks by WhatId/WhoId, CaseComments by ParentId, children by lookup field): in memory
(:meth:`Snapshot.build`), or read from the store as the rules ask
(:class:`worker.store.StoredSnapshot`), behind the same methods.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from worker import schema
from worker.errors import RecordError

_ID_SHAPE = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")
_ID_SUFFIX_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def full_record_id(text: str) -> str:
    """The 18-character form of a record Id, as the API returns it.

    A 15-character Id (as the Salesforce UI shows it in URLs and reports) gets its
    case-safe suffix: per five characters, one bit per uppercase letter, read as one of
    ``A-Z0-5``. An 18-character Id is returned as given. Raises :class:`ValueError` for
    anything that is not 15 or 18 letters and digits.
    """
    value = text.strip()
    if not _ID_SHAPE.fullmatch(value):
        raise ValueError(f"{text!r} is not a record Id (15 or 18 letters and digits)")
    if len(value) == 18:
        return value
    suffix = "".join(
        _ID_SUFFIX_CHARS[sum(1 << i for i, c in enumerate(value[start : start + 5]) if c.isupper())]
        for start in (0, 5, 10)
    )
    return value + suffix


@dataclass(frozen=True)
class RecordRef:
    """Points at one Salesforce record, with the stamp it had when it was read."""

    sobject: str
    id: str
    name: str = ""
    stamp: str | None = None

    def label(self) -> str:
        return f"{self.sobject} {self.name or self.id}"


_ID_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


def id18(record_id: str) -> str:
    """The 18-character form of a Salesforce Id. A 15-character Id is case-sensitive; the
    three characters Salesforce appends say, five characters each, which are upper case."""
    if len(record_id) == 18 and record_id.isalnum():
        return record_id
    if len(record_id) != 15 or not record_id.isalnum():
        raise ValueError(f"not a Salesforce Id (15 or 18 letters and digits): {record_id!r}")
    suffix = ""
    for start in range(0, 15, 5):
        chunk = record_id[start : start + 5]
        suffix += _ID_SUFFIX[sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")]
    return record_id + suffix


def parse_sf_datetime(value: str) -> dt.datetime:
    """Parse Salesforce's datetime format (``2026-09-23T14:05:00.000+0000``) to aware UTC."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) >= 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def format_sf_datetime(value: dt.datetime) -> str:
    """Format an aware datetime as Salesforce writes it (UTC, milliseconds, ``+0000``)."""
    utc = value.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}+0000"


@dataclass(frozen=True)
class Record:
    """One sObject row. ``fields`` is the REST JSON without ``attributes``."""

    sobject: str
    id: str
    fields: Mapping[str, Any]

    @classmethod
    def from_json(
        cls, raw: Mapping[str, Any], sobject: str | None = None, *, owned: bool = False
    ) -> Record:
        """The record of one REST JSON row. ``owned``: ``raw`` is a dict no one else holds
        (just decoded), so it becomes the record's fields as it is, without a copy."""
        attrs = raw.get(schema.ATTRIBUTES) or {}
        kind = sobject or attrs.get("type")
        rid = raw.get(schema.ID)
        if not kind or not isinstance(kind, str):
            raise RecordError(str(rid or "?"), schema.ATTRIBUTES, "no sObject type")
        if not rid or not isinstance(rid, str):
            raise RecordError("?", schema.ID, f"{kind} record without an Id")
        if owned and isinstance(raw, dict):
            raw.pop(schema.ATTRIBUTES, None)
            return cls(sobject=kind, id=rid, fields=raw)
        body = {k: v for k, v in raw.items() if k != schema.ATTRIBUTES}
        return cls(sobject=kind, id=rid, fields=body)

    def to_json(self) -> dict[str, Any]:
        return {schema.ATTRIBUTES: {"type": self.sobject}, **self.fields}

    # -- readers -------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """The raw value of a field; a dotted name walks relationships (``Owner.Name``)."""
        if "." not in name:
            return self.fields.get(name)
        value: Any = self.fields
        for part in name.split("."):
            if type(value) is not dict and not isinstance(value, Mapping):  # dict: no ABC check
                return None
            value = value.get(part)
        return value

    def text(self, name: str) -> str | None:
        value = self.fields.get(name) if "." not in name else self.get(name)  # hot: inlined
        if value is None or value == "":
            return None
        if isinstance(value, (dict, list)):
            raise RecordError(self.id, name, f"expected text, got {type(value).__name__}")
        return str(value)

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise RecordError(self.id, name, f"expected a checkbox (true/false), got {value!r}")

    def date(self, name: str) -> dt.date | None:
        value = self.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise RecordError(self.id, name, f"expected a date, got {value!r}")
        try:
            if "T" in value:
                return parse_sf_datetime(value).date()
            return dt.date.fromisoformat(value)
        except ValueError:
            raise RecordError(self.id, name, f"not a date: {value!r}") from None

    def datetime(self, name: str) -> dt.datetime | None:
        value = self.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise RecordError(self.id, name, f"expected a datetime, got {value!r}")
        try:
            return parse_sf_datetime(value)
        except ValueError:
            raise RecordError(self.id, name, f"not a datetime: {value!r}") from None

    def number(self, name: str) -> Decimal | None:
        value = self.fields.get(name) if "." not in name else self.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            raise RecordError(self.id, name, f"expected a number, got {value!r}")
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise RecordError(self.id, name, f"not a number: {value!r}") from None

    def ref(self, name_field: str | None = None) -> RecordRef:
        name = self.text(name_field) if name_field else None
        return RecordRef(
            sobject=self.sobject,
            id=self.id,
            name=name or "",
            stamp=self.text(schema.SYSTEM_MODSTAMP),
        )


def in_scope(record: Record, scope: Mapping[str, Sequence[str]]) -> bool:
    """Whether each field of ``scope`` (dotted paths allowed) holds one of its values."""
    return all(record.text(name) in values for name, values in scope.items())


@dataclass(frozen=True)
class Snapshot:
    """All cached records of one cycle, by sObject, with lookup indexes built on demand.

    ``of`` gives an object's records in Id order; rules iterate it (a stored snapshot
    streams it), so they treat it as a sequence, not as a tuple.

    ``changed_since``, when set, is the horizon of the rules' previous evaluation: records
    whose ``SystemModstamp`` is before it were in the cache then, unchanged since. A rule
    may decide only what records changed since it touch (``lead_dedupe``); None: decide
    everything (a full pass)."""

    records: Mapping[str, Sequence[Record]] = field(default_factory=dict)
    changed_since: dt.datetime | None = None

    @classmethod
    def build(cls, records: Iterable[Record], changed_since: dt.datetime | None = None) -> Snapshot:
        grouped: dict[str, list[Record]] = defaultdict(list)
        for rec in records:
            grouped[rec.sobject].append(rec)
        return cls(
            {k: tuple(sorted(v, key=lambda r: r.id)) for k, v in grouped.items()}, changed_since
        )

    def changed(self, record: Record) -> bool:
        """Whether ``record`` changed since :attr:`changed_since` (always, without one; a
        record without a readable stamp counts as changed)."""
        if self.changed_since is None:
            return True
        stamp = record.get(schema.SYSTEM_MODSTAMP)
        if not isinstance(stamp, str):
            return True
        if len(stamp) == 28 and stamp.endswith("+0000"):  # as Salesforce writes it: by text
            return stamp >= self._since_text
        try:
            return parse_sf_datetime(stamp) >= self.changed_since
        except ValueError:
            return True

    @cached_property
    def _since_text(self) -> str:
        assert self.changed_since is not None
        return format_sf_datetime(self.changed_since)

    def of(self, sobject: str) -> Sequence[Record]:
        return self.records.get(sobject, ())

    def where(self, sobject: str, scope: Mapping[str, Sequence[str]]) -> Iterable[Record]:
        """The records of ``sobject`` in scope (:func:`in_scope`), in Id order; a stored
        snapshot has the store do the filtering, so a rule scoped to a few of many
        records reads only those."""
        return (r for r in self.of(sobject) if in_scope(r, scope))

    @cached_property
    def _by_id(self) -> dict[str, Record]:
        return {r.id: r for recs in self.records.values() for r in recs}

    def get(self, record_id: str | None) -> Record | None:
        return self._by_id.get(record_id) if record_id else None

    @cached_property
    def _children(self) -> dict[tuple[str, str], dict[str, list[Record]]]:
        return {}

    def children(self, sobject: str, lookup_field: str, parent_id: str) -> tuple[Record, ...]:
        """Records of ``sobject`` whose ``lookup_field`` points at ``parent_id``."""
        index = self._children.get((sobject, lookup_field))
        if index is None:
            index = defaultdict(list)
            for rec in self.of(sobject):
                value = rec.get(lookup_field)
                if isinstance(value, str) and value:
                    index[value].append(rec)
            self._children[(sobject, lookup_field)] = index
        return tuple(index.get(parent_id, ()))

    def tasks_for(self, record_id: str) -> tuple[Record, ...]:
        """Tasks whose WhatId or WhoId is the record, oldest activity first."""
        what = self.children(schema.TASK, schema.WHAT_ID, record_id)
        who = self.children(schema.TASK, schema.WHO_ID, record_id)
        if not what and not who:
            return ()
        seen = {task.id: task for task in (*what, *who)}
        return tuple(sorted(seen.values(), key=_activity_order))

    def comments_for(self, case_id: str) -> tuple[Record, ...]:
        return tuple(
            sorted(
                self.children(schema.CASE_COMMENT, schema.PARENT_ID, case_id),
                key=lambda c: (str(c.get(schema.CREATED_DATE) or ""), c.id),
            )
        )


def _activity_order(task: Record) -> tuple[str, str, str]:
    return (
        str(task.get(schema.ACTIVITY_DATE) or ""),
        str(task.get(schema.CREATED_DATE) or ""),
        task.id,
    )
