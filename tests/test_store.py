"""The store on both backends: migrations, watermarks, ledger and audit, the lease, copying;
SQLite's file mode and WAL; PostgreSQL's reconnects."""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from worker.actions import ActionResult, CreateTask, Outcome
from worker.app import keep_lease
from worker.errors import ConfigError, LockHeldError
from worker.ports import Page
from worker.records import RecordRef
from worker.redact import scrub
from worker.settings import load_settings
from worker.store import MIGRATIONS, Store, Watermark, copy_store, database_url

from .conftest import execute

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
    assert execute(store, "PRAGMA journal_mode")[0][0] == "wal"
    assert store.version == len(MIGRATIONS)
    assert store.pending_migrations() == []
    store.close()
    assert Store.open(path).version == len(MIGRATIONS)  # reopening migrates nothing


def test_a_database_from_before_org_ids_keeps_its_history_and_gains_them(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    old = sa.create_engine(f"sqlite:///{path}")
    with old.begin() as conn:
        MIGRATIONS[0](conn)
        conn.exec_driver_sql("PRAGMA user_version = 1")
        conn.execute(
            sa.text("INSERT INTO runs (run_id, started_at, status) VALUES ('r0', :t, 'ok')"),
            {"t": NOW.isoformat()},
        )
        conn.execute(
            sa.text("INSERT INTO audit (run_id, key, outcome) VALUES ('r0', 'k0', 'applied')")
        )
    old.dispose()
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


def test_save_page_upserts_and_deletes(store: Store) -> None:
    rec = {"Id": "006A", "Name": "A", "SystemModstamp": "2026-11-20T10:00:00.000+0000"}
    newer = {**rec, "Name": "A2", "SystemModstamp": "2026-11-21T10:00:00.000+0000"}
    assert store.save_page(Page("Opportunity", [rec]), "Name", NOW) == (
        rec["SystemModstamp"],
        rec["Id"],
    )
    store.save_page(Page("Opportunity", [newer, rec | {"Id": "006B"}]), "Name", NOW)
    snapshot, problems = store.load_snapshot(["Opportunity"])
    assert problems == []
    assert [r.id for r in snapshot.of("Opportunity")] == ["006A", "006B"]
    assert snapshot.get("006A").text("Name") == "A2"  # type: ignore[union-attr]
    store.save_page(Page("Opportunity", [], deleted_ids=["006A"]), "Name", NOW)
    assert [r.id for r in store.load_snapshot(["Opportunity"])[0].of("Opportunity")] == ["006B"]


def test_watermark_resets_when_fields_change(store: Store) -> None:
    store.save_page(
        Page("Lead", [{"Id": "00QA", "SystemModstamp": "2026-11-20T10:00:00.000+0000"}]),
        "Name",
        NOW,
    )
    store.set_watermark("Lead", "2026-11-20T10:00:00.000+0000", "h1", NOW)
    assert store.watermark("Lead", "h1") == Watermark(dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC))
    assert store.watermark("Lead", "h2") is None


def test_ledger_moves_forward_with_an_audit_row_per_change(store: Store) -> None:
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


def test_audit_filters(store: Store) -> None:
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


def test_lock_is_exclusive_until_it_expires(store: Store) -> None:
    ttl = dt.timedelta(minutes=30)
    store.acquire_lock("run1", NOW, ttl)
    with pytest.raises(LockHeldError, match="another run holds the lock: run1"):
        store.acquire_lock("run2", NOW + dt.timedelta(minutes=5), ttl)
    store.acquire_lock("run2", NOW + dt.timedelta(minutes=31), ttl)  # run1 died: taken over
    store.release_lock("run2")
    store.acquire_lock("run3", NOW, ttl)


def test_a_dead_runs_row_is_killed_when_its_lease_is_taken_over(store: Store) -> None:
    ttl = dt.timedelta(minutes=30)
    store.begin_run("run1", "run", NOW.date(), NOW)
    store.acquire_lock("run1", NOW, ttl)
    store.begin_run("done", "run", NOW.date(), NOW)
    store.finish_run("done", "ok", {}, NOW)
    store.acquire_lock("run2", NOW + dt.timedelta(minutes=31), ttl)  # run1 died
    statuses = {r["run_id"]: r["status"] for r in store.runs()}
    assert statuses == {"run1": "killed", "done": "ok"}
    store.record_locked_run("run3", "run", NOW.date(), NOW, "another run holds the lock: run2")
    locked = next(r for r in store.runs() if r["run_id"] == "run3")
    assert (locked["status"], locked["finished_at"]) == ("locked", NOW.isoformat())


