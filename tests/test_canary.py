"""Canary apply: `run` and `apply` with --limit, --owner and --sample write to a subset first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.canary import in_sample

from .test_report import invoke, org_args

DAY = "2026-11-23"


def run_json(org: Path, db: Path, *extra: str) -> dict[str, Any]:
    result = invoke("run", *org_args(org, db), "--as-of", DAY, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def applied(db: Path) -> list[dict[str, Any]]:
    result = invoke("audit", "--db-path", str(db), "--outcome", "applied", "--limit", "0", "--json")
    return list(json.loads(result.stdout))


def planned(org: Path, db: Path) -> list[dict[str, Any]]:
    result = invoke("plan", *org_args(org, db), "--as-of", DAY, "--json")
    return list(json.loads(result.stdout)["actions"])


def test_a_sample_writes_the_same_records_every_time_and_the_rest_next_run(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    everything = planned(demo_copy, db)
    sampled = {a["target"]["id"] for a in everything if in_sample(a["target"]["id"], 30)}
    assert 0 < len(sampled) < len({a["target"]["id"] for a in everything})

    first = run_json(demo_copy, db, "--sample", "30")
    assert {r["record_id"] for r in applied(db)} <= sampled
    held = sum(n for key, n in first["actions"].items() if key.endswith(":held_back"))
    assert held == sum(1 for a in everything if a["target"]["id"] not in sampled)
    again = run_json(demo_copy, db, "--sample", "30")  # the same sample: already written
    assert not any(key.endswith(":applied") for key in again["actions"])

    run_json(demo_copy, db)  # the next full run writes the rest
    other = tmp_path / "other"
    other.mkdir()
    invoke("run", *org_args(demo_copy, other / "w.db"), "--as-of", DAY)
    assert {r["key"] for r in applied(db)} == {r["key"] for r in applied(other / "w.db")}


def test_limit_and_owner_narrow_the_records_written(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    run_json(demo_copy, db, "--limit", "3")
    assert len({r["record_id"] for r in applied(db)}) == 3

    owners = json.loads(
        (demo_copy / "records" / "homecare_stages-leads.json").read_text(encoding="utf-8")
    )["records"]
    owner = owners[0]["OwnerId"]
    owned = {r["Id"] for r in owners if r["OwnerId"] == owner}
    db2 = tmp_path / "owner.db"
    summary = run_json(demo_copy, db2, "--owner", owner)
    written = {r["record_id"] for r in applied(db2)}
    assert written
    assert written & owned
    leads = {r["Id"] for r in owners}
    assert written & leads <= owned
    assert any(key.endswith(":held_back") for key in summary["actions"])


def test_apply_takes_a_plan_file_in_two_steps(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    plan_file = tmp_path / "plan.json"
    result = invoke("plan", *org_args(demo_copy, db), "--as-of", DAY, "--out", str(plan_file))
    assert result.exit_code == 0, result.output
    total = len(json.loads(plan_file.read_text(encoding="utf-8"))["actions"])
    result = invoke("apply", str(plan_file), *org_args(demo_copy, db), "--limit", "2")
    assert result.exit_code == 0, result.output
    assert len({r["record_id"] for r in applied(db)}) == 2
    result = invoke("apply", str(plan_file), *org_args(demo_copy, db))
    assert result.exit_code == 0, result.output
    assert len(applied(db)) == total


@pytest.mark.parametrize("extra", [["--dry-run"], ["--loop"]])
def test_canary_options_are_for_one_writing_cycle(tmp_path: Path, extra: list[str]) -> None:
    result = invoke("run", "--db-path", str(tmp_path / "w.db"), "--limit", "1", *extra)
    assert result.exit_code == 2
    assert "one writing cycle" in result.output
