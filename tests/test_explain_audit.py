"""`explain` answers "why?" for one record; `audit` lists and exports what was done."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from worker.records import full_record_id

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
    result = invoke("audit", "--format", "jsonl", "--limit", "0", "--db-path", str(db), *filters)
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

    exported = invoke("audit", "--format", "csv", "--limit", "0", *db_args).stdout
    table = list(csv.DictReader(io.StringIO(exported)))
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
    secrets_free = invoke("audit", "--format", "jsonl", "--limit", "0", *db_args).stdout.lower()
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
    assert first["status"] == newest["status"] == "ok, with errors"
    assert first["summary"]["actions"]["payment_followup:applied"] > 0
    assert newest["summary"]["actions"] == {}  # all done: the dry run has nothing to do
    table = " ".join(invoke("runs", "--db-path", str(db)).stdout.split())
    assert first["run_id"] in table
    assert "payment_followup:applied" in table


def with_valid_id(org: Path, old: str) -> str:
    """Give one record of the org its real 18-character Id (the demo's end in AAA whatever
    their case, which no org would return) everywhere it appears; returns the 15 characters."""
    short = old[:15]
    for path in (org / "records").glob("*.json"):
        path.write_text(path.read_text().replace(old, full_record_id(short)))
    return short


def test_a_15_character_id_works_for_explain_and_audit(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    short = with_valid_id(demo_copy, DUE)
    assert short == "006DmP000000004"
    text = explain(demo_copy, db, short)
    assert "Northwind Clinics - Payment" in text
    assert f"{short}IBA" in text
    one = plan_json(demo_copy, db, "--record", short)
    assert {a["target"]["id"] for a in one["actions"]} == {f"{short}IBA"}
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    rows = audit(db, "--record", short)
    assert rows
    assert {r["record_id"] for r in rows} == {f"{short}IBA"}


@pytest.mark.parametrize("bad", ["006DmP", "006DmP000000004AA", "006DmP00000000;AAA"])
def test_a_malformed_id_exits_2(demo_copy: Path, tmp_path: Path, bad: str) -> None:
    for args in (
        ["explain", bad, *org_args(demo_copy, tmp_path / "w.db")],
        ["audit", "--record", bad, "--db-path", str(tmp_path / "w.db")],
    ):
        result = invoke(*args)
        assert result.exit_code == 2, args
        assert "is not a record Id (15 or 18 letters and digits)" in result.output


def test_audit_lists_newest_first_fifty_by_default(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    everything = audit(db)
    assert len(everything) > 50
    ids = [r["id"] for r in everything]
    assert ids == sorted(ids, reverse=True)
    default = invoke("audit", "--db-path", str(db), "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["id"] for line in default] == ids[:50]


def test_audit_takes_the_run_id_prefix_the_tables_show(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    run_id = audit(db)[0]["run_id"]
    assert run_id[:8] in invoke("audit", "--db-path", str(db)).stdout
    assert {r["run_id"] for r in audit(db, "--run", run_id[:8])} == {run_id}
    assert len(audit(db, "--run", run_id[:8])) == len(audit(db, "--run", run_id))
    unknown = invoke("audit", "--db-path", str(db), "--run", "zzzz")
    assert unknown.exit_code == 2
    assert "no run id starts with 'zzzz'" in unknown.output


@pytest.mark.parametrize(
    ("option", "value"), [("--rule", "payment_follow_up"), ("--outcome", "done")]
)
def test_audit_refuses_an_unknown_rule_or_outcome(tmp_path: Path, option: str, value: str) -> None:
    result = invoke("audit", "--db-path", str(tmp_path / "w.db"), option, value)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output


def test_audit_before_and_after_are_objects(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    rows = audit(db, "--outcome", "applied")
    update = next(r for r in rows if r["kind"] == "update")
    assert isinstance(update["before"], dict)
    assert isinstance(update["after"], dict)
    assert set(update["before"]) == set(update["after"])
    task = next(r for r in rows if r["kind"] == "create_task")
    assert task["before"] is None
    assert isinstance(task["after"], dict)
    assert task["after"]["subject"]
    as_json = json.loads(invoke("audit", "--db-path", str(db), "--json", "--limit", "0").stdout)
    assert [r["id"] for r in as_json] == [r["id"] for r in audit(db)]
    assert all(not isinstance(r["after"], str) for r in as_json)


def test_explain_as_json(demo_copy: Path, tmp_path: Path) -> None:
    result = invoke("explain", DUE, *org_args(demo_copy, tmp_path / "w.db"), "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["record_id"] == DUE
    assert found["name"] == "Northwind Clinics - Payment"
    verdicts = {r["rule"]: r for r in found["rules"]}
    assert verdicts["payment_followup"]["verdict"] == "act"
    assert verdicts["payment_followup"]["actions"]