def test_a_lease_left_by_a_killed_process_on_this_host_is_taken_over_at_once(store: Store) -> None:
    ttl = dt.timedelta(minutes=30)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    store.acquire_lock("killed", NOW, ttl)
    execute(store, "UPDATE run_lock SET pid = :pid", {"pid": int(gone.stdout)})
    store.acquire_lock("next", NOW + dt.timedelta(minutes=1), ttl)  # no wait for the expiry

    # A live holder elsewhere (another host, or a live process) still keeps it.
    execute(store, "UPDATE run_lock SET holder = 'other', host = 'dyno-7'")
    with pytest.raises(LockHeldError, match=r"pid \d+ on dyno-7"):
        store.acquire_lock("third", NOW + dt.timedelta(minutes=2), ttl)
    execute(store, "UPDATE run_lock SET host = :host, pid = 1", {"host": socket.gethostname()})
    with pytest.raises(LockHeldError):
        store.acquire_lock("third", NOW + dt.timedelta(minutes=2), ttl)


def test_a_live_run_keeps_renewing_its_lease(store_target: str) -> None:
    db = store_target
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
    expires = execute(store, "SELECT expires_at FROM run_lock")[0][0]
    assert dt.datetime.fromisoformat(expires) > NOW + dt.timedelta(minutes=1)
    with pytest.raises(LockHeldError):  # still held: the renewed expiry is in the future
        store.acquire_lock("cron", NOW + dt.timedelta(minutes=1), ttl)
    assert store.renew_lock("someone-else", NOW, ttl) is False


def test_processes_opening_a_new_database_at_once_migrate_it_once(store_target: str) -> None:
    path = store_target
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
    with pytest.raises(ConfigError, match=r"w\.db is damaged or is not a SQLite database"):
        Store.open(path)


