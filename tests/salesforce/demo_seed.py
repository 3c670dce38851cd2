"""Load an org folder (the bundled demo org by default) into a :class:`~.fakeorg.FakeOrg`.

Every record keeps its Id, SystemModstamp and CreatedDate, so a plan made against the fake
org has the same action keys (``rule:step:recordId``) and target stamps as a plan made with
``--local-org`` over the same folder. Parent relationships (``Owner``, ``Account``,
``Contact``, ``RecordType``, ``UserRole``) stay nested as the query responses hold them, so
the fake org answers ``Owner.Name`` and the like from them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.localorg import iter_raw_records, read_manifest
from worker.records import parse_sf_datetime

from .fakeorg import FakeOrg

DEMO_ORG = Path(__file__).resolve().parents[2] / "fixtures" / "demo-org"


def demo_records(folder: Path = DEMO_ORG) -> list[dict[str, Any]]:
    return list(iter_raw_records(folder))


# The demo org's configuration beside its records: the approval process the default
# mapping's deal_approvals submits to (docs/rules/deal_approvals.md).
DEMO_APPROVAL_PROCESS = ("SOP_Discount_Approval", "Opportunity")


def seed(org: FakeOrg, folder: Path = DEMO_ORG) -> dict[str, int]:
    """Add every record of the folder to the org, and its approval process; returns the
    count per sObject."""
    org.define_approval(*DEMO_APPROVAL_PROCESS)
    counts: dict[str, int] = {}
    for raw in demo_records(folder):
        sobject = str(raw["attributes"]["type"])
        fields = {k: v for k, v in raw.items() if k != "attributes"}
        org.add(sobject, **fields)
        counts[sobject] = counts.get(sobject, 0) + 1
    return counts


def unknown_fields(org: FakeOrg, folder: Path = DEMO_ORG) -> dict[str, set[str]]:
    """Scalar fields the folder's records carry that the fake org's schema lacks.

    Nested parent records (``Owner``: {...} or null) are relationships, not fields, when a
    field of the object names that relationship."""
    out: dict[str, set[str]] = {}
    for raw in demo_records(folder):
        sobject = str(raw["attributes"]["type"])
        fields = org.schema.get(sobject, {})
        relationships = {f.relationship for f in fields.values() if f.relationship}
        for name, value in raw.items():
            if name == "attributes" or name in fields:
                continue
            if (value is None or isinstance(value, Mapping)) and name in relationships:
                continue
            out.setdefault(sobject, set()).add(name)
    return out


def newest_stamp(folder: Path = DEMO_ORG) -> dt.datetime:
    stamps = [r.get("SystemModstamp") for r in demo_records(folder)]
    return max(parse_sf_datetime(s) for s in stamps if isinstance(s, str))


def as_of(folder: Path = DEMO_ORG) -> dt.date:
    return read_manifest(folder).as_of
