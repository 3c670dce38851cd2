"""`sop-worker simulate`: the coming days, read-only, as the runs would make them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.store import Store

from .test_cli import tree_hash
from .test_report import invoke, org_args


def simulate_json(*args: str) -> dict[str, Any]:
    result = invoke("simulate", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def plan_keys(org: Path, db: Path, day: str) -> set[str]:
    result = invoke("plan", *org_args(org, db), "--as-of", day, "--json")
    assert result.exit_code == 0, result.output
    return {a["key"] for a in json.loads(result.stdout)["actions"]}


def day_keys(found: dict[str, Any], day: str) -> set[str]:
    return {item["key"] for d in found["days"] if d["day"] == day for item in d["items"]}


def test_simulated_days_are_what_runs_on_those_days_would_do(
    demo_copy: Path, tmp_path: Path
) -> None:
    before = tree_hash(demo_copy)
    found = simulate_json(
        *org_args(demo_copy, tmp_path / "sim.db"),
        "--as-of",
        "2026-11-23",
        "--days",
        "3",
        "--tasks-open",
    )
    # Read-only: neither the org folder nor a working copy of it, nor the ledger, moved.
    assert tree_hash(demo_copy) == before
    assert not (tmp_path / "local-orgs").exists()
    with Store.open(tmp_path / "sim.db") as store:
        assert store.count("ledger") == store.count("audit") == 0

    # The same days run for real over the local org (nobody answers there either).
    db = tmp_path / "real.db"
    assert day_keys(found, "2026-11-23") == plan_keys(demo_copy, db, "2026-11-23")
    for day, next_day in (("2026-11-23", "2026-11-24"), ("2026-11-24", "2026-11-25")):
        result = invoke("run", *org_args(demo_copy, db), "--as-of", day)
        assert result.exit_code == 0, result.output
        assert day_keys(found, next_day) == plan_keys(demo_copy, db, next_day)
    assert found["totals"]
    assert sum(d["actions"] for d in found["days"]) == sum(found["totals"].values())


def test_tasks_done_on_their_due_date_is_an_assumption_that_changes_the_outcome(
    demo_copy: Path, tmp_path: Path
) -> None:
    args = [*org_args(demo_copy, tmp_path / "sim.db"), "--as-of", "2026-11-23", "--days", "10"]
    done = simulate_json(*args)
    still_open = simulate_json(*args, "--tasks-open")
    assert done["assumptions"]["tasks done on their due date"] is True
    assert still_open["assumptions"]["tasks done on their due date"] is False
    assert done["totals"] != still_open["totals"]
