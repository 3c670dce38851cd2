"""The real CLI (``python -m worker``) in a subprocess, against the fake org served over real
HTTPS (:mod:`.httpsorg`) and seeded with the bundled demo org (:mod:`.demo_seed`).

Nothing is mocked inside the worker: it reads its settings from a clean environment
(``SF_AUTH=token``, ``REQUESTS_CA_BUNDLE`` trusting the throwaway certificate, no ``.env``:
each process runs in an empty temporary folder), talks TLS to 127.0.0.1, and keeps its
ledger in a real SQLite file. The expected plan is the one ``--local-org fixtures/demo-org``
makes offline; every action of it must end up in the org exactly once: Tasks counted by
their ``SOP_Worker_Key__c``, CaseComments by their ``[sop-worker KEY]`` marker, updates by
their field values, conversions by the Lead and the Opportunity they made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import demo_seed
from .fakeorg import FakeOrg
from .httpsorg import Call, HttpsOrg

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAPPING = ROOT / "mappings" / "default.toml"
KEY_FIELD = "SOP_Worker_Key__c"
MARKER = re.compile(r"\[sop-worker ([^\]\s]+)\]")
CLI_TIMEOUT = 60.0
EXIT_OK, EXIT_FAILED, EXIT_LOCKED, EXIT_STOPPED = 0, 1, 3, 4

# WORKAROUND (worker bug, reported): the pipeline reads every object's name field, which
# defaults to "Name", and CaseComment has no Name field, so with mappings/default.toml every
# live pull fails with INVALID_FIELD (see test_default_mapping_pulls_from_a_live_org). The
# other tests use default.toml plus this section, so they test everything else meanwhile.
CASE_COMMENT_NAME = '\n[objects.CaseComment]\nname_field = "Id"\n'


# -- running the CLI ---------------------------------------------------------------------------
def base_env(folder: Path, mapping: Path) -> dict[str, str]:
    """Only what the worker needs: nothing from the developer's environment."""
    return {
        "PATH": os.defpath,
        "HOME": str(folder),
        "LANG": "C.UTF-8",
        "WORKER_DB_PATH": str(folder / "w.db"),
        "WORKER_MAPPING": str(mapping),
        "WORKER_AS_OF": demo_seed.as_of().isoformat(),
        "WORKER_LOG_FORMAT": "json",
    }


