"""The SQLite store: file mode, WAL, migrations, watermarks, ledger and audit, the lock."""

from __future__ import annotations

import datetime as dt
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from worker.actions import ActionResult, CreateTask, Outcome
from worker.app import keep_lease
from worker.errors import ConfigError, LockHeldError
from worker.ports import Page
from worker.records import RecordRef
from worker.store import MIGRATIONS, Store

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def task_action(key: str = "r:s:006A") -> CreateTask:
    return CreateTask(
        rule="r",
        sop="000.txt",
        step="Step 2",
        target=RecordRef("Opportunity", "006A"),
        reason="why",
        key=key,
        subject="Call",
        description="d",
        due=dt.date(2026, 11, 23),
        owner_id=None,
        what_id="006A",
        who_id=None,
        fields={},
    )


def test_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "w.db"
    store = Store.open(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.version == len(MIGRATIONS)
    assert store.pending_migrations() == []
    store.close()
    assert Store.open(path).version == len(MIGRATIONS)  # reopening migrates nothing


def test_a_database_from_before_org_ids_keeps_its_history_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    old = sqlite_utils.Database(str(path))
    MIGRATIONS[0](old)
    old.execute("PRAGMA user_version = 1")
    old.table("runs").insert({"run_id": "r0", "started_at": NOW.isoformat(), "status": "ok"})
    old.table("audit").insert({"run_id": "r0", "key": "k0", "outcome": "applied"}, pk="id")
    old.conn.commit()
    old.conn.close()
    store = Store.open(path)
    assert store.version == len(MIGRATIONS)
    ((row,),) = [store.audit_rows(run_id="r0")]
    assert (row.key, row.org_id) == ("k0", None)  # written before the org was recorded
    action = task_action()
    store.begin_run("r1", "run", NOW.date(), NOW)
    store.set_run_org("r1", "00DDmU000000001MBA")
    store.mark_sent([action], "r1", NOW)
    assert [r.org_id for r in store.audit_rows(run_id="r1")] == ["00DDmU000000001MBA"]
    assert {r["run_id"]: r["org_id"] for r in store.runs()} == {
        "r0": None,
        "r1": "00DDmU000000001MBA",
    }


def test_save_page_upserts_and_deletes() -> None:
    store = Store.memory()
    rec = {"Id": "006A", "Name": "A", "SystemModstamp": "2026-11-20T10:00:00.000+0000"}
    newer = {**rec, "Name": "A2", "SystemModstamp": "2026-11-21T10:00:00.000+0000"}
    assert store.save_page(Page("Opportunity", [rec]), "Name", NOW) == rec["SystemModstamp"]
    store.save_page(Page("Opportunity", [newer, rec | {"Id": "006B"}]), "Name", NOW)
    snapshot, problems = store.load_snapshot(["Opportunity"])
    assert problems == []
    assert [r.id for r in snapshot.of("Opportunity")] == ["006A", "006B"]
    assert snapshot.get("006A").text("Name") == "A2"  # type: ignore[union-attr]
    store.save_page(Page("Opportunity", [], deleted_ids=["006A"]), "Name", NOW)
    assert [r.id for r in store.load_snapshot(["Opportunity"])[0].of("Opportunity")] == ["006B"]


def test_watermark_resets_when_fields_change() -> None:
    store = Store.memory()
    store.save_page(
        Page("Lead", [{"Id": "00QA", "SystemModstamp": "2026-11-20T10:00:00.000+0000"}]),
        "Name",
        NOW,
    )
    store.set_watermark("Lead", "2026-11-20T10:00:00.000+0000", "h1", NOW)
    assert store.watermark("Lead", "h1") == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    assert store.watermark("Lead", "h2") is None


def test_ledger_moves_forward_with_an_audit_row_per_change() -> None:
    store = Store.memory()
    action = task_action()
    store.record_planned([action], "run1", NOW)
    assert store.ledger_status([action.key]) == {action.key: Outcome.PLANNED}
    store.mark_sent([action], "run1", NOW)
    assert store.ledger_status([action.key]) == {action.key: Outcome.SENT}
    store.record_results(
        {action.key: action}, [ActionResult(action.key, Outcome.APPLIED, sf_id="00T1")], "run1", NOW
    )
    store.record_planned([action], "run2", NOW)  # replanning never reopens an applied key
    assert store.ledger_status([action.key]) == {action.key: Outcome.APPLIED}
    events = [(r.event, r.outcome) for r in store.audit_rows(record_id="006A")]
    assert events == [("intent", "sent"), ("outcome", "applied")]


def test_audit_filters() -> None:
    store = Store.memory()
    a, b = task_action("r:s:006A"), task_action("r:t:006A")
    store.mark_sent([a, b], "run1", NOW)
    store.record_results(
        {a.key: a, b.key: b},
        [
            ActionResult(a.key, Outcome.APPLIED),
            ActionResult(b.key, Outcome.FAILED, error_code="INVALID_FIELD", message="bad field"),
        ],
        "run1",
        NOW,
    )
    failed = store.audit_rows(outcome="failed")
    assert [(r.key, r.error_code) for r in failed] == [(b.key, "INVALID_FIELD")]
    assert store.audit_rows(run_id="other") == []
    assert len(store.audit_rows(since=dt.date(2026, 11, 23))) == 4
    assert store.audit_rows(since=dt.date(2026, 11, 24)) == []


def test_lock_is_exclusive_until_it_expires() -> None:
    store = Store.memory()
    ttl = dt.timedelta(minutes=30)
    store.acquire_lock("run1", NOW, ttl)
    with pytest.raises(LockHeldError, match="another run holds the lock: run1"):
        store.acquire_lock("run2", NOW + dt.timedelta(minutes=5), ttl)
    store.acquire_lock("run2", NOW + dt.timedelta(minutes=31), ttl)  # run1 died: taken over
    store.release_lock("run2")
    store.acquire_lock("run3", NOW, ttl)


def test_a_lease_left_by_a_killed_process_on_this_host_is_taken_over_at_once() -> None:
    store = Store.memory()
    ttl = dt.timedelta(minutes=30)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store.acquire_lock("killed", NOW, ttl)
    store.db.execute("UPDATE run_lock SET pid = ?", [int(gone.stdout)])
    store.acquire_lock("next", NOW + dt.timedelta(minutes=1), ttl)  # no wait for the expiry

    # A live holder elsewhere (another host, or a live process) still keeps it.
    store.db.execute("UPDATE run_lock SET holder = 'other', host = 'dyno-7'")
    with pytest.raises(LockHeldError, match=r"pid \d+ on dyno-7"):
        store.acquire_lock("third", NOW + dt.timedelta(minutes=2), ttl)
    store.db.execute("UPDATE run_lock SET host = ?, pid = 1", [socket.gethostname()])
    with pytest.raises(LockHeldError):
        store.acquire_lock("third", NOW + dt.timedelta(minutes=2), ttl)


def test_a_live_run_keeps_renewing_its_lease(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    store = Store.open(db)
    ttl = dt.timedelta(seconds=0.3)
    clock = iter(NOW + dt.timedelta(minutes=m) for m in range(1, 100))
    store.acquire_lock("long-run", NOW, ttl)
    stop = threading.Event()
    beat = threading.Thread(
        target=keep_lease, args=(db, "long-run", ttl, lambda: next(clock), stop)
    )
    beat.start()
    time.sleep(0.5)  # at least one beat (every ttl/3)
    stop.set()
    beat.join()
    expires = store.db.execute("SELECT expires_at FROM run_lock").fetchone()[0]
    assert dt.datetime.fromisoformat(expires) > NOW + dt.timedelta(minutes=1)
    with pytest.raises(LockHeldError):  # still held: the renewed expiry is in the future
        store.acquire_lock("cron", NOW + dt.timedelta(minutes=1), ttl)
    assert store.renew_lock("someone-else", NOW, ttl) is False


def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            Store.open(path).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Store.open(path).version == len(MIGRATIONS)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    path.write_text("not a database, just text that happens to be here\n" * 20)
    with pytest.raises(ConfigError, match=r"w\.db cannot be used as the worker's database"):
        Store.open(path)
