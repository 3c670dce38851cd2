"""Failures an operator sees: in ``runs``, at error level in the logs, and as exit 2 with what
to do (bad templates, a damaged database, a plan file that is not one)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from click.testing import Result

from worker.store import Store

from .conftest import DEFAULT_MAPPING
from .test_cli import invoke, org_args


def runs(db: Path) -> list[dict[str, Any]]:
    result = invoke("runs", "--db-path", str(db), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


# -- templates ---------------------------------------------------------------------------------
def test_an_unknown_placeholder_is_a_mapping_error_before_anything_is_planned(
    demo_copy: Path, tmp_path: Path
) -> None:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    mapping = tmp_path / "acme.toml"
    mapping.write_text(text.replace("initial contact - {account}", "initial contact - {acount}"))
    result = invoke("plan", *org_args(demo_copy, tmp_path / "w.db"), "--mapping", str(mapping))
    assert result.exit_code == 2, result.output
    assert (
        f"{mapping}: rules.payment_followup.initial_subject: unknown placeholder(s) {{acount}}"
        in (result.output)
    )
    assert not (tmp_path / "w.db").exists() or runs(tmp_path / "w.db") == []


# -- runs: record errors, dead runs, refused runs -----------------------------------------------
def test_a_run_with_record_errors_says_so_in_runs(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    result = invoke("run", *org_args(demo_copy, db))
    assert result.exit_code == 0, result.output  # record errors do not fail the run
    (row,) = runs(db)
    assert row["status"] == "ok, with errors"
    assert row["summary"]["record_errors"] == 8  # the demo org's malformed records
    assert row["summary"]["unknown_outcomes"] == 0
    table = invoke("runs", "--db-path", str(db)).stdout
    assert "Errors" in table
    assert "ok, with errors" in table
    assert any(
        e["event"] == "rule.record_error" and e["level"] == "warning" for e in events(result)
    )


def test_a_run_whose_process_died_is_killed_once_its_lease_is_taken_over(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with Store.open(db) as store:
        store.begin_run("deadbeef0001", "run", dt.date(2026, 11, 23), long_ago)
        store.acquire_lock("deadbeef0001", long_ago, dt.timedelta(minutes=30))
    assert runs(db)[0]["status"] == "running"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    dead = next(r for r in runs(db) if r["run_id"] == "deadbeef0001")
    assert dead["status"] == "killed"
    assert dead["finished_at"]


def test_a_run_refused_by_the_lock_is_recorded_as_locked(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with Store.open(db) as store:
        store.acquire_lock("other-run", dt.datetime.now(dt.UTC), dt.timedelta(minutes=30))
    result = invoke("run", *org_args(demo_copy, db))
    assert result.exit_code == 3
    (row,) = runs(db)
    assert row["status"] == "locked"
    assert row["mode"] == "run"
    assert "another run holds the lock: other-run" in row["summary"]["stopped"]
    (event,) = [e for e in events(result) if e["event"] == "cli.error"]
    assert event["level"] == "error"
    assert event["exit_code"] == 3


# -- the fatal message, as JSON or as a line ----------------------------------------------------
def test_the_fatal_message_is_one_error_event_with_json_logs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[org]\nname = 3\n", encoding="utf-8")
    result = invoke("rules", "--mapping", str(bad))
    assert result.exit_code == 2
    (event,) = events(result)
    assert event["event"] == "cli.error"
    assert event["level"] == "error"
    assert f"{bad}: org.name" in event["message"]
    assert "Error:" not in result.stderr


def test_the_fatal_message_is_a_plain_line_on_a_console(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[org]\nname = 3\n", encoding="utf-8")
    result = invoke("rules", "--mapping", str(bad), env={"WORKER_LOG_FORMAT": "console"})
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: invalid mapping file\n  {bad}: org.name")


def test_a_bad_setting_is_a_json_error_event_too(tmp_path: Path) -> None:
    result = invoke(
        "plan", "--db-path", str(tmp_path / "w.db"), env={"WORKER_LOCK_TTL_SECONDS": "5"}
    )
    assert result.exit_code == 2
    (event,) = events(result)
    assert event["level"] == "error"
    assert "WORKER_LOCK_TTL_SECONDS" in event["message"]


# -- damaged inputs -------------------------------------------------------------------------------
def damage_the_middle(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    pages = db.stat().st_size // 4096
    with db.open("r+b") as handle:  # every other page of the middle half, whatever it holds
        for page in range(pages // 4, 3 * pages // 4, 2):
            handle.seek(page * 4096)
            handle.write(b"\xde\xad\xbe\xef" * 1024)


def test_a_database_damaged_in_the_middle_is_exit_2_keeping_the_audit_log(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    damage_the_middle(db)
    result = invoke("plan", *org_args(demo_copy, db))
    assert result.exit_code == 2, result.output
    (event,) = [e for e in events(result) if e["level"] == "error"]
    message = event["message"]
    assert "database disk image is malformed" in message
    assert "sqlite3 FILE .recover" in message
    assert "backup" in message
    assert "delete" not in message.lower()
    assert "Traceback" not in result.output


def test_a_binary_plan_file_is_exit_2_saying_what_a_plan_file_is(
    demo_copy: Path, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe" * 8)
    result = invoke("apply", str(plan_file), *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 2, result.output
    assert "not a plan file" in result.output
    assert "sop-worker plan --out" in result.output
    assert "Traceback" not in result.output
