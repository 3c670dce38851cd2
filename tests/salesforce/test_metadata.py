"""The metadata shipped under salesforce/ matches the default mapping and the demo org: an
org deployed from it has every custom field the rules read and write, every picklist value
they set or compare against and the demo records hold, and the permission set grants the
integration user each field."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from worker.localorg import iter_raw_records
from worker.mapping import LoadedMapping

from .fakeorg import _MD, METADATA, metadata_fields

DEMO_ORG = Path(__file__).resolve().parents[2] / "fixtures" / "demo-org"
PERMISSION_SET = METADATA.parent / "permissionsets" / "SOP_Worker.permissionset-meta.xml"


def shipped_picklists() -> dict[tuple[str, str], set[str]]:
    return {
        (sobject, f.name): set(f.picklist)
        for sobject, fields in metadata_fields().items()
        for f in fields
        if f.type == "picklist"
    }


def used_values(mapping: LoadedMapping) -> dict[tuple[str, str], set[str]]:
    """(object, field) -> the values each rule declares and the demo records hold, for every
    shipped picklist."""
    shipped = shipped_picklists()
    used: dict[tuple[str, str], set[str]] = {}
    for settings in mapping.rules.values():
        for key, values in settings.picklist_values().items():
            if key in shipped:
                used.setdefault(key, set()).update(values)
    for raw in iter_raw_records(DEMO_ORG):
        sobject = raw["attributes"]["type"]
        for name, value in raw.items():
            if (sobject, name) in shipped and value is not None:
                used.setdefault((sobject, name), set()).add(str(value))
    return used


def test_every_picklist_value_used_is_shipped(mapping: LoadedMapping) -> None:
    shipped = shipped_picklists()
    missing = {
        key: sorted(values - shipped[key])
        for key, values in used_values(mapping).items()
        if values - shipped[key]
    }
    assert missing == {}


def _custom(sobject: str, names: set[str]) -> set[tuple[str, str]]:
    """The custom fields of ``sobject`` among field names (relationship paths like
    Contact.Name name no field of their own object)."""
    return {(sobject, n) for n in names if "." not in n and n.endswith("__c")}


def _mapped_custom_fields(
    mapping: LoadedMapping,
) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    read: set[tuple[str, str]] = set()
    written: set[tuple[str, str]] = set()
    for settings in mapping.rules.values():
        for sobject, names in settings.needs().items():
            read |= _custom(sobject, names)
        for sobject, names in settings.writes().items():
            written |= _custom(sobject, names)
        for sobject, name in settings.picklist_values():
            read |= _custom(sobject, {name})
    key_field = mapping.common.org.task_key_field
    if key_field:
        written.add(("Task", key_field))
    return read | written, written


def _granted() -> dict[str, tuple[bool, bool]]:
    """Permission set field -> (readable, editable), Activity fields named on Task."""
    root = ET.parse(PERMISSION_SET).getroot()  # noqa: S314 - our own repository file
    out = {}
    for grant in root.iter(_MD + "fieldPermissions"):
        name = (grant.findtext(_MD + "field") or "").replace("Activity.", "Task.", 1)
        out[name] = (
            grant.findtext(_MD + "readable") == "true",
            grant.findtext(_MD + "editable") == "true",
        )
    return out


def test_every_mapped_custom_field_is_shipped(mapping: LoadedMapping) -> None:
    shipped = {(sobject, f.name) for sobject, fields in metadata_fields().items() for f in fields}
    used, _ = _mapped_custom_fields(mapping)
    assert used
    assert used - shipped == set()


@pytest.mark.parametrize(
    ("sobject", "name"),
    sorted((sobject, f.name) for sobject, fields in metadata_fields().items() for f in fields),
)
def test_the_permission_set_grants_each_shipped_field(
    mapping: LoadedMapping, sobject: str, name: str
) -> None:
    _, written = _mapped_custom_fields(mapping)
    readable, editable = _granted().get(f"{sobject}.{name}", (False, False))
    assert readable
    assert editable or (sobject, name) not in written