def run_cli(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def fake_clock_start() -> dt.datetime:
    """The fake org's clock: after every demo record's stamp, before the machine's clock
    (the worker reads ``SystemModstamp <= run start``), on the as-of date when possible."""
    now = dt.datetime.now(dt.UTC)
    as_of_noon = dt.datetime.combine(demo_seed.as_of(), dt.time(12), dt.UTC)
    start = min(now - dt.timedelta(minutes=30), as_of_noon)
    assert start > demo_seed.newest_stamp(), "the machine's clock is before the demo org's data"
    return start


@dataclass
class LiveOrg:
    """The demo org behind HTTPS, and a CLI wired to it."""

    org: FakeOrg
    server: HttpsOrg
    folder: Path
    env: dict[str, str]

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(args, {**self.env, **env}, self.folder)

    def popen(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.folder / f"popen-{len(list(self.folder.glob('popen-*')))}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *args],
                env=self.env,
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    def writes(self) -> list[Call]:
        return self.server.writes()

    def audit(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("audit", "--format", "jsonl", *args)
        assert result.returncode == EXIT_OK, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def live_org(folder: Path, mapping: Path, **org_options: Any) -> Iterator[LiveOrg]:
    folder.mkdir(parents=True, exist_ok=True)
    org = FakeOrg(now=fake_clock_start(), **org_options)
    demo_seed.seed(org)
    with HttpsOrg(org, folder / "tls") as server:
        env = {
            **base_env(folder, mapping),
            "SF_AUTH": "token",
            "SF_INSTANCE_URL": server.url,
            "SF_ACCESS_TOKEN": org.issue_token(),
            "REQUESTS_CA_BUNDLE": str(server.ca_bundle),
            # Retries wait little (full-jitter backoff under a 2 s total).
            "SF_RETRY_MAX_SECONDS": "2",
        }
        yield LiveOrg(org, server, folder, env)


@pytest.fixture(scope="module")
def mapping(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8")
    if "[objects.CaseComment]" not in text:
        text += CASE_COMMENT_NAME
    path = tmp_path_factory.mktemp("mapping") / "default-plus-casecomment.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def local_plan(tmp_path_factory: pytest.TempPathFactory, mapping: Path) -> dict[str, Any]:
    """The plan the demo org gets offline (``--local-org``): no SF_ variables at all."""
    folder = tmp_path_factory.mktemp("local")
    result = run_cli(
        ["plan", "--local-org", str(demo_seed.DEMO_ORG), "--format", "json"],
        base_env(folder, mapping),
        folder,
    )
    assert result.returncode == EXIT_OK, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    assert plan["actions"], "the demo org plans nothing?"
    return plan


@pytest.fixture
def live(tmp_path: Path, mapping: Path) -> Iterator[LiveOrg]:
    with live_org(tmp_path / "live", mapping) as found:
        yield found


# -- what the org shows -------------------------------------------------------------------------
def keys(plan: Mapping[str, Any]) -> list[str]:
    return sorted(a["key"] for a in plan["actions"])


def _same(found: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        expected = ";".join(map(str, expected))  # multi-select picklist
    if isinstance(expected, float) or isinstance(found, float):
        return found is not None and expected is not None and float(found) == float(expected)
    return bool(found == expected)


def effect_problems(
    org: FakeOrg, actions: Sequence[Mapping[str, Any]], *, skip: frozenset[str] = frozenset()
) -> list[str]:
    """Each action whose effect is not in the org exactly once (empty: all applied once)."""
    tasks = Counter(t.get(KEY_FIELD) for t in org.of("Task") if t.get(KEY_FIELD))
    comments = Counter(
        key for c in org.of("CaseComment") for key in MARKER.findall(c.get("CommentBody") or "")
    )
    opportunities = Counter(o.get("Name") for o in org.of("Opportunity"))
    problems = []
    for action in actions:
        key, kind, target = action["key"], action["kind"], action["target"]
        if key in skip:
            continue
        if kind == "create_task":
            if tasks[key] != 1:
                problems.append(f"{key}: {tasks[key]} Tasks carry the key")
        elif kind == "case_comment":
            if comments[key] != 1:
                problems.append(f"{key}: {comments[key]} CaseComments carry the marker")
        elif kind in ("update", "close"):
            record = org.get(target["id"]) or {}
            for change in action["changes"]:
                name = change["field"]
                if not _same(record.get(name), change["after"]):
                    problems.append(
                        f"{key}: {name} is {record.get(name)!r}, not {change['after']!r}"
                    )
        elif kind == "convert_lead":
            lead = org.get(target["id"]) or {}
            if not lead.get("IsConverted"):
                problems.append(f"{key}: the Lead is not converted")
            name = action.get("opportunity_name")
            if action.get("create_opportunity") and opportunities[name] != 1:
                problems.append(f"{key}: {opportunities[name]} Opportunities named {name!r}")
        else:
            problems.append(f"{key}: no check for {kind}")
    return problems


def final_outcomes(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each key's last outcome in the audit log (outcome and reconcile rows, in order)."""
    out: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: int(r["id"])):
        if row["event"] in ("outcome", "reconciled"):
            out[row["key"]] = row["outcome"]
    return out


def assert_no_duplicates(org: FakeOrg) -> None:
    tasks = Counter(t.get(KEY_FIELD) for t in org.of("Task") if t.get(KEY_FIELD))
    assert [k for k, n in tasks.items() if n > 1] == []
    comments = Counter(
        key for c in org.of("CaseComment") for key in MARKER.findall(c.get("CommentBody") or "")
    )
    assert [k for k, n in comments.items() if n > 1] == []


# == (a) plan ======================================================================================
def test_default_mapping_pulls_from_a_live_org(live: LiveOrg) -> None:
    """mappings/default.toml as shipped, against an org with Salesforce's real schema."""
    result = live.cli("plan", "--format", "json", WORKER_MAPPING=str(DEFAULT_MAPPING))
    assert result.returncode == EXIT_OK, result.stderr[-2000:]
    assert json.loads(result.stdout)["actions"]


def test_plan_over_https_equals_the_local_org_plan_and_writes_nothing(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    result = live.cli("plan", "--format", "json")
    assert result.returncode == EXIT_OK, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert keys(plan) == keys(local_plan)
    stamps = {a["key"]: a["target"]["stamp"] for a in plan["actions"]}
    assert stamps == {a["key"]: a["target"]["stamp"] for a in local_plan["actions"]}
    assert live.server.calls, "nothing reached the HTTPS server"
    assert all(c.status == 200 for c in live.server.calls)
    assert live.writes() == []
    assert plan["cost"]["remaining_daily"] == live.org.daily_limit - live.org.used


# == (b) run =======================================================================================
def test_run_applies_the_plan_once_and_a_second_run_writes_nothing(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    org = live.org
    tasks_before, comments_before = len(org.of("Task")), len(org.of("CaseComment"))
    first = live.cli("run")
    assert first.returncode == EXIT_OK, first.stderr[-2000:]
    assert live.writes(), "run wrote nothing"
    assert effect_problems(org, local_plan["actions"]) == []
    kinds = Counter(a["kind"] for a in local_plan["actions"])
    assert len(org.of("Task")) == tasks_before + kinds["create_task"]
    assert len(org.of("CaseComment")) == comments_before + kinds["case_comment"]
    outcomes = final_outcomes(live.audit())
    assert {outcomes.get(k) for k in keys(local_plan)} == {"applied"}

    live.server.reset_calls()
    second = live.cli("run")
    assert second.returncode == EXIT_OK, second.stderr[-2000:]
    assert live.writes() == []
    assert live.server.calls, "the second run did not read the org"


# == (c) SIGKILL between the write reaching Salesforce and the SQLite commit ======================
def _first_write(call: Call) -> bool:
    return call.write


def _first_create(call: Call) -> bool:
    """The composite that creates CaseComments (a POST to sObject Collections): its replay
    would duplicate them, so the next run must find them by their key markers."""
    return "POST" in call.subrequest_methods()


@dataclass
class KillScenario:
    plan: dict[str, Any]
    killed_at: Call | None
    returncode: int | None
    killed_log: str
    immediate: subprocess.CompletedProcess[str]
    rerun: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    writes_again: list[Call]
    audit: list[dict[str, Any]]
    org: FakeOrg
    counts_at_kill: dict[str, int] = field(default_factory=dict)


def _expire_lease(db_path: Path) -> None:
    """What WORKER_LOCK_TTL_SECONDS would do after 30 minutes: the dead run's lease lapses."""
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.execute("UPDATE run_lock SET expires_at = ?", ["2000-01-01T00:00:00+00:00"])
        db.commit()


def kill_during_write(
    live: LiveOrg, when: Callable[[Call], bool]
) -> tuple[Call | None, int | None, str]:
    """Start ``sop-worker run``; at the first write ``when`` picks, once the org applied it
    and before it answers, SIGKILL the process. Returns (the call, returncode, output)."""
    started = threading.Event()
    killed = threading.Event()
    holder: dict[str, Any] = {}

    def hook(call: Call) -> bool:
        if killed.is_set() or not when(call):
            return False
        started.wait(10)
        proc: subprocess.Popen[bytes] = holder["proc"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)  # dead before any answer is sent
        holder["call"] = call
        killed.set()
        return True  # the answer is never sent

    live.server.after_write = hook
    proc, log = live.popen("run")
    holder["proc"] = proc
    started.set()
    try:
        killed.wait(CLI_TIMEOUT)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    finally:
        live.server.after_write = None
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return holder.get("call"), proc.returncode, log.read_text(errors="replace")


@pytest.fixture(scope="module", params=["first_write", "first_create"])
def sigkill(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mapping: Path,
    local_plan: dict[str, Any],
) -> Iterator[KillScenario]:
    when = _first_write if request.param == "first_write" else _first_create
    with live_org(tmp_path_factory.mktemp(request.param), mapping) as live:
        call, returncode, output = kill_during_write(live, when)
        counts = {"Task": len(live.org.of("Task")), "CaseComment": len(live.org.of("CaseComment"))}
        immediate = live.cli("run")
        rerun = immediate
        if immediate.returncode == EXIT_LOCKED:
            # The dead run's lease still holds (see the lock test); let it lapse.
            _expire_lease(live.folder / "w.db")
            rerun = live.cli("run")
        live.server.reset_calls()
        again = live.cli("run")
        yield KillScenario(
            plan=local_plan,
            killed_at=call,
            returncode=returncode,
            killed_log=output,
            immediate=immediate,
            rerun=rerun,
            again=again,
            writes_again=live.writes(),
            audit=live.audit(),
            org=live.org,
            counts_at_kill=counts,
        )


def test_sigkill_lands_after_the_write_was_applied(sigkill: KillScenario) -> None:
    assert sigkill.killed_at is not None, sigkill.killed_log[-2000:]
    assert sigkill.returncode == -signal.SIGKILL, sigkill.killed_log[-2000:]
    # The org applied the write the process never heard back about.
    if sigkill.killed_at.subrequest_methods().count("POST"):
        assert sigkill.counts_at_kill["CaseComment"] > 42
    else:
        assert sigkill.counts_at_kill["Task"] > 261


def test_sigkill_rerun_is_not_locked_out_by_the_dead_run(sigkill: KillScenario) -> None:
    """The killed run's lease names its pid on this host, and that pid is gone."""
    assert sigkill.immediate.returncode == EXIT_OK, sigkill.immediate.stderr[-1000:]


def test_sigkill_rerun_applies_every_action_once(sigkill: KillScenario) -> None:
    assert sigkill.rerun.returncode == EXIT_OK, sigkill.rerun.stderr[-2000:]
    assert_no_duplicates(sigkill.org)
    assert effect_problems(sigkill.org, sigkill.plan["actions"]) == []
    assert sigkill.again.returncode == EXIT_OK, sigkill.again.stderr[-2000:]
    assert sigkill.writes_again == []


def test_sigkill_audit_shows_every_action_applied(sigkill: KillScenario) -> None:
    rows = sigkill.audit
    reconciled = [r for r in rows if r["event"] == "reconciled"]
    assert reconciled, "the rerun did not reconcile the killed run's sent actions"
    outcomes = final_outcomes(rows)
    not_applied = {k: outcomes.get(k) for k in keys(sigkill.plan) if outcomes.get(k) != "applied"}
    assert not_applied == {}


# == (d) transient faults ==========================================================================
def test_transient_faults_are_retried_and_everything_is_applied_once(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    org = live.org
    closeout = next(a for a in local_plan["actions"] if a["kind"] == "close")
    org.fail(write=True, status=503, error_code="SERVER_UNAVAILABLE", times=1)
    org.lock(closeout["target"]["id"], times=1)
    result = live.cli("run")
    assert result.returncode == EXIT_OK, result.stderr[-2000:]
    statuses = [c.status for c in live.writes()]
    assert statuses[0] == 503
    assert 200 in statuses
    retries = [
        json.loads(line) for line in result.stderr.splitlines() if "salesforce.retry" in line
    ]
    assert {r.get("error_code") for r in retries} >= {"SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW"}
    assert_no_duplicates(org)
    assert effect_problems(org, local_plan["actions"]) == []
    outcomes = final_outcomes(live.audit())
    assert {outcomes.get(k) for k in keys(local_plan)} == {"applied"}


# == (e) a permanent per-record error ===============================================================
def test_a_validation_error_fails_that_action_only(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    org = live.org
    closeout = next(a for a in local_plan["actions"] if a["kind"] == "close")
    target = closeout["target"]["id"]
    before = dict(org.get(target) or {})

    def rule(sobject: str, record: Mapping[str, Any]) -> tuple[str, str] | None:
        if record.get("Id") == target:
            return ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Payment status is locked by Finance")
        return None

    org.validate(rule)
    result = live.cli("run")
    assert result.returncode == EXIT_FAILED, result.stderr[-2000:]
    failed = live.audit("--outcome", "failed")
    assert [(r["key"], r["error_code"]) for r in failed] == [
        (closeout["key"], "FIELD_CUSTOM_VALIDATION_EXCEPTION")
    ]
    assert "Payment status is locked by Finance" in failed[0]["message"]
    assert org.get(target) == before
    assert effect_problems(org, local_plan["actions"], skip=frozenset({closeout["key"]})) == []
    outcomes = final_outcomes(live.audit())
    assert {k for k in keys(local_plan) if outcomes.get(k) != "applied"} == {closeout["key"]}


# == (f) the API budget reserve ====================================================================
def test_the_api_reserve_stops_new_work_and_the_next_run_resumes(
    tmp_path: Path, mapping: Path, local_plan: dict[str, Any]
) -> None:
    with live_org(tmp_path / "budget", mapping, daily_limit=1000) as live:
        org = live.org
        reserve = 200  # SF_API_RESERVE_PERCENT's default 20% of 1000

        def others_spend_the_allowance(call: Call) -> bool:
            # Other integrations use the org's calls meanwhile: the answer to the first
            # write already reports fewer remaining calls than the reserve.
            org.used = max(org.used, org.daily_limit - reserve + 50)
            return False

        live.server.after_write = others_spend_the_allowance
        stopped = live.cli("run")
        live.server.after_write = None
        assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-2000:]
        assert "reserve" in stopped.stderr.lower()
        assert len(live.writes()) == 1, "new work was started under the reserve"
        assert_no_duplicates(org)
        assert effect_problems(org, local_plan["actions"]) != []  # some work is left

        org.used = 0  # a new day: the allowance is back
        live.server.reset_calls()
        resumed = live.cli("run")
        assert resumed.returncode == EXIT_OK, resumed.stderr[-2000:]
        assert_no_duplicates(org)
        assert effect_problems(org, local_plan["actions"]) == []
