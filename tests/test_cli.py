"""The CLI end to end over a local org: plan, run, apply, dry run, exit codes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner, Result

from worker.cli import cli
from worker.errors import DryRunWriteError
from worker.sinks import DryRunSink
from worker.store import Store

from .conftest import DEMO_ORG


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"WORKER_LOG_FORMAT": "json", **(env or {})}, catch_exceptions=False
    )


def org_args(org: Path, db: Path) -> list[str]:
    return ["--local-org", str(org), "--db-path", str(db)]


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def plan_json(org: Path, db: Path, *extra: str) -> dict[str, Any]:
    result = invoke("plan", *org_args(org, db), "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_explains_itself(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert len(result.output.splitlines()) > 3
    assert cli.commands[command].help


def test_demo_plan_is_the_same_on_any_day(tmp_path: Path) -> None:
    with time_machine.travel(dt.datetime(2027, 3, 1, tzinfo=dt.UTC)):
        later = plan_json(DEMO_ORG, tmp_path / "a.db")
    now = plan_json(DEMO_ORG, tmp_path / "b.db")
    assert later["as_of"] == now["as_of"] == "2026-11-23"
    assert later["actions"] == now["actions"]
    rules = {a["rule"] for a in now["actions"]}
    assert "payment_followup" in rules
    kinds = {
        a["key"].split(":")[1].split("-")[0]
        for a in now["actions"]
        if a["rule"] == "payment_followup"
    }
    assert {"initial", "followup", "final", "closeout"} <= kinds


def test_run_writes_to_a_working_copy_once(demo_copy: Path, tmp_path: Path) -> None:
    before = tree_hash(demo_copy)
    db = tmp_path / "w.db"
    first = invoke("run", *org_args(demo_copy, db))
    assert first.exit_code == 0, first.output
    assert tree_hash(demo_copy) == before  # fixtures are never written
    store = Store.open(db)
    applied = [r for r in store.audit_rows(outcome="applied")]
    assert applied
    working = tmp_path / "local-orgs" / "demo-org" / "records" / "zz-created-by-worker.json"
    created = json.loads(working.read_text())["records"]
    tasks = [r for r in created if r["attributes"]["type"] == "Task"]
    comments = [r for r in created if r["attributes"]["type"] == "CaseComment"]
    assert len(tasks) == len([r for r in applied if r.kind in ("create_task", "send_email")])
    assert len(comments) == len([r for r in applied if r.kind == "case_comment"])
    second = invoke("run", *org_args(demo_copy, db))
    assert second.exit_code == 0
    assert len(store.audit_rows(outcome="applied")) == len(applied)  # nothing twice
    assert plan_json(demo_copy, db)["actions"] == []


def test_dry_run_writes_nothing(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    result = invoke("run", "--dry-run", *org_args(demo_copy, db))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "local-orgs").exists()
    assert Store.open(db).audit_rows() == []


def test_dry_run_sink_refuses_loudly() -> None:
    with pytest.raises(DryRunWriteError, match="refused to write 0 action"):
        DryRunSink().write([])


def test_plan_file_round_trip_and_stale_apply(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    plan_file = tmp_path / "plan.json"
    assert invoke("plan", *org_args(demo_copy, db), "--out", str(plan_file)).exit_code == 0
    saved = json.loads(plan_file.read_text())
    assert saved["schema"] == "sop-worker/plan"
    assert saved["version"] == 2
    # A person edits one planned target after the plan was made.
    target = next(a for a in saved["actions"] if a["kind"] in ("update", "close"))
    opp_file = demo_copy / "records" / "payment_followup-opportunities.json"
    body = json.loads(opp_file.read_text())
    for rec in body["records"]:
        if rec["Id"] == target["target"]["id"]:
            rec["SystemModstamp"] = "2026-11-23T08:00:00.000+0000"
    opp_file.write_text(json.dumps(body))
    result = invoke("apply", *org_args(demo_copy, db), str(plan_file))
    assert result.exit_code == 0, result.output
    store = Store.open(db)
    conflicts = store.audit_rows(outcome="conflict")
    assert {r.record_id for r in conflicts} == {target["target"]["id"]}
    assert all(r.error_code == "RECORD_CHANGED" for r in conflicts)
    applied = {r.key for r in store.audit_rows(outcome="applied")}
    assert applied == {a["key"] for a in saved["actions"]} - {r.key for r in conflicts}
    again = invoke("apply", *org_args(demo_copy, db), str(plan_file))
    assert again.exit_code == 0
    assert {r.key for r in store.audit_rows(outcome="applied")} == applied


def test_a_plan_applies_only_to_the_org_it_was_made_on(demo_copy: Path, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.json"
    result = invoke("plan", *org_args(demo_copy, tmp_path / "a.db"), "--out", str(plan_file))
    assert result.exit_code == 0, result.output
    saved = json.loads(plan_file.read_text())
    assert saved["org"] == {
        "id": "00DDmU000000001MBA",
        "name": "SOP Worker demo org",
        "user_id": None,
        "username": None,
    }
    # A copy of the org under another Organization Id (a sandbox refresh, say), same mapping.
    other = tmp_path / "acme"
    shutil.copytree(demo_copy, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest.update(name="ACME PRODUCTION", org_id="00DAc0000000001")
    (other / "manifest.json").write_text(json.dumps(manifest))
    refused = invoke("apply", *org_args(other, tmp_path / "b.db"), str(plan_file))
    assert refused.exit_code == 2
    for named in ("'SOP Worker demo org'", "00DDmU000000001MBA", "'ACME PRODUCTION'"):
        assert named in refused.output
    assert "00DAc0000000001" in refused.output  # shown in its 18-character form
    assert not (tmp_path / "local-orgs").exists()  # nothing written
    assert Store.open(tmp_path / "b.db").audit_rows() == []
    # On the org it was made on, the same file applies.
    same = invoke("apply", *org_args(demo_copy, tmp_path / "a.db"), str(plan_file))
    assert same.exit_code == 0, same.output


def test_runs_and_audit_rows_name_the_org(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    runs = invoke("runs", "--db-path", str(db), "--format", "jsonl")
    (row,) = [json.loads(line) for line in runs.stdout.splitlines()]
    assert row["org_id"] == row["summary"]["org_id"] == "00DDmU000000001MBA"
    audit = invoke("audit", "--db-path", str(db), "--format", "jsonl")
    rows = [json.loads(line) for line in audit.stdout.splitlines()]
    assert rows
    assert {r["org_id"] for r in rows} == {"00DDmU000000001MBA"}


@pytest.mark.parametrize(
    ("org_id", "message"),
    [(None, "org_id: Field required"), ("001DmC000000001AAA", "an Organization Id starts")],
)
def test_a_local_org_names_its_organization_id(
    demo_copy: Path, tmp_path: Path, org_id: str | None, message: str
) -> None:
    manifest = json.loads((demo_copy / "manifest.json").read_text())
    manifest.pop("org_id")
    if org_id:
        manifest["org_id"] = org_id
    (demo_copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("plan", *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 2
    assert message in result.output
    assert "manifest.json" in result.output
    assert "Traceback" not in result.output


def test_second_run_while_locked_exits_3(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    store = Store.open(db)
    store.acquire_lock("other-run", dt.datetime.now(dt.UTC), dt.timedelta(minutes=30))
    result = invoke("run", *org_args(demo_copy, db))
    assert result.exit_code == 3
    assert "another run holds the lock: other-run" in result.output


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WORKER_INTERVAL_SECONDS": "often"}, "WORKER_INTERVAL_SECONDS"),
        ({"WORKER_LOG_LEVEL": "LOUD"}, "WORKER_LOG_LEVEL"),
        ({"WORKER_AS_OF": "yesterday"}, "WORKER_AS_OF"),
        ({"WORKER_LOCK_TTL_SECONDS": "5"}, "WORKER_LOCK_TTL_SECONDS"),
    ],
)
def test_bad_setting_exits_2_naming_it(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    result = invoke("plan", *org_args(DEMO_ORG, tmp_path / "w.db"), env=env)
    assert result.exit_code == 2
    assert variable in result.output
    assert "Traceback" not in result.output


def test_bad_mapping_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[org]\nname = 3\n", encoding="utf-8")
    result = invoke("rules", "--mapping", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: org.name" in result.output


def test_rules_lists_sop_files_and_steps() -> None:
    result = invoke("rules")
    assert result.exit_code == 0
    assert "payment_followup" in result.output
    assert "000_8d938a1ad00c5e13.txt" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such plan file"),
        ("not json", "cannot read plan"),
        ('{"schema": "sop-worker/plan", "version": 99}', "plan file version 99"),
        ('{"schema": "sop-worker/plan", "version": 2}', "plan file is malformed"),
        ('{"schema": "sop-worker/plan", "version": 2, "org": "SOP Worker demo org"}', "malformed"),
        (
            '{"schema": "sop-worker/plan", "version": 1, "org": "SOP Worker demo org"}',
            "version 1 does not record the Id of the org",
        ),
    ],
)
def test_a_bad_plan_file_exits_2_saying_why(
    demo_copy: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    plan_file = tmp_path / "plan.json"
    if content is not None:
        plan_file.write_text(content, encoding="utf-8")
    result = invoke("apply", str(plan_file), *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_records_without_an_id_or_stamp_are_reported_and_the_rest_goes_on(
    demo_copy: Path, tmp_path: Path
) -> None:
    path = demo_copy / "records" / "payment_followup-opportunities.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    body["records"].append(
        {"attributes": {"type": "Opportunity"}, "Name": "no Id", "Type": "Payment"}
    )
    bad_stamp = dict(body["records"][0], Id="006DmP000000999AAA", SystemModstamp="yesterday")
    body["records"].append(bad_stamp)
    path.write_text(json.dumps(body), encoding="utf-8")
    result = invoke("run", *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 0, result.output
    assert "pull.unusable_record" in result.stderr
    summary = next(
        json.loads(line) for line in result.stderr.splitlines() if '"run.summary"' in line
    )
    assert summary["record_errors"] == 10  # the demo's 8 malformed records, and these two
    assert summary["actions"]["payment_followup:applied"] > 0


def test_a_local_org_entry_that_is_not_a_record_is_named(demo_copy: Path, tmp_path: Path) -> None:
    path = demo_copy / "records" / "users.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    body["records"].insert(1, ["not", "a", "record"])
    path.write_text(json.dumps(body), encoding="utf-8")
    result = invoke("plan", *org_args(demo_copy, tmp_path / "w.db"))
    assert result.exit_code == 2
    assert "users.json: records[1] is not a record" in result.output
