"""The CLI end to end over a local org: plan, run, apply, dry run, exit codes."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import time_machine
from click.testing import CliRunner, Result

from worker.app import open_app
from worker.cli import cli
from worker.dryrun import DryRunSink
from worker.localorg import read_manifest
from worker.settings import load_settings
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


def command_paths(
    group: click.Group = cli, path: tuple[str, ...] = (), *, groups: bool = True
) -> list[tuple[str, ...]]:
    """Every command's name path (``("db", "copy")``), groups too unless ``groups=False``."""
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += [(*path, name)] if groups else []
            found += command_paths(command, (*path, name), groups=groups)
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("command", command_paths(), ids=" ".join)
def test_every_command_explains_itself(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert len(result.output.splitlines()) > 3
    found = cli.get_command(click.Context(cli), command[0])
    for name in command[1:]:
        assert isinstance(found, click.Group)
        found = found.get_command(click.Context(found), name)
    assert found is not None
    assert found.help


def test_demo_plan_is_the_same_on_any_day(tmp_path: Path) -> None:
    """The demo is planned as of its manifest's day whatever day the worker runs on (at the
    run's time of day, which minute-level rules read: the same here)."""
    at_three = dt.time(15, tzinfo=dt.UTC)
    with time_machine.travel(dt.datetime.combine(dt.date(2027, 3, 1), at_three), tick=False):
        later = plan_json(DEMO_ORG, tmp_path / "a.db")
    with time_machine.travel(dt.datetime.combine(dt.date(2027, 1, 15), at_three), tick=False):
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


def test_a_dry_run_counts_what_the_real_run_then_sends_and_records_nothing(
    demo_copy: Path, tmp_path: Path
) -> None:
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=False) as app:
        assert isinstance(app.pipeline.sink, DryRunSink)
        preview = app.pipeline.run("dry", read_manifest(demo_copy).as_of)
        assert app.store.ledger_entries() == []
        assert app.store.audit_rows() == []
    with open_app(settings, write=True) as app:
        real = app.pipeline.run("real", read_manifest(demo_copy).as_of)
    would = {rule: n for (rule, what), n in preview.outcomes.items() if what == "would_apply"}
    applied = {rule: n for (rule, what), n in real.outcomes.items() if what == "applied"}
    assert would == applied
    assert sum(would.values()) > 50
    # What a dry run shows as skipped (missed catch-up steps) the real run records so too.
    assert {k: n for k, n in preview.outcomes.items() if k[1] == "skipped"} == {
        k: n for k, n in real.outcomes.items() if k[1] == "skipped"
    }


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


# -- --as-of ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("as_of", "message"),
    [
        ("2026-02-30", "2026-02-30 is not a calendar date (day is out of range for month)"),
        ("2026-13-01", "2026-13-01 is not a calendar date (month must be in 1..12)"),
        ("23/11/2026", "'23/11/2026' is not a date in the form YYYY-MM-DD"),
        ("1900-01-01", "is more than 5 years from the org's today (2026-11-23)"),
        ("9999-12-31", "is more than 5 years from the org's today (2026-11-23)"),
    ],
)
@pytest.mark.parametrize("how", ["option", "env"])
def test_an_as_of_that_is_no_date_or_far_off_exits_2_saying_why(
    tmp_path: Path, as_of: str, message: str, how: str
) -> None:
    args = ["plan", *org_args(DEMO_ORG, tmp_path / "w.db")]
    env = {"WORKER_AS_OF": as_of} if how == "env" else {}
    result = invoke(*args, *(["--as-of", as_of] if how == "option" else []), env=env)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    if how == "env" and "YYYY-MM-DD" not in message and "calendar" in message:
        assert "WORKER_AS_OF" in result.output
    assert "Traceback" not in result.output


def test_the_local_org_takes_any_day_within_five_years(demo_copy: Path, tmp_path: Path) -> None:
    later = plan_json(demo_copy, tmp_path / "w.db", "--as-of", "2031-11-23")
    assert later["as_of"] == "2031-11-23"
    result = invoke("run", *org_args(demo_copy, tmp_path / "w.db"), "--as-of", "2026-11-30")
    assert result.exit_code == 0, result.output


# -- one output vocabulary ----------------------------------------------------------------------
@pytest.mark.parametrize("command", command_paths(groups=False), ids=" ".join)
def test_every_command_has_format_and_json(command: tuple[str, ...]) -> None:
    text = invoke(*command, "--help").output
    assert "--format" in text
    assert "--json" in text


@pytest.mark.parametrize(
    "args",
    [
        ["rules", "--format", "yaml"],
        ["runs", "--format", "csv"],
        ["audit", "--format", "xml"],
        ["rules", "--json", "--format", "table"],
    ],
)
def test_an_unknown_or_contradictory_format_exits_2(tmp_path: Path, args: list[str]) -> None:
    result = invoke(*args, "--db-path", str(tmp_path / "w.db"))
    assert result.exit_code == 2
    assert "--format" in result.output


