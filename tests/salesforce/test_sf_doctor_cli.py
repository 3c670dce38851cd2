"""`sop-worker doctor` and a live-org `run` through the CLI, against the in-process fake org:
what an admin sees, the exit codes, and a rotated refresh token surviving to the next run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from click.testing import CliRunner, Result

from worker.cli import cli
from worker.salesforce.tokens import ENTRY, LEGACY_FILE_NAME
from worker.store import Store

from ..conftest import DEFAULT_MAPPING
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
