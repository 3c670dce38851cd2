"""`sop-worker undo RUN_ID`: a plan reversing a run, applied with `apply`, on the demo org."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.localorg import iter_raw_records

from .test_report import invoke, org_args


def working_records(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The local org's working copy (beside the database), by Id."""
    return {r["Id"]: r for r in iter_raw_records(tmp_path / "local-orgs" / "demo-org")}


def last_run(db: Path) -> str:
    result = invoke("runs", "--db-path", str(db), "--json")
    return str(json.loads(result.stdout)[0]["run_id"])


def run_day(org: Path, db: Path, day: str) -> str:
    result = invoke("run", *org_args(org, db), "--as-of", day)
    assert result.exit_code == 0, result.output
    return last_run(db)


def outcomes(db: Path, run_id: str) -> list[dict[str, Any]]:
    result = invoke("audit", "--db-path", str(db), "--run", run_id, "--limit", "0", "--json")
    return [r for r in json.loads(result.stdout) if r["event"] == "outcome"]


def test_undo_of_a_run_restores_the_local_orgs_values(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    run_id = run_day(demo_copy, db, "2026-11-23")
    rows = outcomes(db, run_id)
    updates = [r for r in rows if r["kind"] in ("update", "close") and r["outcome"] == "applied"]
    # The first value each field had before the run, per record.
    before: dict[str, dict[str, Any]] = {}
    for row in reversed(updates):
        before.setdefault(row["record_id"], {}).update(row["before"])
    assert before
    changed = working_records(tmp_path)
    assert any(changed[rid][f] != v for rid, fields in before.items() for f, v in fields.items())

    plan_file = tmp_path / "undo.json"
    result = invoke("undo", run_id[:6], *org_args(demo_copy, db), "--out", str(plan_file))
    assert result.exit_code == 0, result.output
    undo = json.loads(plan_file.read_text(encoding="utf-8"))
    kinds = {n["kind"] for n in undo["not_undone"]}
    assert kinds <= {
        "case_comment",
        "send_email",
        "convert_lead",
        "submit_approval",
        "add_campaign_member",
    }
    assert all("not reversible" in n["why"] for n in undo["not_undone"])
    result = invoke("apply", str(plan_file), *org_args(demo_copy, db))
    assert result.exit_code == 0, result.output

    now = working_records(tmp_path)
    for rid, fields in before.items():
        if now[rid].get("IsConverted"):
            continue  # a lead the run converted stays converted (listed as not reversible)
        assert {f: now[rid].get(f) for f in fields} == fields, rid
    created = [r for r in rows if r["kind"] == "create_task" and r["outcome"] == "applied"]
    tasks = {t["Id"]: t for t in now.values() if t.get("attributes", {}).get("type") == "Task"}
    keys = {r["key"] for r in created}
    made = [t for t in tasks.values() if t.get("SOP_Worker_Key__c") in keys]
    assert made
    assert all(t["Status"] == "Completed" for t in made)
    # Applied once: a second apply of the same undo plan writes nothing again.
    again = invoke("apply", str(plan_file), *org_args(demo_copy, db), "--json")
    assert json.loads(again.stdout)["actions"] == {}


def test_a_record_changed_since_the_run_is_a_conflict_left_as_it_is(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    run_id = run_day(demo_copy, db, "2026-11-23")
    row = next(
        r for r in outcomes(db, run_id) if r["kind"] == "update" and r["outcome"] == "applied"
    )
    field = next(iter(row["after"]))
    folder = tmp_path / "local-orgs" / "demo-org" / "records"
    for path in folder.glob("*.json"):  # someone edits the field in the org
        body = json.loads(path.read_text(encoding="utf-8"))
        for record in body["records"]:
            if record.get("Id") == row["record_id"]:
                record[field] = "edited by hand"
                record["SystemModstamp"] = "2026-11-23T23:00:00.000+0000"
                path.write_text(json.dumps(body), encoding="utf-8")

    result = invoke("undo", run_id, *org_args(demo_copy, db), "--json")
    assert result.exit_code == 0, result.output
    undo = json.loads(result.stdout)
    (conflict,) = [n for n in undo["not_undone"] if n["conflict"]]
    assert conflict["record_id"] == row["record_id"]
    assert "edited by hand" in conflict["why"]
    assert row["record_id"] not in {
        a["target"]["id"] for a in undo["actions"] if a["target"]["sobject"] != "Task"
    }