def test_json_is_the_same_as_format_json(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    done = invoke("run", *org_args(demo_copy, db), "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["actions"]["payment_followup:applied"] > 0
    for command in (["runs"], ["audit", "--limit", "3"], ["rules"], ["purge", "--dry-run"]):
        short = invoke(*command, "--db-path", str(db), "--json")
        long = invoke(*command, "--db-path", str(db), "--format", "json")
        assert short.exit_code == long.exit_code == 0, short.output
        assert json.loads(short.stdout) == json.loads(long.stdout), command
    runs = json.loads(invoke("runs", "--db-path", str(db), "--json").stdout)
    assert runs[0]["run_id"] == summary["run_id"]
    assert runs[0]["summary"]["actions"] == summary["actions"]
    rules = json.loads(invoke("rules", "--json").stdout)
    assert {r["rule"] for r in rules} >= {"payment_followup", "collections"}
    assert all(r["sop_file"] and r["steps"] for r in rules)


# -- plan ---------------------------------------------------------------------------------------
def table_cells(text: str) -> list[list[str]]:
    """The rows of a rich table with lines between rows, each cell's wrapped lines joined."""
    rows: list[list[str]] = []
    current: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith(("├", "└")) and current:
            rows.append([" ".join(" ".join(part).split()) for part in current])
            current = []
        elif line.startswith("│"):
            parts = line.strip("│").split("│")
            if not current:
                current = [[] for _ in parts]
            for cell, part in zip(current, parts, strict=True):
                cell.append(part.strip())
    return rows


def test_plan_starts_with_what_will_happen(tmp_path: Path) -> None:
    # The demo is planned as of its day at the clock's time of day; some steps fall due
    # during the day (lead_disposition's reminder at 10:20 Chicago), so the clock is set.
    noon_in_chicago = dt.datetime(2026, 12, 1, 18, 0, tzinfo=dt.UTC)
    with time_machine.travel(noon_in_chicago, tick=False):
        result = invoke("plan", *org_args(DEMO_ORG, tmp_path / "w.db"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    first_action = next(i for i, line in enumerate(lines) if "006DmP" in line)
    head = " ".join(" ".join(lines[:first_action]).split())
    assert (
        "Plan for 'SOP Worker demo org' (00DDmU000000001MBA) as of 2026-11-23: what will happen"
        in head
    )
    assert "payment_followup │ Step 2: Initiate Communication │ 3" in head
    assert "collections │ Case notes: always update your case notes │ 12" in head
    assert "skipped (missed while the worker was not running) │ │ 24" in head
    assert "records that could not be evaluated │ │ 8" in head
    # SOP 004 routing: 11 leads routed (each score in routing's update: lead_scoring's own
    # write of it superseded), 8 alerts, 1 escalation; the other rules' 177 as before, 12 of lead_hygiene on the routing demo's leads,
    # and the SOP 004 lead rules' on the lead_dedupe demo leads; prospecting_cadence's 9 (5
    # steps, 4 Tasks closed) and 8 steps it skips after missed runs; lead_sla's 5 (two
    # breaches escalated, one Hot lead reassigned: its new owner's Task and the update; one
    # first touch's time recorded).
    assert "lead_routing │ 4. Lead Routing: route by score and territory" in head
    assert "lead_sla │ Response Time SLAs: breach escalated to the Sales Manager │ 2" in head
    assert "superseded (a stronger rule acts on the same record) │ │ 11" in head
    # SOP 004 handoff: 19 on its demo deals and the won demo deal (checklists, form,
    # introduction, a late kickoff, a re-opened deal's Tasks closed).
    assert "customer_handoff │ Customer Handoff 5: post-handoff week 1 │ 4" in head
    # SOP 004 Closed Lost: the lost demo deal's primary contact joins the nurture campaign.
    assert "closed_won_lost │ Closed Lost: add to nurture campaign │ 1" in head
    # SOP 004 dispositions: one Do Not Contact lead (opt-outs, one worker Task closed), two
    # reminders to update a status after a contact (one on lead_dedupe's lead).
    # lead_sla's demo: 5 of its own, and lead_disposition's reminder on Sasha Lin (called,
    # status unchanged).
    assert "277 action(s) to apply, 24 skipped, 11 superseded, 0 suppressed" in head
    assert "Cost: 0 API call(s)" in head


def test_plan_shows_a_multi_line_next_steps_log_in_full(tmp_path: Path) -> None:
    plan = plan_json(DEMO_ORG, tmp_path / "j.db")
    logged = next(
        a
        for a in plan["actions"]
        if a["kind"] == "update" and "\n" in str(a["changes"][0]["after"])
    )
    change = logged["changes"][0]
    result = invoke("plan", *org_args(DEMO_ORG, tmp_path / "w.db"))
    cells = {row[2] for row in table_cells(result.stdout) if logged["target"]["id"] in row[0]}
    flat = " ".join(" ".join(change["after"].split("\n")).split())
    assert any(flat in cell for cell in cells), (flat, cells)
    assert any(" ".join(str(change["before"]).split()) in cell for cell in cells)


def test_plan_narrows_to_one_rule_or_one_record(tmp_path: Path) -> None:
    everything = plan_json(DEMO_ORG, tmp_path / "a.db")
    rule = plan_json(DEMO_ORG, tmp_path / "b.db", "--rule", "payment_followup")
    assert rule["actions"]
    assert {a["rule"] for a in rule["actions"]} == {"payment_followup"}
    assert len(rule["actions"]) == sum(
        a["rule"] == "payment_followup" for a in everything["actions"]
    )
    assert {e["rule"] for e in rule["errors"]} == {"payment_followup"}
    target = "006DmP000000004AAA"
    one = plan_json(DEMO_ORG, tmp_path / "c.db", "--record", target)
    assert [a["key"] for a in one["actions"]] == [
        a["key"] for a in everything["actions"] if a["target"]["id"] == target
    ]
    assert one["skipped"] == one["errors"] == []
    nothing = invoke(
        "plan", *org_args(DEMO_ORG, tmp_path / "d.db"), "--record", "006DmP000000001AAA"
    )
    assert nothing.exit_code == 0
    assert "explain 006DmP000000001AAA" in nothing.output
    for bad in (["--rule", "payments"], ["--record", "006-not-an-id"]):
        refused = invoke("plan", *org_args(DEMO_ORG, tmp_path / "e.db"), *bad)
        assert refused.exit_code == 2, bad
        assert bad[0] in refused.output


def test_apply_says_in_one_line_that_it_takes_the_json_plan(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    as_csv = tmp_path / "plan.csv"
    assert invoke("plan", *org_args(demo_copy, db), "--out", str(as_csv)).exit_code == 0
    assert as_csv.read_text().startswith("key,kind,rule")
    result = invoke(
        "apply", *org_args(demo_copy, db), str(as_csv), env={"WORKER_LOG_FORMAT": "console"}
    )
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: {as_csv} is the CSV view of a plan, for reading; apply takes the JSON plan "
        "file: sop-worker plan --out plan.json"
    ]
    assert Store.open(db).audit_rows() == []


# -- result files -------------------------------------------------------------------------------
def read_results(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_results_has_one_row_per_action_with_before_and_after(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    results = tmp_path / "results.csv"
    planned = plan_json(demo_copy, tmp_path / "p.db")
    done = invoke("run", *org_args(demo_copy, db), "--results", str(results))
    assert done.exit_code == 0, done.output
    rows = read_results(results)
    assert list(rows[0]) == [
        "key",
        "record_id",
        "record_name",
        "rule",
        "step",
        "kind",
        "outcome",
        "error_code",
        "message",
        "created_id",
        "before",
        "after",
    ]
    by_key = {r["key"]: r for r in rows}
    assert len(by_key) == len(rows)  # one row per action
    assert {a["key"] for a in planned["actions"]} <= set(by_key)
    assert {r["outcome"] for r in rows} == {"applied", "skipped"}
    logged = next(
        a for a in planned["actions"] if a["kind"] == "update" and "\n" in a["changes"][0]["after"]
    )
    change = logged["changes"][0]
    row = by_key[logged["key"]]
    assert row["record_id"] == logged["target"]["id"]
    assert json.loads(row["after"]) == {change["field"]: change["after"]}  # in full
    assert json.loads(row["before"]) == {change["field"]: change["before"]}
    task = next(r for r in rows if r["kind"] == "create_task" and r["outcome"] == "applied")
    assert task["created_id"].startswith("00T")


def test_apply_results_list_the_conflicts_too(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    plan_file, results = tmp_path / "plan.json", tmp_path / "r.csv"
    assert invoke("plan", *org_args(demo_copy, db), "--out", str(plan_file)).exit_code == 0
    saved = json.loads(plan_file.read_text())
    target = next(a for a in saved["actions"] if a["kind"] in ("update", "close"))
    opp_file = demo_copy / "records" / "payment_followup-opportunities.json"
    body = json.loads(opp_file.read_text())
    for rec in body["records"]:
        if rec["Id"] == target["target"]["id"]:
            rec["SystemModstamp"] = "2026-11-23T08:00:00.000+0000"
    opp_file.write_text(json.dumps(body))
    applied = invoke("apply", *org_args(demo_copy, db), str(plan_file), "--results", str(results))
    assert applied.exit_code == 0, applied.output
    rows = {r["key"]: r for r in read_results(results)}
    assert {a["key"] for a in saved["actions"]} <= set(rows)
    assert rows[target["key"]]["outcome"] == "conflict"
    assert rows[target["key"]]["error_code"] == "RECORD_CHANGED"


def test_results_are_for_one_writing_cycle(tmp_path: Path) -> None:
    for extra in (["--dry-run"], ["--loop"]):
        result = invoke("run", *org_args(DEMO_ORG, tmp_path / "w.db"), "--results", "r.csv", *extra)
        assert result.exit_code == 2
        assert "--results" in result.output


def test_a_local_command_loads_nothing_of_the_salesforce_layer() -> None:
    """`sop-worker plan --local-org ...` on a dyno or in CI starts without the HTTP and
    JWT libraries: they load only when a live org is wired."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, worker.cli; "
            "print(sorted(m for m in ('requests', 'jwt', 'simple_salesforce', "
            "'worker.salesforce') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]"
