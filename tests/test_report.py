"""`sop-worker report`: what the runs of a period did, from the store alone."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from worker.cli import cli

DAYS = ("2026-11-23", "2026-11-24", "2026-11-25")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"WORKER_LOG_FORMAT": "json"}, catch_exceptions=False
    )


def org_args(org: Path, db: Path) -> list[str]:
    return ["--local-org", str(org), "--db-path", str(db)]


def demo_store(org: Path, tmp_path: Path, days: tuple[str, ...] = DAYS) -> Path:
    """A store after a run on each of ``days`` over the local org."""
    db = tmp_path / "w.db"
    for day in days:
        result = invoke("run", *org_args(org, db), "--as-of", day)
        assert result.exit_code == 0, result.output
    return db


def report_json(*args: str) -> dict[str, Any]:
    result = invoke("report", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def audit_outcomes(db: Path) -> list[dict[str, Any]]:
    result = invoke("audit", "--db-path", str(db), "--limit", "0", "--json")
    assert result.exit_code == 0, result.output
    return [r for r in json.loads(result.stdout) if r["event"] != "intent"]


def test_the_report_counts_what_each_rule_and_step_did_over_the_days(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = demo_store(demo_copy, tmp_path)
    report = report_json(*org_args(demo_copy, db))
    rows = audit_outcomes(db)

    assert report["as_of"] == DAYS[-1]  # the newest run's day
    assert report["period"] == {"first": "2026-11-19", "last": "2026-11-25", "days": 7}
    applied = {r["key"] for r in rows if r["outcome"] == "applied"}
    skipped = [r for r in rows if r["outcome"] == "skipped"]
    assert report["totals"]["done"] == len(applied) == report["headline"]["actions_done"]
    assert report["totals"]["skipped"] == len(skipped) > 0
    by_step = {(s["rule"], s["step"]): s for s in report["steps"]}
    for row in skipped:
        assert by_step[(row["rule"], row["step"])]["skipped"] >= 1
    reasons = [reason for s in report["steps"] for reason in s["skip_reasons"]]
    assert any("catch-up" in reason or "catch_up" in reason for reason in reasons)
    per_day = {d["day"]: d["done"] for d in report["days"]}
    assert sum(per_day.values()) == len(applied)
    assert all(per_day[day] > 0 for day in DAYS)
    assert [r["as_of"] for r in report["runs"]] == list(DAYS)


def test_the_report_reads_the_store_alone_no_org_needed(demo_copy: Path, tmp_path: Path) -> None:
    db = demo_store(demo_copy, tmp_path)
    with_org = report_json(*org_args(demo_copy, db))
    # No org folder and no Salesforce credentials: the store is all the report reads.
    alone = report_json("--db-path", str(db))
    assert alone["headline"] == with_org["headline"]
    assert alone["steps"] == with_org["steps"]


def test_figures_are_measured_against_their_targets_or_said_not_measured(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = demo_store(demo_copy, tmp_path, DAYS[:1])
    figures = {f["id"]: f for f in report_json(*org_args(demo_copy, db))["figures"]}

    assigned = figures["leads_assigned"]
    # Half the demo's new leads wait in a queue by SOP 004's routing (the SDR queue, marketing
    # nurture "no sales assignment", the fallback queue), not with a person: missed.
    assert (assigned["status"], assigned["target"]) == ("missed", "= 100%")
    assert assigned["shown"].endswith("%")
    assert float(assigned["shown"].rstrip("%")) < 100
    assert "unreadable" in assigned["note"]  # the demo's lead with a 31 November
    assert "OwnerId starts with 005" in assigned["formula"]
    # lead_sla writes a lead's first response time (the demo's Sasha Lin, called 21 minutes
    # after she came in) during the first run, after its pull: the cache has it from the
    # second run on.
    response = figures["lead_response_time"]
    assert (response["status"], response["value"]) == ("not measured", None)
    bounces = figures["email_bounces"]
    assert bounces["status"] == "not measured"
    assert "EmailBouncedDate" in bounces["note"]
    assert "[objects.Lead] fields" in bounces["note"]
    # Routing's own figure: per pool, the largest gap between a member's leads and their
    # weighted share over 30 days (the demo's West pool routed two leads last week, Kai Young
    # to Ben Diaz and lead_sla's Sasha Lin to Ava Chen).
    west = figures["lead_routing.fairness.Reps_West"]
    assert (west["status"], west["target"], west["unit"]) == ("met", "<= 1", "leads")
    assert west["shown"] == f"{west['value']:.1f} leads"
    assert "2 lead(s) routed 2026-10-25 to 2026-11-23" in west["formula"]
    assert figures["lead_routing.fairness.Reps_East"]["status"] == "not measured"
    report = report_json(*org_args(demo_copy, db))
    assert report["headline"]["targets_met"] == sum(
        1 for f in report["figures"] if f["status"] == "met"
    )
    db = demo_store(demo_copy, tmp_path, DAYS[1:2])  # the second run, on the same store
    figures = {f["id"]: f for f in report_json(*org_args(demo_copy, db))["figures"]}
    response = figures["lead_response_time"]
    assert (response["status"], response["shown"]) == ("met", "0.3 h")


def test_the_csv_holds_the_json_figures(demo_copy: Path, tmp_path: Path) -> None:
    db = demo_store(demo_copy, tmp_path, DAYS[:1])
    report = report_json(*org_args(demo_copy, db))
    result = invoke("report", *org_args(demo_copy, db), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["section", "name", "measure", "value"]
    headline = {r["measure"]: r["value"] for r in rows if r["section"] == "headline"}
    assert headline == {k: str(v) for k, v in report["headline"].items()}
    done = sum(int(r["value"]) for r in rows if r["section"] == "step" and r["measure"] == "done")
    assert done == report["totals"]["done"]


def test_a_records_sop_timeline_on_request(demo_copy: Path, tmp_path: Path) -> None:
    db = demo_store(demo_copy, tmp_path)
    record_id = next(r["record_id"] for r in audit_outcomes(db) if r["outcome"] == "applied")
    report = report_json(*org_args(demo_copy, db), "--record", record_id)
    assert report["record"]["record_id"] == record_id
    assert report["record"]["timeline"]
    result = invoke("report", *org_args(demo_copy, db), "--record", record_id)
    assert result.exit_code == 0, result.output
    assert "SOP timeline of" in result.stdout
    assert record_id in result.stdout
    missing = invoke("report", *org_args(demo_copy, db), "--record", "00QDmH000000999AAA")
    assert missing.exit_code == 2
    assert "not in the cache" in missing.output


def test_the_report_shows_the_forward_simulation_on_request(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = demo_store(demo_copy, tmp_path, DAYS[:1])
    report = report_json(*org_args(demo_copy, db), "--simulate-days", "4")
    simulation = report["simulation"]
    assert [d["day"] for d in simulation["days"]] == [
        "2026-11-23",
        "2026-11-24",
        "2026-11-25",
        "2026-11-26",
    ]
    assert sum(d["actions"] for d in simulation["days"]) > 0
    page = invoke("report", *org_args(demo_copy, db), "--simulate-days", "4").stdout
    assert "<section id='simulation'>" in page
    assert "Simulated SOP actions per day" in page
