"""`sop-worker doctor` and a live-org `run` through the CLI, against the in-process fake org:
what an admin sees, the exit codes, and a rotated refresh token surviving to the next run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from worker.cli import cli
from worker.mapping import load_mapping
from worker.rules import rule_models
from worker.salesforce.tokens import ENTRY, LEGACY_FILE_NAME
from worker.store import Store

from ..conftest import DEFAULT_MAPPING
from . import demo_seed
from .fakeorg import FakeOrg


def invoke(org: FakeOrg, tmp_path: Path, *args: str, **env: str) -> Result:
    base = {
        "SF_AUTH": "token",
        "SF_INSTANCE_URL": org.instance_url,
        "SF_ACCESS_TOKEN": org.issue_token(),
        "WORKER_DB_PATH": str(tmp_path / "state" / "w.db"),
        "WORKER_MAPPING": str(DEFAULT_MAPPING),
        "WORKER_LOG_FORMAT": "json",
    }
    return CliRunner().invoke(cli, list(args), env={**base, **env}, catch_exceptions=False)


def test_a_healthy_org_passes(org: FakeOrg, tmp_path: Path) -> None:
    result = invoke(org, tmp_path, "doctor")
    assert result.exit_code == 0, result.output
    assert "The org has all" in result.output
    assert org.writes() == []


def test_a_missing_field_is_named_with_its_fix_and_exits_2(org: FakeOrg, tmp_path: Path) -> None:
    del org.schema["Opportunity"]["Closed_Reason__c"]
    result = invoke(org, tmp_path, "doctor")
    assert result.exit_code == 2
    assert "Opportunity.Closed_Reason__c" in result.output
    assert "salesforce/" in result.output  # where the field's metadata is

    as_json = json.loads(invoke(org, tmp_path, "doctor", "--format", "json").stdout)
    assert {(f["kind"], f["sobject"], f["field"]) for f in as_json} >= {
        ("field_missing", "Opportunity", "Closed_Reason__c")
    }


def test_the_task_field_for_due_times_is_checked(org: FakeOrg, tmp_path: Path) -> None:
    del org.schema["Task"]["ReminderDateTime"]
    result = invoke(org, tmp_path, "doctor", "--format", "json")
    assert result.exit_code == 2
    assert ("field_missing", "Task", "ReminderDateTime") in {
        (f["kind"], f["sobject"], f["field"]) for f in json.loads(result.stdout)
    }


def test_incomplete_settings_are_a_finding_not_a_traceback(org: FakeOrg, tmp_path: Path) -> None:
    result = invoke(org, tmp_path, "doctor", SF_ACCESS_TOKEN="")
    assert result.exit_code == 2
    assert "SF_ACCESS_TOKEN" in result.output
    assert org.call_count == 0


def test_rejected_credentials_exit_2_without_echoing_them(org: FakeOrg, tmp_path: Path) -> None:
    token = "00DFAKE0000000001!AQnot-a-real-session"
    result = invoke(org, tmp_path, "run", SF_ACCESS_TOKEN=token)
    assert result.exit_code == 2
    assert "INVALID_SESSION_ID" in result.output or "session" in result.output.lower()
    assert token not in result.output
    assert "not-a-real-session" not in result.output


def test_a_rotated_refresh_token_is_kept_for_the_next_run(
    org: FakeOrg, tmp_path: Path, store_target: str
) -> None:
    """Kept in the store (so on PostgreSQL it outlives a dyno's disk), never in a file."""
    org.rotate_refresh_tokens = True
    first_token = org.credentials.refresh_token
    env = {
        "SF_AUTH": "refresh_token",
        "SF_INSTANCE_URL": "",
        "SF_ACCESS_TOKEN": "",
        "SF_CLIENT_ID": org.credentials.client_id,
        "SF_REFRESH_TOKEN": first_token,
        "WORKER_AS_OF": "2026-11-23",
    }
    if "://" in store_target:
        env["DATABASE_URL"] = store_target
    assert invoke(org, tmp_path, "run", "--dry-run", **env).exit_code == 0
    rotated = org.credentials.refresh_token
    assert rotated != first_token  # the org rotated it; the old one no longer works
    with Store.open(env.get("DATABASE_URL") or tmp_path / "state" / "w.db") as store:
        assert store.secret(ENTRY) is not None
        assert store.secret(ENTRY)[1] == rotated  # type: ignore[index]
    assert not (tmp_path / "state" / LEGACY_FILE_NAME).exists()

    # The next run still has SF_REFRESH_TOKEN set to the first token: it uses the stored one.
    second = invoke(org, tmp_path, "run", "--dry-run", **env)
    assert second.exit_code == 0, second.output
    sent = [r.get("refresh_token") for r in org.oauth_requests]
    assert sent == [first_token, rotated]
    assert first_token not in second.output
    assert rotated not in second.output

    # A new SF_REFRESH_TOKEN from the admin starts a new line; the stored one is ignored.
    org.credentials.refresh_token = "5Aep861ADMINSETNEW"
    third = invoke(
        org, tmp_path, "run", "--dry-run", **{**env, "SF_REFRESH_TOKEN": "5Aep861ADMINSETNEW"}
    )
    assert third.exit_code == 0, third.output
    assert org.oauth_requests[-1]["refresh_token"] == "5Aep861ADMINSETNEW"


def test_the_mapping_converted_status_is_checked(org: FakeOrg, tmp_path: Path) -> None:
    mapping = DEFAULT_MAPPING.read_text(encoding="utf-8").replace(
        'converted_status = "Qualified"', 'converted_status = "Contact Attempted"'
    )
    path = tmp_path / "acme.toml"
    path.write_text(mapping, encoding="utf-8")
    result = invoke(org, tmp_path, "doctor", "--format", "json", WORKER_MAPPING=str(path))
    assert result.exit_code == 2
    found = json.loads(result.stdout)
    assert [(f["kind"], f["message"]) for f in found] == [
        (
            "lead_status_not_converted",
            "Lead status 'Contact Attempted' is not marked Converted, so convertLead refuses it",
        )
    ]


def test_a_token_file_of_an_older_version_is_moved_into_the_store(
    org: FakeOrg, tmp_path: Path
) -> None:
    org.rotate_refresh_tokens = True
    configured = org.credentials.refresh_token
    org.credentials.refresh_token = "5Aep861ROTATEDEARLIER"
    legacy = tmp_path / "state" / LEGACY_FILE_NAME
    legacy.parent.mkdir(parents=True)
    seed = hashlib.sha256(configured.encode()).hexdigest()[:24]
    legacy.write_text(json.dumps({"descends_from": seed, "refresh_token": "5Aep861ROTATEDEARLIER"}))
    env = {
        "SF_AUTH": "refresh_token",
        "SF_INSTANCE_URL": "",
        "SF_ACCESS_TOKEN": "",
        "SF_CLIENT_ID": org.credentials.client_id,
        "SF_REFRESH_TOKEN": configured,
        "WORKER_AS_OF": "2026-11-23",
    }
    assert invoke(org, tmp_path, "run", "--dry-run", **env).exit_code == 0
    assert org.oauth_requests[0]["refresh_token"] == "5Aep861ROTATEDEARLIER"
    assert not legacy.exists()


def org_today() -> dt.date:
    zone = load_mapping(DEFAULT_MAPPING, rule_models()).common.org.zone
    return dt.datetime.now(zone).date()


def events(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_a_live_run_as_of_another_day_is_refused_unless_intended(
    org: FakeOrg, tmp_path: Path
) -> None:
    yesterday = (org_today() - dt.timedelta(days=1)).isoformat()
    refused = invoke(org, tmp_path, "run", "--as-of", yesterday)
    assert refused.exit_code == 2
    assert f"--as-of / WORKER_AS_OF {yesterday} is not the org's today" in refused.output
    assert "--as-of-is-intended" in refused.output
    assert org.call_count == 0
    from_env = invoke(org, tmp_path, "run", WORKER_AS_OF=yesterday)
    assert from_env.exit_code == 2
    assert org.call_count == 0

    meant = invoke(org, tmp_path, "run", "--as-of", yesterday, "--as-of-is-intended")
    assert meant.exit_code == 0, meant.output
    warned = [e for e in events(meant) if e["event"] == "run.as_of_overridden"]
    assert [(e["level"], e["as_of"]) for e in warned] == [("warning", yesterday)]


def test_worker_as_of_on_a_live_run_is_a_warning_even_when_it_is_today(
    org: FakeOrg, tmp_path: Path
) -> None:
    result = invoke(org, tmp_path, "run", WORKER_AS_OF=org_today().isoformat())
    assert result.exit_code == 0, result.output
    assert [e["level"] for e in events(result) if e["event"] == "run.as_of_overridden"] == [
        "warning"
    ]


def test_plan_on_a_live_org_takes_another_day(org: FakeOrg, tmp_path: Path) -> None:
    last_week = (org_today() - dt.timedelta(days=7)).isoformat()
    result = invoke(org, tmp_path, "plan", "--as-of", last_week, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["as_of"] == last_week
    assert not [e for e in events(result) if e["event"] == "run.as_of_overridden"]


def test_applying_a_plan_of_another_day_on_a_live_org_must_be_intended(
    org: FakeOrg, tmp_path: Path
) -> None:
    plan_file = tmp_path / "plan.json"
    yesterday = (org_today() - dt.timedelta(days=1)).isoformat()
    made = invoke(org, tmp_path, "plan", "--as-of", yesterday, "--out", str(plan_file))
    assert made.exit_code == 0, made.output
    refused = invoke(org, tmp_path, "apply", str(plan_file))
    assert refused.exit_code == 2
    assert f"was planned as of {yesterday}, which is not the org's today" in refused.output
    meant = invoke(org, tmp_path, "apply", str(plan_file), "--as-of-is-intended")
    assert meant.exit_code == 0, meant.output


def test_an_auth_failure_is_titled_as_one(org: FakeOrg, tmp_path: Path) -> None:
    result = invoke(org, tmp_path, "doctor", SF_ACCESS_TOKEN="00DFAKE0000000001!AQexpired")
    assert result.exit_code == 2
    assert "Could not sign in to the org" in result.output
    assert "What the org lacks" not in result.output


def test_explain_no_pull_needs_no_credentials(org: FakeOrg, tmp_path: Path) -> None:
    demo_seed.seed(org)
    as_of = {"WORKER_AS_OF": demo_seed.as_of().isoformat()}
    assert invoke(org, tmp_path, "plan", **as_of).exit_code == 0
    offline = {
        "WORKER_DB_PATH": str(tmp_path / "state" / "w.db"),
        "WORKER_MAPPING": str(DEFAULT_MAPPING),
        "WORKER_LOG_FORMAT": "json",
        **as_of,
    }
    calls = org.call_count
    result = CliRunner().invoke(
        cli, ["explain", "006DmP000000004AAA", "--no-pull"], env=offline, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "Northwind Clinics - Payment" in result.output
    assert org.call_count == calls