def test_a_database_of_the_first_release_keeps_its_history(tmp_path: Path) -> None:
    """A SQLite file from before schema_version (PRAGMA user_version 1, one cache table per
    object): runs, ledger and audit stay; the cache gives way to ``records`` and is read
    again from the org (its watermarks are cleared)."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(
            """
            CREATE TABLE watermarks (sobject TEXT PRIMARY KEY, last_modstamp TEXT,
                fields_hash TEXT, updated_at TEXT);
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, started_at TEXT, finished_at TEXT,
                mode TEXT, as_of TEXT, status TEXT, summary TEXT);
            CREATE TABLE ledger (key TEXT PRIMARY KEY, run_id TEXT, rule TEXT, sop TEXT,
                step TEXT, kind TEXT, target_id TEXT, target_name TEXT, status TEXT,
                sf_id TEXT, error_code TEXT, message TEXT, action TEXT, planned_at TEXT,
                updated_at TEXT);
            CREATE TABLE audit (id INTEGER PRIMARY KEY, run_id TEXT, ts TEXT, actor TEXT,
                event TEXT, key TEXT, rule TEXT, sop TEXT, step TEXT, kind TEXT,
                record_id TEXT, record_name TEXT, before TEXT, after TEXT, outcome TEXT,
                error_code TEXT, message TEXT, reason TEXT);
            CREATE TABLE run_lock (name TEXT PRIMARY KEY, holder TEXT, pid INTEGER,
                host TEXT, acquired_at TEXT, expires_at TEXT);
            CREATE TABLE cache_Opportunity (id TEXT PRIMARY KEY, raw TEXT);
            INSERT INTO watermarks VALUES ('Opportunity', '2026-11-20T10:00:00.000+0000', 'h', 'x');
            INSERT INTO runs VALUES ('run0', '2026-11-20T10:00:00+00:00', NULL, 'run',
                '2026-11-20', 'ok', '{}');
            INSERT INTO audit (run_id, ts, actor, event, key, outcome)
                VALUES ('run0', '2026-11-20T10:00:00+00:00', 'sop-worker', 'outcome', 'k', 'applied');
            PRAGMA user_version = 1;
            """
        )
    store = Store.open(path)
    assert store.version == len(MIGRATIONS)
    assert [r["run_id"] for r in store.runs()] == ["run0"]
    assert [r.key for r in store.audit_rows()] == ["k"]
    assert store.watermark("Opportunity", "h") is None  # read again from the org
    tables = {row[0] for row in execute(store, "SELECT name FROM sqlite_master")}
    assert "cache_Opportunity" not in tables
    assert "records" in tables


def test_two_stores_on_one_database_share_the_lease(store_target: str) -> None:
    """Two dynos (two processes with their own connections) and one database: the second
    is refused while the first holds the lease, and gets it once it is released."""
    first, second = Store.open(store_target), Store.open(store_target)
    ttl = dt.timedelta(minutes=30)
    first.acquire_lock("dyno-1-run", NOW, ttl)
    with pytest.raises(LockHeldError, match="dyno-1-run"):
        second.acquire_lock("dyno-2-run", NOW, ttl)
    first.release_lock("dyno-1-run")
    second.acquire_lock("dyno-2-run", NOW, ttl)
    first.close()
    second.close()


def test_a_copy_moves_the_whole_history_between_backends(tmp_path: Path, postgres_url: str) -> None:
    sqlite_store = Store.open(tmp_path / "w.db")
    action = task_action()
    sqlite_store.begin_run("run1", "run", dt.date(2026, 11, 23), NOW)
    sqlite_store.mark_sent([action], "run1", NOW)
    sqlite_store.record_results(
        {action.key: action}, [ActionResult(action.key, Outcome.APPLIED, sf_id="00T1")], "run1", NOW
    )
    rec = {"Id": "006A", "Name": "A", "SystemModstamp": "2026-11-20T10:00:00.000+0000"}
    sqlite_store.save_page(Page("Opportunity", [rec]), "Name", NOW)
    sqlite_store.save_secret("salesforce_refresh_token", "seed", "5Aep-rotated", NOW)

    pg = Store.open(postgres_url)
    counts = copy_store(sqlite_store, pg)
    assert counts["audit"] == 2
    assert counts["records"] == 1
    assert counts["runs"] == 1
    assert [(r.event, r.outcome) for r in pg.audit_rows()] == [
        ("intent", "sent"),
        ("outcome", "applied"),
    ]
    assert pg.ledger_status([action.key]) == {action.key: Outcome.APPLIED}
    assert pg.cached_record("006A").text("Name") == "A"  # type: ignore[union-attr]
    assert pg.secret("salesforce_refresh_token") == ("seed", "5Aep-rotated")
    # New audit rows continue after the copied ids.
    pg.record_results({action.key: action}, [ActionResult(action.key, Outcome.APPLIED)], "r2", NOW)
    assert [r.id for r in pg.audit_rows()] == [1, 2, 3]

    with pytest.raises(ConfigError, match="already holds"):
        copy_store(sqlite_store, pg)  # never mixed into a database with a history

    back = Store.open(tmp_path / "back.db")
    assert copy_store(pg, back)["audit"] == 3
    assert [r.event for r in back.audit_rows()][-1] == "outcome"
    for s in (sqlite_store, pg, back):
        s.close()


def test_a_dropped_connection_is_reconnected_without_a_half_write(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    action = task_action()
    store.record_planned([action], "run1", NOW)
    # The server ends every other session of this database (a restart, a failover).
    killer = Store.open(postgres_url)
    execute(
        killer,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    store.mark_sent([action], "run1", NOW)  # a fresh connection: the write lands once
    assert store.ledger_status([action.key]) == {action.key: Outcome.SENT}
    assert [r.event for r in store.audit_rows()] == ["intent"]
    killer.close()
    store.close()


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    url = "postgresql://worker:s3cr3t-pw@127.0.0.1:9/sop"  # nothing listens on port 9
    with pytest.raises(ConfigError, match="DATABASE_URL: the database at") as caught:
        Store.open(url)
    assert "s3cr3t-pw" not in str(caught.value)


def test_postgres_urls_in_heroku_form_select_psycopg() -> None:
    assert database_url("postgres://u:p@h:5432/d").drivername == "postgresql+psycopg"
    assert database_url("postgresql://u:p@h/d").drivername == "postgresql+psycopg"
    assert database_url("var/w.db").drivername == "sqlite"
    with pytest.raises(ConfigError, match="not supported"):
        database_url("mysql://u@h/d")


def test_replanning_many_open_keys_takes_the_new_plans_version(store: Store) -> None:
    actions = [task_action(f"r:s:006{i}") for i in range(3)]
    store.record_planned(actions, "run1", NOW)
    store.record_planned(actions, "run2", NOW)
    assert {e.run_id for e in store.ledger_entries(status=Outcome.PLANNED)} == {"run2"}


def test_the_database_password_is_scrubbed_from_every_output(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://worker:pw%2FDbSecret9@db.example:5432/sop")
    load_settings()
    echoed = (
        "connection to db failed for postgres://worker:pw%2FDbSecret9@db.example (pw/DbSecret9)"
    )
    assert "DbSecret9" not in scrub(echoed)


def _in_another_process(db: Path, sql: str) -> str:
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute(sys.argv[2]).fetchall()); c.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(db), sql], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_second_store_in_one_process_does_not_lose_the_first_ones_commits(
    tmp_path: Path,
) -> None:
    """A run opens the store, then its lease thread opens it again. Opening must not touch
    the file the first store holds: closing any descriptor of it drops the process's locks,
    and a reader in another process (``sop-worker runs``, a second dyno) then takes itself
    for the last user and deletes the WAL under the run, whose later commits vanish."""
    db = tmp_path / "w.db"
    now = dt.datetime(2026, 11, 23, 9, tzinfo=dt.UTC)
    run = Store.open(db)
    try:
        run.begin_run("r1", "run", dt.date(2026, 11, 23), now)
        lease = Store.open(db)  # as keep_lease does, while the run's connection is open
        lease.close()
        _in_another_process(db, "select count(*) from runs")  # a reader comes and goes
        run.finish_run("r1", "ok", {"run_id": "r1"}, now)
        run.acquire_lock("r1", now, dt.timedelta(minutes=30))
        assert _in_another_process(db, "select run_id, status from runs") == "[('r1', 'ok')]"
        assert _in_another_process(db, "select holder from run_lock") == "[('r1',)]"
    finally:
        run.close()
