"""Merges through the real CLI and pipeline against the in-process fake org: `run` merges a
group of duplicates (snapshot first), a victim edited between `plan` and `apply` is a
conflict naming it, and `undo-merge` (with --dry-run) undoes a merge from its snapshot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from worker.cli import cli

from ..conftest import DEFAULT_MAPPING
from .fakeorg import FakeOrg
from .test_sf_merges import EMAILS, add_lead, five


@pytest.fixture
def merge_mapping(tmp_path: Path) -> Path:
    """The default mapping with lead_dedupe alone enabled, and merges on."""
    text = re.sub(r"(?m)^enabled = true$", "enabled = false", DEFAULT_MAPPING.read_text())
    text = text.replace(
        "[rules.lead_dedupe]\nenabled = false\n", "[rules.lead_dedupe]\nenabled = true\n"
    )
    text = text.replace("\nmerge = false\n", "\nmerge = true\n")
    path = tmp_path / "merge.toml"
    path.write_text(text, encoding="utf-8")
    return path


def invoke(org: FakeOrg, tmp_path: Path, mapping: Path, *args: str) -> Result:
    env = {
        "SF_AUTH": "token",
        "SF_INSTANCE_URL": org.instance_url,
        "SF_ACCESS_TOKEN": org.issue_token(),
        "WORKER_DB_PATH": str(tmp_path / "state" / "w.db"),
        "WORKER_MAPPING": str(mapping),
        "WORKER_LOG_FORMAT": "json",
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def audit(org: FakeOrg, tmp_path: Path, mapping: Path, *args: str) -> list[dict[str, Any]]:
    result = invoke(org, tmp_path, mapping, "audit", "--format", "jsonl", "--limit", "0", *args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_run_merges_a_group_of_five_then_undo_merge_undoes_one(
    org: FakeOrg, tmp_path: Path, merge_mapping: Path
) -> None:
    ids = five(org)
    result = invoke(org, tmp_path, merge_mapping, "run")
    assert result.exit_code == 0, result.output
    assert org.merges_received == 2
    assert sorted(r["Id"] for r in org.of("Lead")) == [ids[3]]  # one master left
    merged = [
        r
        for r in audit(org, tmp_path, merge_mapping, "--outcome", "applied")
        if r["key"].startswith("lead_dedupe:merge-")
    ]
    assert len(merged) == 2
    key = merged[0]["key"]
    victims = key.split(":")[1].removeprefix("merge-").split("-")

    writes = len(org.writes())
    dry = invoke(org, tmp_path, merge_mapping, "undo-merge", key, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would undelete Lead {', '.join(victims)}" in dry.stdout
    assert len(org.writes()) == writes  # a dry run writes nothing

    done = invoke(org, tmp_path, merge_mapping, "undo-merge", key, "--format", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["victims"] == victims
    assert all(not (org.get(v) or {})["IsDeleted"] for v in victims)
    # The undo is a run of its own, each write in the audit under the merge's key.
    undone = [r for r in audit(org, tmp_path, merge_mapping, "--rule", "lead_dedupe")
              if r["step"] == "undo-merge"]  # fmt: skip
    assert sorted(r["record_id"] for r in undone if r["kind"] == "undelete") == sorted(victims)
    assert {(r["key"], r["outcome"]) for r in undone} == {(key, "applied")}
    assert json.loads(done.stdout)["run_id"] in {r["run_id"] for r in undone}
    runs = invoke(org, tmp_path, merge_mapping, "runs", "--format", "json")
    assert "undo-merge" in [r["mode"] for r in json.loads(runs.stdout)]
    again = invoke(org, tmp_path, merge_mapping, "undo-merge", key)
    assert again.exit_code == 1
    assert "not deleted: never merged, or undone already" in again.output
    unknown = invoke(org, tmp_path, merge_mapping, "undo-merge", "lead_dedupe:merge-x:00Q")
    assert unknown.exit_code == 2
    assert "no merge snapshot with key" in unknown.output


def test_a_victim_edited_between_plan_and_apply_is_not_merged(
    org: FakeOrg, tmp_path: Path, merge_mapping: Path
) -> None:
    master = add_lead(org, EMAILS[0])
    org.add("Task", Subject="Call", WhoId=master, Status="Completed")
    victim = add_lead(org, EMAILS[3])
    plan = tmp_path / "plan.json"
    result = invoke(org, tmp_path, merge_mapping, "plan", "--out", str(plan))
    assert result.exit_code == 0, result.output
    org.edit(victim, Title="Head of Finance")  # a person's edit after planning
    applied = invoke(org, tmp_path, merge_mapping, "apply", str(plan))
    assert applied.exit_code == 0, applied.output
    assert org.merges_received == 0
    (row,) = [
        r
        for r in audit(org, tmp_path, merge_mapping, "--outcome", "conflict")
        if r["key"].startswith("lead_dedupe:merge-")
    ]
    assert row["error_code"] == "RECORD_CHANGED"
    assert f"Lead {victim} changed in Salesforce after it was read" in row["message"]
    # the next cycle plans afresh from the lead as it is now, and merges it
    again = invoke(org, tmp_path, merge_mapping, "run")
    assert again.exit_code == 0, again.output
    assert org.merges_received == 1
    assert (org.get(victim) or {})["IsDeleted"] is True


def test_doctor_checks_the_snapshot_object_once_merges_are_on(
    org: FakeOrg, tmp_path: Path, merge_mapping: Path
) -> None:
    assert invoke(org, tmp_path, merge_mapping, "doctor").exit_code == 0
    del org.schema["SOP_Merge_Snapshot__c"]
    result = invoke(org, tmp_path, merge_mapping, "doctor")
    assert result.exit_code == 2
    assert "SOP_Merge_Snapshot__c" in result.output
    assert invoke(org, tmp_path, DEFAULT_MAPPING, "doctor").exit_code == 0  # merges off
