"""The stored snapshot: the rules read the cache through it as through an in-memory
snapshot, while an object above the whole-object size is streamed, never held whole."""

from __future__ import annotations

import datetime as dt
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import time_machine

from worker import store as store_module
from worker.ports import Page
from worker.records import Record, Snapshot
from worker.store import Store

from .conftest import DEMO_ORG, execute
from .test_cli import plan_json

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
STAMP = "2026-11-20T10:00:00.000+0000"


def stream_everything(monkeypatch: pytest.MonkeyPatch, page: int = 3, recent: int = 2) -> None:
    """Every object streamed, in small pages, with few records kept: each path is taken."""
    monkeypatch.setattr(store_module, "WHOLE_ROWS", 0)
    monkeypatch.setattr(store_module, "STREAM_PAGE", page)
    monkeypatch.setattr(store_module, "RECENT", recent)


def org_rows() -> dict[str, list[dict[str, Any]]]:
    opps = [
        {"Id": f"006{i:03d}", "Name": f"Deal {i}", "OwnerId": "005A" if i % 2 else "005B"}
        for i in range(8)
    ]
    opps.append({"Id": "006Zz", "Name": "upper case sorts first in code point order"})
    opps.append({"Id": "006aa", "Name": "lower case after", "Account": {"Id": "001A"}})
    tasks = [
        {"Id": f"00T{i:03d}", "WhatId": f"006{i % 4:03d}", "ActivityDate": f"2026-11-{10 + i}"}
        for i in range(7)
    ]
    tasks.append({"Id": "00T900", "WhoId": "006001", "ActivityDate": "2026-11-01"})
    tasks.append({"Id": "00T901", "WhatId": 42})  # not a string: points nowhere
    history = [{"Id": f"008{i:03d}", "OpportunityId": f"006{i % 3:03d}"} for i in range(5)]
    users = [{"Id": "005A", "Name": "A"}, {"Id": "005B", "Name": "B"}]
    return {"Opportunity": opps, "Task": tasks, "OpportunityHistory": history, "User": users}


def saved(store: Store) -> Snapshot:
    rows = org_rows()
    for sobject, records in rows.items():
        store.save_page(
            Page(sobject, [{**r, "SystemModstamp": STAMP} for r in records]), "Name", NOW
        )
    return Snapshot.build(
        Record.from_json({**r, "SystemModstamp": STAMP}, sobject)
        for sobject, records in rows.items()
        for r in records
    )


def shown(records: Any) -> list[tuple[str, Any]]:
    return [(r.id, dict(r.fields)) for r in records]


def test_a_stored_snapshot_reads_as_the_in_memory_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_everything(monkeypatch)
    memory = saved(store)
    stored = store.snapshot(["Opportunity", "Task", "OpportunityHistory", "User", "Case"])
    for sobject in ("Opportunity", "Task", "OpportunityHistory", "User", "Case", "Lead"):
        assert shown(stored.of(sobject)) == shown(memory.of(sobject)), sobject
        assert len(stored.of(sobject)) == len(memory.of(sobject))
    assert [r.id for r in stored.of("Opportunity")][:2] == ["006000", "006001"]
    assert stored.of("Opportunity")[-1].id == "006aa"
    assert sorted(stored.records) == sorted(memory.records)
    for rid in ("006003", "00T002", "005B", "006aa", "missing", None, ""):
        found, expected = stored.get(rid), memory.get(rid)
        assert (found and shown([found])) == (expected and shown([expected])), rid
    for parent in ("006000", "006001", "006002", "006003", "006007", "nothing"):
        assert shown(stored.tasks_for(parent)) == shown(memory.tasks_for(parent))
        for sobject, lookup in (
            ("OpportunityHistory", "OpportunityId"),
            ("Task", "WhatId"),
            ("Opportunity", "OwnerId"),
            ("Opportunity", "Account.Id"),
        ):
            assert shown(stored.children(sobject, lookup, parent)) == shown(
                memory.children(sobject, lookup, parent)
            )
    assert shown(stored.children("Opportunity", "OwnerId", "005A")) == shown(
        memory.children("Opportunity", "OwnerId", "005A")
    )
    assert shown(stored.children("Opportunity", "Account.Id", "001A")) == shown(
        memory.children("Opportunity", "Account.Id", "001A")
    )


