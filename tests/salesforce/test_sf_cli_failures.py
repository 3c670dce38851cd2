"""An org that refuses the worker's credentials, through the real CLI over HTTPS: exit 2 with
the org's own words, an error-level event for log alerts, and no configured secret in any
output or stored row, even when the token endpoint echoes the request it refused."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import pytest
import requests

from .test_sf_cli import EXIT_CONFIG, LiveOrg, live_org, local_plan

# The real CLI in subprocesses: `pytest -m "not slow"` leaves these out of a quick loop.
pytestmark = pytest.mark.slow

__all__ = ["local_plan"]  # the fixture, shared with test_sf_cli

FLOWS = ("jwt", "client_credentials", "refresh_token", "password")
# Wrong values, with characters that URL-encoding and JSON escaping change.
SECRETS = {
    "SF_CLIENT_SECRET": "wr0ng+client/secret=value",
    "SF_PASSWORD": 'pa$$ "word"&more',
    "SF_SECURITY_TOKEN": "T0KEN+sec/urity",
    "SF_REFRESH_TOKEN": "5Aep861wrong+refresh/token==",
}


@pytest.fixture
def refusing(tmp_path: Path) -> Iterator[LiveOrg]:
    with live_org(tmp_path / "live") as found:
        for name in ("SF_ACCESS_TOKEN", "SF_INSTANCE_URL"):
            del found.env[name]
        found.env["SF_LOGIN_URL"] = found.server.url
        found.env["SF_CLIENT_ID"] = found.org.credentials.client_id
        yield found


def flow_env(live: LiveOrg, flow: str, rsa_keys: tuple[bytes, bytes]) -> dict[str, str]:
    env = {"SF_AUTH": flow}
    if flow == "jwt":  # a key the org's app does not know
        env |= {
            "SF_USERNAME": live.org.credentials.username,
            "SF_PRIVATE_KEY": rsa_keys[0].decode(),
        }
    elif flow == "client_credentials":
        env |= {"SF_CLIENT_SECRET": SECRETS["SF_CLIENT_SECRET"]}
    elif flow == "refresh_token":
        env |= {"SF_REFRESH_TOKEN": SECRETS["SF_REFRESH_TOKEN"]}
    else:
        env |= {"SF_USERNAME": live.org.credentials.username} | {
            k: SECRETS[k] for k in ("SF_CLIENT_SECRET", "SF_PASSWORD", "SF_SECURITY_TOKEN")
        }
    return env


def error_events(stderr: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [e for e in found if e["level"] == "error"]


@pytest.mark.parametrize("flow", FLOWS)
def test_plan_with_refused_credentials_is_exit_2_with_the_orgs_words(
    refusing: LiveOrg, flow: str, rsa_keys: tuple[bytes, bytes]
) -> None:
    result = refusing.cli("plan", **flow_env(refusing, flow, rsa_keys))
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    stopped, fatal = error_events(result.stderr)
    assert stopped["event"] == "run.stopped"
    assert fatal["event"] == "cli.error"
    assert fatal["exit_code"] == EXIT_CONFIG
    assert fatal["message"] == (
        f"[invalid_grant, HTTP 400] {flow} login refused: authentication failure"
    )


@pytest.mark.parametrize("command", ["run", "apply", "explain", "doctor"])
def test_every_command_with_refused_credentials_is_exit_2(
    refusing: LiveOrg,
    command: str,
    local_plan: dict[str, Any],
    rsa_keys: tuple[bytes, bytes],
) -> None:
    args = {
        "run": ["run"],
        "apply": ["apply", str(refusing.folder / "plan.json")],
        "explain": ["explain", local_plan["actions"][0]["target"]["id"]],
        "doctor": ["doctor", "--format", "json"],
    }[command]
    (refusing.folder / "plan.json").write_text(json.dumps(local_plan), encoding="utf-8")
    result = refusing.cli(*args, **flow_env(refusing, "password", rsa_keys))
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    refusal = "[invalid_grant, HTTP 400] password login refused: authentication failure"
    if command == "doctor":
        messages = [f["message"] for f in json.loads(result.stdout)]
        assert f"authentication failed: {refusal}" in messages
    else:
        assert error_events(result.stderr)[-1]["message"] == refusal
    assert refusing.writes() == []


def echo_the_request(live: LiveOrg) -> None:
    """A token endpoint (or a proxy before it) that puts the refused request in its error."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        raw = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        text = f"bad request: {raw} (decoded: {unquote_plus(raw)})"
        body = json.dumps({"error": "invalid_request", "error_description": text})
        return 400, {"Content-Type": "application/json"}, body

    live.org._oauth = answer  # type: ignore[method-assign]


def stored_text(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [repr(conn.execute(f"SELECT * FROM [{t}]").fetchall()) for t in tables]  # noqa: S608
    conn.close()
    return "\n".join(rows)


@pytest.mark.parametrize("flow", ["password", "refresh_token"])
def test_secrets_echoed_by_the_token_endpoint_reach_no_output(
    refusing: LiveOrg, flow: str, rsa_keys: tuple[bytes, bytes]
) -> None:
    echo_the_request(refusing)
    env = flow_env(refusing, flow, rsa_keys) | {"SF_SECURITY_TOKEN": SECRETS["SF_SECURITY_TOKEN"]}
    outputs = []
    for fmt, args in (
        ("json", ["plan"]),
        ("json", ["doctor", "--format", "json"]),
        ("console", ["run", "--dry-run"]),  # the run summary on stdout, console logs
        ("console", ["doctor"]),
    ):
        result = refusing.cli(*args, WORKER_LOG_FORMAT=fmt, **env)
        assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
        outputs += [result.stdout, result.stderr]
    table = refusing.cli("runs", **env)
    outputs += [table.stdout, stored_text(refusing.folder / "w.db")]
    text = "\n".join(outputs)
    assert "bad request: grant_type=" in text  # the echo itself is shown, scrubbed
    assert "[redacted]" in text
    sent = {k: v for k, v in SECRETS.items() if k in env}
    for name, value in sent.items():
        for form in (value, quote_plus(value), json.dumps(value)[1:-1], *value.split()):
            if len(form) >= 6:
                assert form not in text, f"{name} leaked"


def test_an_expired_session_stops_the_run_at_error_level(tmp_path: Path) -> None:
    with live_org(tmp_path / "live") as live:
        live.org.expire_sessions()  # SF_ACCESS_TOKEN from `sf org display`, now expired
        result = live.cli("run")
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    stopped, fatal = error_events(result.stderr)
    assert stopped["event"] == "run.stopped"
    assert "cannot be renewed" in stopped["message"]
    assert (fatal["event"], fatal["message"]) == ("cli.error", stopped["message"])
