"""The vocabulary of rule settings: what a setting names (a field of an object, picklist
values of a field, a message template), and what a rule reads and writes, derived from it.

A rule's mapping section names fields, objects and picklist values; marking each setting
with what it names lets ``doctor``, the pull's field list and the picklist check come from
the settings model alone, with no hand-written lists to drift::

    class MySettings(RuleSettings):
        reads: ClassVar = {"sobject": (schema.OWNER_ID,), schema.TASK: ()}
        updates: ClassVar = {"sobject": (schema.STATUS,)}
        sobject: str = "Lead"
        status_field: Annotated[str, FieldOf("sobject", write=True)] = "Status"
        open_statuses: Annotated[tuple[str, ...], ValuesOf("status_field")] = ("Open",)
        scope: Annotated[dict[str, tuple[str, ...]], FieldValues("sobject")] = {}
        reply_type: Annotated[str, ValuesOf("Type", sobject=schema.TASK)] = "Reply"

``reads`` and ``updates`` list the standard fields no setting names, per object. An object
is named either literally (``"Task"``) or by the setting that holds it
(``"sobject"``): a name that is a setting of the section, or of a section enclosing it, is
read from there. Settings that are ``None`` or empty declare nothing. Nested sections
(a model, or a table or list of them) are walked, their references resolved in the
enclosing sections. A dotted path (``Account.Name``, ``RecordType.DeveloperName``) is read
but is no picklist of the object, so its values are not listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

Fields = dict[str, set[str]]
Picklists = dict[tuple[str, str], set[str]]


@dataclass(frozen=True)
class Placeholders:
    """Marks a settings field as a message template: ``Annotated[str, Placeholders(names)]``,
    ``names`` being the values the rule fills in (see :func:`template_problems`)."""

    names: frozenset[str]


@dataclass(frozen=True)
class FieldOf:
    """The setting names a field (or a tuple of fields) of ``sobject``, which the rule reads
    and, with ``write``, updates on existing records (doctor checks it is updateable)."""

    sobject: str
    write: bool = False


@dataclass(frozen=True)
class ValuesOf:
    """The setting holds picklist values (one, or a tuple) of a field: ``field`` is a
    :class:`FieldOf` setting of the section, or a field API name with ``sobject`` given."""

    field: str
    sobject: str | None = None


@dataclass(frozen=True)
class FieldValues:
    """The setting is a table of field -> value(s) of ``sobject`` (a scope filter, the
    values a close-out sets): every key is read (and, with ``write``, updated), every value
    is a picklist value of its field."""

    sobject: str
    write: bool = False


@dataclass(frozen=True)
class Declarations:
    needs: Fields
    writes: Fields
    picklists: Picklists


def declarations(model: BaseModel) -> Declarations:
    """Everything ``model``'s annotated settings (and its class's ``reads``) declare."""
    out = Declarations({}, {}, {})
    _collect(model, (model,), out)
    return out


def _collect(model: BaseModel, scopes: tuple[BaseModel, ...], out: Declarations) -> None:
    for into, listed in ((out.needs, "reads"), (out.writes, "updates")):
        named: Mapping[str, Iterable[str]] = getattr(type(model), listed, {})
        for sobject, names in named.items():
            if resolved := _sobject(sobject, scopes):
                _add(into, resolved, names)
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        marks = [m for m in info.metadata if isinstance(m, (FieldOf, ValuesOf, FieldValues))]
        for mark in marks:
            _declare(mark, value, scopes, out)
        if not marks:
            for nested in _models(value):
                _collect(nested, (nested, *scopes), out)


def _declare(
    mark: FieldOf | ValuesOf | FieldValues,
    value: Any,
    scopes: tuple[BaseModel, ...],
    out: Declarations,
) -> None:
    if isinstance(mark, FieldOf):
        if sobject := _sobject(mark.sobject, scopes):
            _add(out.needs, sobject, _strings(value))
            if mark.write:
                _add(out.writes, sobject, _strings(value))
    elif isinstance(mark, ValuesOf):
        target = _field(mark, scopes)
        if target is not None:
            out.picklists.setdefault(target, set()).update(_strings(value))
    elif (sobject := _sobject(mark.sobject, scopes)) and isinstance(value, Mapping):
        _add(out.needs, sobject, value)
        if mark.write:  # a dotted path is read through a lookup, never updated
            _add(out.writes, sobject, (f for f in value if "." not in f))
        for field, values in value.items():
            if "." not in field:
                out.picklists.setdefault((sobject, field), set()).update(_strings(values))


def _add(into: Fields, sobject: str, names: Iterable[str]) -> None:
    into.setdefault(sobject, set()).update(names)


def _field(mark: ValuesOf, scopes: tuple[BaseModel, ...]) -> tuple[str, str] | None:
    """(object, field) that ``mark``'s values belong to, or None when the field setting is
    empty (the rule does not use it)."""
    if mark.sobject is not None:
        sobject = _sobject(mark.sobject, scopes)
        return (sobject, mark.field) if sobject else None
    for scope in scopes:
        info = type(scope).model_fields.get(mark.field)
        if info is None:
            continue
        of = next((m for m in info.metadata if isinstance(m, FieldOf)), None)
        if of is None:
            raise TypeError(f"ValuesOf({mark.field!r}): that setting is not marked FieldOf")
        field = getattr(scope, mark.field)
        sobject = _sobject(of.sobject, scopes)
        return (sobject, field) if field and sobject else None
    raise TypeError(f"ValuesOf({mark.field!r}): no such setting")


def _sobject(name: str, scopes: tuple[BaseModel, ...]) -> str | None:
    for scope in scopes:
        if name in type(scope).model_fields:
            value = getattr(scope, name)
            return value if isinstance(value, str) and value else None
    return name


def _strings(value: Any) -> set[str]:
    if value is None:
        return set()
    if isinstance(value, str):
        return {value} if value else set()
    if isinstance(value, (bool, int, float)):
        return set()
    if isinstance(value, Mapping):
        return {k for k in value if isinstance(k, str)}
    return {v for v in value if isinstance(v, str) and v}


def _models(value: object) -> Iterator[BaseModel]:
    if isinstance(value, BaseModel):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _models(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _models(item)