def test_a_damaged_row_is_left_out_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps JSON as text, so a damaged row can be met (PostgreSQL's JSONB cannot
    hold one)."""
    stream_everything(monkeypatch)
    with Store.open(tmp_path / "w.db") as store:
        saved(store)
        execute(store, "UPDATE records SET raw = :raw WHERE id = '006002'", {"raw": "{bad"})
        stored = store.snapshot(["Opportunity", "OpportunityHistory"])
        assert "006002" not in [r.id for r in stored.of("Opportunity")]
        assert stored.get("006002") is None
        owned = stored.children("Opportunity", "OwnerId", "005B")
        assert [r.id for r in owned] == ["006000", "006004", "006006"]
        assert [p.record_id for p in stored.problems] == ["006002"]  # once, however often met


def test_small_objects_are_held_whole_as_before(store: Store) -> None:
    memory = saved(store)
    stored = store.snapshot(["Opportunity", "Task", "User"])
    assert stored.of("Opportunity") == memory.of("Opportunity")
    assert isinstance(stored.of("Task"), tuple)
    assert stored.get("005A") == memory.get("005A")


def test_a_streamed_object_is_never_held_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading 6,000 records through the stored snapshot (every one, its owner and its
    Tasks) takes a small part of the memory that holding them takes."""
    monkeypatch.setattr(store_module, "WHOLE_ROWS", 1000)
    monkeypatch.setattr(store_module, "STREAM_PAGE", 500)
    monkeypatch.setattr(store_module, "RECENT", 200)
    with Store.open(tmp_path / "w.db") as store:
        filler = "x" * 300
        opps = [
            {"Id": f"006{i:06d}", "SystemModstamp": STAMP, "Name": f"D{i}", "Description": filler}
            for i in range(6000)
        ]
        tasks = [
            {"Id": f"00T{i:06d}", "SystemModstamp": STAMP, "WhatId": f"006{i * 3:06d}"}
            for i in range(2000)
        ]
        store.save_page(Page("Opportunity", opps), "Name", NOW)
        store.save_page(Page("Task", tasks), "Name", NOW)
        del opps, tasks

        def read(snapshot: Snapshot) -> int:
            seen = 0
            for opp in snapshot.of("Opportunity"):
                seen += len(snapshot.tasks_for(opp.id)) + (snapshot.get(opp.id) is opp)
            return seen

        tracemalloc.start()
        try:
            streamed = store.snapshot(["Opportunity", "Task"])
            # get() of the record just streamed is that record, as in a held snapshot
            assert read(streamed) == 2000 + 6000
            _, streamed_peak = tracemalloc.get_traced_memory()
            del streamed
            tracemalloc.reset_peak()
            held, _ = store.load_snapshot(["Opportunity", "Task"])
            assert read(held) == 2000 + 6000
            _, held_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert streamed_peak < held_peak / 3, (streamed_peak, held_peak)


def test_the_demo_plan_is_the_same_when_every_object_is_streamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with time_machine.travel(dt.datetime(2027, 1, 15, 15, tzinfo=dt.UTC), tick=False):
        held = plan_json(DEMO_ORG, tmp_path / "a.db")
        stream_everything(monkeypatch, page=5, recent=4)
        streamed = plan_json(DEMO_ORG, tmp_path / "b.db")
    held.pop("generated_at"), streamed.pop("generated_at")
    assert held["actions"]
    assert json.dumps(streamed, sort_keys=True) == json.dumps(held, sort_keys=True)


SCOPES: list[dict[str, tuple[str, ...]]] = [
    {"OwnerId": ("005A",)},
    {"OwnerId": ("005B",), "Name": ("Deal 2", "Deal 4", "Deal 5")},
    {"Account.Id": ("001A",)},  # a nested field; most rows have no Account
    {"Name": ()},  # nothing is in an empty scope
    {"OwnerId": ("nobody",)},
]


@pytest.mark.parametrize("scope", SCOPES, ids=lambda s: ",".join(s) or "none")
def test_a_scoped_read_finds_what_the_in_memory_one_finds(
    store: Store, monkeypatch: pytest.MonkeyPatch, scope: dict[str, tuple[str, ...]]
) -> None:
    stream_everything(monkeypatch)
    memory = saved(store)
    stored = store.snapshot(["Opportunity", "Task"])
    assert shown(stored.where("Opportunity", scope)) == shown(memory.where("Opportunity", scope))


def test_a_scoped_read_decodes_only_the_rows_in_scope(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store does the filtering: 4 of 10 Opportunities are owned by 005B, and only those
    are read and decoded; a value that is not text (42) is left for Python to judge."""
    stream_everything(monkeypatch)
    saved(store)
    decoded: list[str] = []
    real = store_module.StoredSnapshot._decode

    def counting(self: Any, rid: str, sobject: str, raw: Any) -> Any:
        decoded.append(rid)
        return real(self, rid, sobject, raw)

    monkeypatch.setattr(store_module.StoredSnapshot, "_decode", counting)
    stored = store.snapshot(["Opportunity", "Task"])
    owned = [r.id for r in stored.where("Opportunity", {"OwnerId": ("005B",)})]
    assert owned == ["006000", "006002", "006004", "006006"]
    assert decoded == owned
    decoded.clear()
    assert [r.id for r in stored.where("Task", {"WhatId": ("42",)})] == ["00T901"]
    assert decoded == ["00T901"]


def test_a_scoped_read_still_names_a_damaged_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_everything(monkeypatch)
    with Store.open(tmp_path / "w.db") as store:
        saved(store)
        execute(store, "UPDATE records SET raw = :raw WHERE id = '006002'", {"raw": "{bad"})
        stored = store.snapshot(["Opportunity"])
        found = [r.id for r in stored.where("Opportunity", {"OwnerId": ("005B",)})]
        assert found == ["006000", "006004", "006006"]
        assert [p.record_id for p in stored.problems] == ["006002"]
