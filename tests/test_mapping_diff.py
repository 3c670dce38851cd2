"""`sop-worker diff --mapping NEW.toml`: today's plan under both mappings, compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.store import Store

from .conftest import DEFAULT_MAPPING
from .test_report import invoke, org_args


def changed_mapping(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "new.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def diff_json(*args: str) -> dict[str, Any]:
    result = invoke("diff", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_a_changed_follow_up_count_lists_the_records_it_affects(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    new = changed_mapping(tmp_path, "max_contact_followups = 5", "max_contact_followups = 4")
    found = diff_json(*org_args(demo_copy, db), "--mapping", str(new))

    plan = invoke("plan", *org_args(demo_copy, db), "--json")
    followups = {
        a["target"]["id"]
        for a in json.loads(plan.stdout)["actions"]
        if a["target"]["sobject"] == "Lead" and " of 5:" in a.get("subject", "")
    }
    assert followups  # the demo has leads in their follow-ups today
    assert set(found["records_affected"]) == followups
    (step,) = found["steps"]
    assert (step["rule"], step["step"]) == (
        "homecare_stages",
        "Contact Attempted: follow up (5 follow ups)",
    )
    assert {i["record_id"] for i in step["changed"]} == followups
    assert all(" of 4:" in i["after"] for i in step["changed"])
    with Store.open(db) as store:
        assert store.count("ledger") == store.count("audit") == 0  # nothing written


def test_the_same_mapping_changes_nothing_and_a_bad_one_exits_2(
    demo_copy: Path, tmp_path: Path
) -> None:
    db = tmp_path / "w.db"
    same = diff_json(*org_args(demo_copy, db), "--mapping", str(DEFAULT_MAPPING))
    assert (same["steps"], same["records_affected"]) == ([], [])
    bad = changed_mapping(tmp_path, "max_contact_followups = 5", "max_contact_followups = 'five'")
    result = invoke("diff", *org_args(demo_copy, db), "--mapping", str(bad))
    assert result.exit_code == 2
    assert "max_contact_followups" in result.output
    missing = invoke("diff", *org_args(demo_copy, db))
    assert missing.exit_code == 2
    assert "--mapping NEW.toml" in missing.output
