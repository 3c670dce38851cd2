"""`explain` answers "why?" for one record; `audit` lists and exports what was done."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .test_cli import invoke, org_args, plan_json

DUE = "006DmP000000004AAA"  # Northwind Clinics - Payment: day 31, contact now
NOT_DUE = "006DmP000000001AAA"  # Harbor Solar LLC - Payment: day 12, starts on day 31
EXCLUDED = "006DmP000000016AAA"  # Copperleaf Cafe - Payment: already resolved


def explain(org: Path, db: Path, record_id: str) -> str:
    result = invoke("explain", record_id, *org_args(org, db))
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())  # table cells fold: compare on words


def test_explain_a_due_record(demo_copy: Path, tmp_path: Path) -> None:
    text = explain(demo_copy, tmp_path / "w.db", DUE)
    assert "Northwind Clinics - Payment" in text
    assert "payment_followup │ act" in text
    assert "day 31 since CloseDate 2026-10-23" in text
    assert "acts: new Task" in text
    assert "No SOP action recorded for this record yet." in text


def test_explain_a_record_not_due_yet(demo_copy: Path, tmp_path: Path) -> None:
    text = explain(demo_copy, tmp_path / "w.db", NOT_DUE)
    assert "not_due" in text
    assert "cadence starts on day 31" in text
    assert "on 2026-12-12" in text  # the next step's due date


def test_explain_an_excluded_record(demo_copy: Path, tmp_path: Path) -> None:
    text = explain(demo_copy, tmp_path / "w.db", EXCLUDED)
    assert "excluded because Payment_Status__c='Resolved'" in text


def test_explain_after_a_run_shows_what_was_done_and_by_which_run(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    runs = audit(db, "--record", DUE)[0]
    text = explain(demo_copy, db, DUE)
    assert "SOP timeline (ledger)" in text
    assert runs["run_id"] in text
    assert "applied" in text


def test_explain_an_unknown_record_says_so(demo_copy: Path, tmp_path: Path) -> None:
    result = invoke("explain", "006000000000000AAA", *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 2
    assert "not in the cache" in result.output


def audit(db: Path, *filters: str) -> list[dict[str, Any]]:
    result = invoke("audit", "--format", "jsonl", "--db-path", str(db), *filters)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_audit_filters_and_exports(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    db_args = ("--db-path", str(db))

    rows = audit(db)
    assert {r["outcome"] for r in rows} >= {"sent", "applied", "skipped"}
    assert all(r["actor"] and r["run_id"] and r["rule"] for r in rows)
    for option, value, column in (
        ("--record", DUE, "record_id"),
        ("--outcome", "skipped", "outcome"),
        ("--rule", "collections", "rule"),
    ):
        picked = audit(db, option, value)
        assert picked, option
        assert {r[column] for r in picked} == {value}
    assert audit(db, "--since", "2999-01-01") == []

    table = list(csv.DictReader(io.StringIO(invoke("audit", "--format", "csv", *db_args).stdout)))
    assert len(table) == len(rows)
    assert {
        "run_id",
        "ts",
        "rule",
        "step",
        "record_id",
        "record_name",
        "outcome",
        "error_code",
    } <= set(table[0])
    secrets_free = invoke("audit", "--format", "jsonl", *db_args).stdout.lower()
    assert "access_token" not in secrets_free
    assert "bearer" not in secrets_free


def test_plan_as_csv_and_audit_as_a_table(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    plan = invoke("plan", *org_args(demo_copy, db), "--format", "csv")
    assert plan.exit_code == 0, plan.output
    rows = list(csv.DictReader(io.StringIO(plan.stdout)))
    as_json = plan_json(demo_copy, tmp_path / "j.db")
    assert [r["key"] for r in rows] == [a["key"] for a in as_json["actions"]]
    first = rows[0]
    assert first["rule"]
    assert first["sop"].endswith(".txt")
    assert first["reason"]

    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    table = invoke("audit", "--db-path", str(db), "--record", DUE, "--limit", "5")
    assert table.exit_code == 0
    text = " ".join(table.stdout.split())
    assert "payment_followup" in text
    assert "applied" in text


def test_runs_lists_each_run_with_how_it_ended(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    assert invoke("run", "--dry-run", *org_args(demo_copy, db)).exit_code == 0
    result = invoke("runs", "--db-path", str(db), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    newest, first = (json.loads(line) for line in result.stdout.splitlines())
    assert (newest["mode"], first["mode"]) == ("dry-run", "run")
    assert first["status"] == newest["status"] == "ok"
    assert first["summary"]["actions"]["payment_followup:applied"] > 0
    assert newest["summary"]["actions"] == {}  # all done: the dry run has nothing to do
    table = " ".join(invoke("runs", "--db-path", str(db)).stdout.split())
    assert first["run_id"] in table
    assert "payment_followup:applied" in table
