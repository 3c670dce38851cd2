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
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from worker.records import parse_sf_datetime
from worker.store import Store

from ..conftest import execute, postgres_schema
from . import demo_seed
from .fakeorg import ASSIGNABLE, ORG_ID, USER_ID, FakeOrg
from .httpsorg import Call, HttpsOrg

# The real CLI in subprocesses: `pytest -m "not slow"` leaves these out of a quick loop.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MAPPING = ROOT / "mappings" / "default.toml"
KEY_FIELD = "SOP_Worker_Key__c"
MARKER = re.compile(r"\[sop-worker ([^\]\s]+)\]")
CLI_TIMEOUT = 60.0
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_STOPPED, EXIT_UNKNOWN = 0, 1, 2, 3, 4, 5


# -- running the CLI ---------------------------------------------------------------------------
def base_env(folder: Path) -> dict[str, str]:
    """Only what the worker needs: nothing from the developer's environment."""
    return {
        "PATH": os.defpath,
        "HOME": str(folder),
        "LANG": "C.UTF-8",
        "WORKER_DB_PATH": str(folder / "w.db"),
        "WORKER_MAPPING": str(DEFAULT_MAPPING),
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


def as_of_intended(args: Sequence[str]) -> list[str]:
    """The demo org's records are dated for its manifest day, not the machine's today: the
    writing commands are told that as-of date is meant (a live org refuses it otherwise)."""
    return [*args, "--as-of-is-intended"] if args and args[0] in ("run", "apply") else list(args)


@dataclass
class LiveOrg:
    """The demo org behind HTTPS, and a CLI wired to it."""

    org: FakeOrg
    server: HttpsOrg
    folder: Path
    env: dict[str, str]

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(as_of_intended(args), {**self.env, **env}, self.folder)

    def popen(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.folder / f"popen-{len(list(self.folder.glob('popen-*')))}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *as_of_intended(args)],
                env=self.env,
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    def writes(self) -> list[Call]:
        return self.server.writes()

    def store(self) -> Store:
        return Store.open(self.env.get("DATABASE_URL") or self.env["WORKER_DB_PATH"])

    def audit(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("audit", "--format", "jsonl", "--limit", "0", *args)
        assert result.returncode == EXIT_OK, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def live_org(folder: Path, store: str | None = None, **org_options: Any) -> Iterator[LiveOrg]:
    """``store``: a PostgreSQL URL for the worker's store (else SQLite in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    org = FakeOrg(now=fake_clock_start(), **org_options)
    demo_seed.seed(org)
    with HttpsOrg(org, folder / "tls") as server:
        env = {
            **base_env(folder),
            "SF_AUTH": "token",
            "SF_INSTANCE_URL": server.url,
            "SF_ACCESS_TOKEN": org.issue_token(),
            "REQUESTS_CA_BUNDLE": str(server.ca_bundle),
            # Retries wait little (full-jitter backoff under a 2 s total).
            "SF_RETRY_MAX_SECONDS": "2",
        }
        if store and "://" in store:
            env["DATABASE_URL"] = store
        yield LiveOrg(org, server, folder, env)


@pytest.fixture(scope="module")
def local_plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The plan the demo org gets offline (``--local-org``): no SF_ variables at all."""
    folder = tmp_path_factory.mktemp("local")
    result = run_cli(
        ["plan", "--local-org", str(demo_seed.DEMO_ORG), "--format", "json"],
        base_env(folder),
        folder,
    )
    assert result.returncode == EXIT_OK, result.stderr
    plan: dict[str, Any] = json.loads(result.stdout)
    assert plan["actions"], "the demo org plans nothing?"
    return plan


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveOrg]:
    with live_org(tmp_path / "live") as found:
        yield found


@pytest.fixture
def live_on_each_store(tmp_path: Path, store_target: str) -> Iterator[LiveOrg]:
    """The live org, with the worker's store on SQLite, then on PostgreSQL."""
    with live_org(tmp_path / "live", store_target) as found:
        yield found


# -- what the org shows -------------------------------------------------------------------------
def keys(plan: Mapping[str, Any]) -> list[str]:
    return sorted(a["key"] for a in plan["actions"])


# Fields a rule sets to the instant it evaluated at (lead_routing's routing stamp): the live
# run evaluates after the offline plan was made, so it writes a later instant.
RUN_INSTANT_FIELDS = frozenset({"Routed_At__c"})


def _same(found: Any, expected: Any, name: str = "") -> bool:
    if name in RUN_INSTANT_FIELDS and isinstance(found, str) and isinstance(expected, str):
        return parse_sf_datetime(found) >= parse_sf_datetime(expected)
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
    submissions = Counter(
        key
        for step in org.of("ProcessInstanceStep")
        for key in MARKER.findall(step.get("Comments") or "")
    )
    members = Counter(
        (m.get("CampaignId"), m.get("ContactId") or m.get("LeadId"))
        for m in org.of("CampaignMember")
    )
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
                if not _same(record.get(name), change["after"], name):
                    problems.append(
                        f"{key}: {name} is {record.get(name)!r}, not {change['after']!r}"
                    )
        elif kind == "submit_approval":
            if submissions[key] != 1:
                problems.append(f"{key}: {submissions[key]} approval submissions carry the key")
        elif kind == "add_campaign_member":
            pair = (action["campaign_id"], action["member_id"])
            if members[pair] != 1:
                problems.append(f"{key}: {members[pair]} CampaignMembers of {pair[1]}")
        elif kind == "convert_lead":
            lead = org.get(target["id"]) or {}
            if not lead.get("IsConverted"):
                problems.append(f"{key}: the Lead is not converted")
            name = action.get("opportunity_name")
            if action.get("create_opportunity") and opportunities[name] != 1:
                problems.append(f"{key}: {opportunities[name]} Opportunities named {name!r}")
            new = next((o for o in org.of("Opportunity") if o.get("Name") == name), {})
            for field_name, value in (action.get("opportunity_values") or {}).items():
                if new.get(field_name) != value:
                    problems.append(
                        f"{key}: new opportunity {field_name} is {new.get(field_name)!r}"
                    )
        else:
            problems.append(f"{key}: no check for {kind}")
    return problems


def assert_applied_once(
    org: FakeOrg, actions: Sequence[Mapping[str, Any]], *, skip: frozenset[str] = frozenset()
) -> None:
    problems = effect_problems(org, actions, skip=skip)
    assert not problems, f"{len(problems)} action(s) not applied exactly once:\n" + "\n".join(
        problems
    )


def not_applied(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]) -> dict[str, str]:
    """Plan keys whose last audited outcome is not ``applied`` (key -> that outcome)."""
    outcomes = final_outcomes(rows)
    return {k: outcomes.get(k, "none") for k in keys(plan) if outcomes.get(k) != "applied"}


def _listing(found: Mapping[str, str], most: int = 12) -> str:
    lines = [f"{k}: {v}" for k, v in sorted(found.items())]
    more = [f"... and {len(lines) - most} more"] if len(lines) > most else []
    return f"{len(found)} key(s):\n" + "\n".join(lines[:most] + more)


def written(calls: Sequence[Call]) -> Counter[str]:
    """What the write calls wrote, one entry per record written: ``Id:fields`` for an update
    (two rules may set different fields of one record, in two waves), the key for a keyed
    Task upsert, ``comment:<key>`` for a created CaseComment, ``convert:<Id>``,
    ``approval:<key>`` for an approval submission."""
    out: Counter[str] = Counter()
    for call in calls:
        if call.kind == "approval":
            for request in json.loads(call.body).get("requests", []):
                keys = MARKER.findall(str(request.get("comments") or ""))
                out["approval:" + ",".join(keys)] += 1
            continue
        if call.kind == "soap":
            ids = re.findall(rb"<(?:\w+:)?leadId>(\w+)</", call.body)
            out.update(f"convert:{i.decode()}" for i in ids)
            continue
        subs = json.loads(call.body).get("compositeRequest", []) if call.kind == "composite" else []
        for sub in subs:
            for record in (sub.get("body") or {}).get("records", []):
                text = str(record.get("CommentBody") or "")
                fields = ",".join(sorted(k for k in record if k not in ("Id", "attributes")))
                out[
                    record.get(KEY_FIELD)
                    or (record.get("Id") and f"{record['Id']}:{fields}")
                    or "comment:" + ",".join(MARKER.findall(text))
                ] += 1
    return out


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
    # A dry run's client only reads: GETs, and composites of GETs (five queries a call).
    posts = [c for c in live.server.calls if c.method != "GET"]
    assert posts
    assert all(c.path.endswith("/composite") for c in posts)
    assert {m for c in posts for m in c.subrequest_methods()} == {"GET"}
    assert plan["cost"]["remaining_daily"] == live.org.daily_limit - live.org.used
    # The plan names the org signed in to (a ready token: asked of UserInfo) and its user.
    assert plan["org"] == {
        "id": ORG_ID,
        "name": "SOP Worker demo org",  # the mapping's org.name
        "user_id": USER_ID,
        "username": live.org.credentials.username,
    }


def test_a_plan_made_on_another_org_is_refused_with_exit_2(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    plan_file = live.folder / "offline-plan.json"
    plan_file.write_text(json.dumps(local_plan), encoding="utf-8")
    result = live.cli("apply", str(plan_file))
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert local_plan["org"]["id"] in result.stderr
    assert ORG_ID in result.stderr
    assert live.writes() == []


def test_a_live_run_as_of_the_demo_day_is_refused_without_saying_it_is_meant(
    live: LiveOrg,
) -> None:
    result = run_cli(["run"], live.env, live.folder)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "is not the org's today" in result.stderr
    assert "Traceback" not in result.stderr
    assert live.writes() == []


def test_tls_is_verified_and_a_private_ca_is_trusted_through_requests_ca_bundle(
    live: LiveOrg,
) -> None:
    without = {k: v for k, v in live.env.items() if k != "REQUESTS_CA_BUNDLE"}
    untrusted = run_cli(["plan", "--format", "json"], without, live.folder)
    assert untrusted.returncode == EXIT_CONFIG, untrusted.stderr[-2000:]
    assert "not trusted" in untrusted.stderr
    assert "REQUESTS_CA_BUNDLE" in untrusted.stderr
    assert live.server.calls == [], "a request got past a rejected certificate"
    missing = live.cli("plan", REQUESTS_CA_BUNDLE=str(live.folder / "missing.pem"))
    assert missing.returncode == EXIT_CONFIG, missing.stderr[-2000:]
    assert "missing.pem" in missing.stderr
    assert "Traceback" not in missing.stderr


# == (b) run =======================================================================================
def test_run_applies_the_plan_once_and_a_second_run_writes_nothing(
    live_on_each_store: LiveOrg, local_plan: dict[str, Any]
) -> None:
    live = live_on_each_store
    org = live.org
    tasks_before, comments_before = len(org.of("Task")), len(org.of("CaseComment"))
    first = live.cli("run")
    assert first.returncode == EXIT_OK, first.stderr[-2000:]
    # One record write per action: nothing sent twice, no Id twice in a collection.
    sent = written(live.writes())
    # ... plus, for each conversion, the update giving its new opportunity the mapped values
    follow_ups = [a for a in local_plan["actions"] if a.get("opportunity_values")]
    assert follow_ups
    assert sum(sent.values()) == len(local_plan["actions"]) + len(follow_ups)
    assert [k for k, n in sent.items() if n > 1] == []
    assert_applied_once(org, local_plan["actions"])
    kinds = Counter(a["kind"] for a in local_plan["actions"])
    assert len(org.of("Task")) == tasks_before + kinds["create_task"]
    assert len(org.of("CaseComment")) == comments_before + kinds["case_comment"]
    left = not_applied(live.audit(), local_plan)
    assert not left, _listing(left)

    live.server.reset_calls()
    second = live.cli("run")
    assert second.returncode == EXIT_OK, second.stderr[-2000:]
    assert live.writes() == []
    assert live.server.calls, "the second run did not read the org"


# == assignment rules: active in the org, yet no owner moves ======================================
QUEUE = "00GDmR000000009AAA"


def owners(org: FakeOrg) -> dict[str, Any]:
    return {r["Id"]: r.get("OwnerId") for obj in ASSIGNABLE for r in org.of(obj)}


def test_a_run_in_an_org_with_assignment_rules_moves_no_owner(
    tmp_path: Path, local_plan: dict[str, Any]
) -> None:
    with live_org(tmp_path / "assign") as live:
        org = live.org
        for sobject in ASSIGNABLE:
            org.assign(sobject, QUEUE)
        org.default_case_owner = QUEUE
        org.task_trigger_updates_case = True  # a Task on a Case updates the Case
        before = owners(org)
        result = live.cli("run")
        assert result.returncode == EXIT_OK, result.stderr[-2000:]
        assert_applied_once(org, local_plan["actions"])
        set_by_worker = {
            a["target"]["id"]
            for a in local_plan["actions"]
            if any(c["field"] == "OwnerId" for c in a.get("changes", []))
        }
        after = owners(org)
        moved = {rid: (was, after[rid]) for rid, was in before.items() if after[rid] != was}
        assert {k: v for k, v in moved.items() if k not in set_by_worker} == {}
        assert org.reassigned == []


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
    missing_at_kill: list[str] = field(default_factory=list)


def _expire_lease(live: LiveOrg) -> None:
    """What WORKER_LOCK_TTL_SECONDS would do after 30 minutes: the dead run's lease lapses."""
    with live.store() as store:
        execute(store, "UPDATE run_lock SET expires_at = '2000-01-01T00:00:00+00:00'")


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


@pytest.fixture(
    scope="module",
    params=[("first_write", "sqlite"), ("first_create", "sqlite"), ("first_write", "postgresql")],
    ids=lambda p: "-".join(p),
)
def sigkill(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    local_plan: dict[str, Any],
) -> Iterator[KillScenario]:
    moment, backend = request.param
    when = _first_write if moment == "first_write" else _first_create
    with contextlib.ExitStack() as stack:
        store = stack.enter_context(postgres_schema()) if backend == "postgresql" else None
        live = stack.enter_context(live_org(tmp_path_factory.mktemp(moment), store))
        call, returncode, output = kill_during_write(live, when)
        missing_at_kill = effect_problems(live.org, local_plan["actions"])
        immediate = live.cli("run")
        rerun = immediate
        if immediate.returncode == EXIT_LOCKED:
            # The dead run's lease still holds (see the lock test); let it lapse.
            _expire_lease(live)
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
            missing_at_kill=missing_at_kill,
        )


def test_sigkill_lands_after_the_write_was_applied(sigkill: KillScenario) -> None:
    assert sigkill.killed_at is not None, sigkill.killed_log[-2000:]
    assert sigkill.returncode == -signal.SIGKILL, sigkill.killed_log[-2000:]
    # The org applied the write the process never heard back about, and not everything.
    missing = {problem.split(": ", 1)[0] for problem in sigkill.missing_at_kill}
    assert 0 < len(missing) < len(sigkill.plan["actions"])


def test_sigkill_rerun_is_not_locked_out_by_the_dead_run(sigkill: KillScenario) -> None:
    """The killed run's lease names its pid on this host, and that pid is gone."""
    assert sigkill.immediate.returncode == EXIT_OK, sigkill.immediate.stderr[-1000:]


def test_sigkill_rerun_applies_every_action_once(sigkill: KillScenario) -> None:
    assert sigkill.rerun.returncode == EXIT_OK, sigkill.rerun.stderr[-2000:]
    assert_no_duplicates(sigkill.org)
    assert_applied_once(sigkill.org, sigkill.plan["actions"])
    assert sigkill.again.returncode == EXIT_OK, sigkill.again.stderr[-2000:]
    assert sigkill.writes_again == []


def test_sigkill_audit_shows_every_action_applied(sigkill: KillScenario) -> None:
    rows = sigkill.audit
    reconciled = [r for r in rows if r["event"] == "reconciled"]
    assert reconciled, "the rerun did not reconcile the killed run's sent actions"
    left = not_applied(rows, sigkill.plan)
    assert not left, _listing(left)


def _merge_call(call: Call) -> bool:
    return call.kind == "soap" and b"<urn:merge>" in call.body


def test_sigkill_between_a_merge_and_the_local_commit_never_merges_twice(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Merges on over the demo org: the process dies once merge() was applied in the org and
    before its answer; the next run reconciles the merges from queryAll (the victims deleted
    with their MasterRecordId) and sends none of them again. The first run cleans the demo's
    duplicate leads (lead_hygiene writes them), so their merges wait for the second."""
    folder = tmp_path_factory.mktemp("merge-kill")
    mapping = folder / "merge.toml"
    mapping.write_text(
        DEFAULT_MAPPING.read_text().replace("\nmerge = false\n", "\nmerge = true\n"),
        encoding="utf-8",
    )
    with live_org(folder / "org") as live:
        live.env["WORKER_MAPPING"] = str(mapping)
        first = live.cli("run")
        assert first.returncode == EXIT_OK, first.stderr[-2000:]
        assert not any(_merge_call(c) for c in live.writes()), "merged before deferring"
        # A new dyno's disk: the next run reads the whole org again, the first run's writes
        # with it (the fake org's clock is days behind the machine's, which replication
        # probes anchored on the machine's clock would not see), and merges.
        Path(live.env["WORKER_DB_PATH"]).unlink()
        call, returncode, output = kill_during_write(live, _merge_call)
        assert call is not None, output[-2000:]
        assert returncode == -signal.SIGKILL, output[-2000:]
        merged_at_kill = {
            r["Id"] for r in live.org.of("Lead", deleted=True) if r.get("MasterRecordId")
        }
        assert merged_at_kill, "the killed merge() call was not applied"
        live.server.reset_calls()
        rerun = live.cli("run")
        if rerun.returncode == EXIT_LOCKED:
            _expire_lease(live)
            rerun = live.cli("run")
        assert rerun.returncode == EXIT_OK, rerun.stderr[-2000:]
        resent = [
            victim
            for c in live.writes()
            if _merge_call(c)
            for victim in re.findall(r"<urn:recordToMergeIds>(\w+)<", c.body.decode())
        ]
        assert not set(resent) & merged_at_kill, "a merged lead was sent to merge() again"
        rows = live.audit()
        sent = {
            r["key"]
            for r in rows
            if r["key"].startswith("lead_dedupe:merge-") and r["event"] == "intent"
        }
        killed_keys = {
            key
            for key in sent
            if set(key.split(":")[1].removeprefix("merge-").split("-")) <= merged_at_kill
        }
        assert killed_keys
        reconciled = {
            r["key"] for r in rows if r["event"] == "reconciled" and r["outcome"] == "applied"
        }
        assert killed_keys <= reconciled
        # A merge planned again on the merged leads (their cache not yet re-read) is caught
        # by the conflict check (its master changed) and never sent.
        assert len(live.org.of("SOP_Merge_Snapshot__c")) == len(sent)


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
    assert_applied_once(org, local_plan["actions"])
    left = not_applied(live.audit(), local_plan)
    assert not left, _listing(left)


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
    logged = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    (event,) = [e for e in logged if e["event"] == "action.failed"]
    assert (event["level"], event["key"]) == ("error", closeout["key"])
    assert org.get(target) == before
    assert_applied_once(org, local_plan["actions"], skip=frozenset({closeout["key"]}))
    assert set(not_applied(live.audit(), local_plan)) == {closeout["key"]}


# == a lost answer (no kill): the write was applied, the worker never heard back ==================
@pytest.mark.parametrize("lost", ["case_comments", "convert_lead"])
def test_a_lost_answer_is_reconciled_and_finished_in_the_same_run(
    live: LiveOrg, local_plan: dict[str, Any], lost: str
) -> None:
    org = live.org
    dropped: list[Call] = []

    def lose_the_answer(call: Call) -> bool:
        hit = not dropped and (
            "POST" in call.subrequest_methods() if lost == "case_comments" else call.kind == "soap"
        )
        if hit:
            dropped.append(call)
        return hit

    live.server.after_write = lose_the_answer
    first = live.cli("run")
    live.server.after_write = None
    assert dropped, "no such write was made"
    assert first.returncode == EXIT_OK, first.stderr[-2000:]
    # Nothing was created twice, and before the run ended it found what its lost answers
    # were about and finished their follow-ups: a converted lead's new opportunity has its
    # mapped values now, not after the next run.
    twice = [k for k, n in written(live.writes()).items() if n > 1]
    assert twice == [], "a create whose answer was lost was sent again"
    assert_no_duplicates(org)
    assert_applied_once(org, local_plan["actions"])
    rows = live.audit()
    unknown = {r["key"] for r in rows if r["error_code"] == "UNKNOWN_OUTCOME"}
    assert unknown, "the lost answer was not recorded as an unknown outcome"
    reconciled = {
        r["key"] for r in rows if r["event"] == "reconciled" and r["outcome"] == "applied"
    }
    assert reconciled == unknown
    left = not_applied(rows, local_plan)
    assert not left, _listing(left)
    (run,) = runs(live)
    assert run["status"] == "ok, with errors"  # the demo org's malformed records
    assert not [k for k in run["summary"]["actions"] if k.endswith(":unknown")]

    live.server.reset_calls()
    second = live.cli("run")
    assert second.returncode == EXIT_OK, second.stderr[-2000:]
    assert live.writes() == []


def runs(live: LiveOrg) -> list[dict[str, Any]]:
    result = live.cli("runs", "--format", "jsonl")
    assert result.returncode == EXIT_OK, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_a_lost_answer_the_org_cannot_confirm_yet_exits_5_and_the_next_run_finishes_it(
    live: LiveOrg, local_plan: dict[str, Any]
) -> None:
    org = live.org

    def lose_the_answer_and_the_reads(call: Call) -> bool:
        if call.kind != "soap":
            return False
        # The conversion happened; its answer is lost and the org answers no query after it.
        org.fail(kind="composite", write=False, status=503, times=1000)
        return True

    live.server.after_write = lose_the_answer_and_the_reads
    first = live.cli("run")
    live.server.after_write = None
    assert first.returncode == EXIT_UNKNOWN, first.stderr[-2000:]
    conversions = [a for a in local_plan["actions"] if a["kind"] == "convert_lead"]
    (run,) = runs(live)
    assert run["status"] == "unknown"
    rules = {a["rule"] for a in conversions}
    assert {k: n for k, n in run["summary"]["actions"].items() if k.endswith(":unknown")} == {
        f"{rule}:unknown": sum(a["rule"] == rule for a in conversions) for rule in rules
    }
    assert "apply.reconcile_failed" in first.stderr
    help_text = live.cli("--help").stdout
    assert "5 the outcome of some writes is" in " ".join(help_text.split())

    for fault in org.faults:
        fault.times = 0  # the org answers again
    live.server.reset_calls()
    second = live.cli("run")
    assert second.returncode == EXIT_OK, second.stderr[-2000:]
    assert [c for c in live.writes() if c.kind == "soap"] == []  # reconciled, not resent
    assert_no_duplicates(org)
    assert_applied_once(org, local_plan["actions"])
    left = not_applied(live.audit(), local_plan)
    assert not left, _listing(left)


# == (f) the API budget reserve ====================================================================
RESERVE = 200  # SF_API_RESERVE_PERCENT's default 20% of the fake org's 1000 daily calls


@dataclass
class BudgetScenario:
    plan: dict[str, Any]
    org: FakeOrg
    stopped: subprocess.CompletedProcess[str]
    stopped_writes: list[Call]
    problems_after_stop: list[str]
    resumed: subprocess.CompletedProcess[str]
    resumed_writes: list[Call]
    audit: list[dict[str, Any]]


@pytest.fixture(scope="module")
def budget(
    tmp_path_factory: pytest.TempPathFactory, local_plan: dict[str, Any]
) -> Iterator[BudgetScenario]:
    with live_org(tmp_path_factory.mktemp("budget"), daily_limit=1000) as live:
        org = live.org

        def others_spend_the_allowance(call: Call) -> bool:
            # Other integrations use the org's calls meanwhile: the answer to the first
            # write already reports fewer remaining calls than the reserve.
            org.used = max(org.used, org.daily_limit - RESERVE + 50)
            return False

        live.server.after_write = others_spend_the_allowance
        stopped = live.cli("run")
        live.server.after_write = None
        stopped_writes = live.writes()
        problems = effect_problems(org, local_plan["actions"])
        assert_no_duplicates(org)
        org.used = 0  # a new day: the allowance is back
        live.server.reset_calls()
        resumed = live.cli("run")
        yield BudgetScenario(
            local_plan, org, stopped, stopped_writes, problems, resumed, live.writes(), live.audit()
        )


def test_the_api_reserve_stops_new_work_with_exit_4(budget: BudgetScenario) -> None:
    assert budget.stopped.returncode == EXIT_STOPPED, budget.stopped.stderr[-2000:]
    assert "reserve" in budget.stopped.stderr.lower()
    assert len(budget.stopped_writes) == 1, "new work was started under the reserve"
    assert budget.problems_after_stop, "everything was written: nothing was stopped"
    assert_no_duplicates(budget.org)


def test_the_run_after_a_budget_stop_sends_nothing_twice(budget: BudgetScenario) -> None:
    before, after = written(budget.stopped_writes), written(budget.resumed_writes)
    assert before, "the stopped run's write is not readable"
    assert after, "the resumed run wrote nothing"
    assert set(before) & set(after) == set()
    assert [k for k, n in (before + after).items() if n > 1] == []


def test_the_run_after_a_budget_stop_finishes_the_rest_once(budget: BudgetScenario) -> None:
    assert budget.resumed.returncode == EXIT_OK, budget.resumed.stderr[-2000:]
    assert_no_duplicates(budget.org)
    assert_applied_once(budget.org, budget.plan["actions"])
    left = not_applied(budget.audit, budget.plan)
    assert not left, _listing(left)
