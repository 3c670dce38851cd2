"""SIGTERM and SIGINT: the real CLI in a subprocess against a slow fake org over HTTPS.

Heroku sends SIGTERM and kills the dyno 30 s later. Whatever the worker is doing (reading
pages, writing, waiting for an answer) it must stop starting new work, record the run as
``stopped`` and exit 4 well inside that, and the next run must do exactly what was left:
every planned action in the org once, nothing written twice.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.actions import STOPPED_SIGNAL, Outcome
from worker.store import Store

from . import demo_seed, test_sf_cli
from .httpsorg import Call
from .test_sf_cli import (
    CLI_TIMEOUT,
    EXIT_OK,
    EXIT_STOPPED,
    LiveOrg,
    assert_applied_once,
    assert_no_duplicates,
    effect_problems,
    live_org,
    written,
)

# The real CLI in subprocesses: `pytest -m "not slow"` leaves these out of a quick loop.
pytestmark = pytest.mark.slow

local_plan = test_sf_cli.local_plan  # the plan the demo org gets offline (a fixture)

STOP_DEADLINE = 10.0  # seconds from the signal to the exit
LATENCY = 0.3  # seconds each request of the slow org takes


@dataclass
class Stopped:
    """One stopped run: its exit, how long it took after the signal, what it printed."""

    returncode: int | None
    seconds: float
    output: str

    def check(self) -> None:
        assert self.returncode == EXIT_STOPPED, self.output[-3000:]
        assert self.seconds < STOP_DEADLINE, f"{self.seconds:.1f} s\n{self.output[-3000:]}"
        assert "Traceback" not in self.output, self.output[-3000:]


def _wait_for_exit(
    proc: subprocess.Popen[bytes], log: Path, signalled: dict[str, float]
) -> Stopped:
    try:
        proc.wait(CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    finally:
        ended = time.monotonic()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "at" in signalled, "the signal was never sent\n" + log.read_text()[-3000:]
    return Stopped(proc.returncode, ended - signalled["at"], log.read_text(errors="replace"))


def stop_mid_pull(live: LiveOrg, args: Sequence[str], sig: signal.Signals) -> Stopped:
    """Start the command on a slow org; signal it once it is a few pages into the pull."""
    live.server.latency = LATENCY
    proc, log = live.popen(*args)
    signalled: dict[str, float] = {}
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            with live.server.lock:
                pages = sum(c.kind == "query_more" for c in live.server.calls)
            if pages >= 2:
                proc.send_signal(sig)
                signalled["at"] = time.monotonic()
                break
            time.sleep(0.05)
        return _wait_for_exit(proc, log, signalled)
    finally:
        live.server.latency = 0.0


def stop_mid_write(
    live: LiveOrg, args: Sequence[str], sig: signal.Signals, *, answer_after: float
) -> Stopped:
    """Signal the command while its first write is in flight: the org has applied it and
    answers ``answer_after`` seconds after the signal."""
    signalled: dict[str, float] = {}
    started = threading.Event()
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def hook(call: Call) -> bool:
        if "at" in signalled:
            return False
        started.wait(10)
        holder["proc"].send_signal(sig)
        signalled["at"] = time.monotonic()
        time.sleep(answer_after)
        return False  # then answer (if the worker still listens)

    live.server.after_write = hook
    try:
        proc, log = live.popen(*args)
        holder["proc"] = proc
        started.set()
        return _wait_for_exit(proc, log, signalled)
    finally:
        live.server.after_write = None


def last_run(live: LiveOrg) -> dict[str, Any]:
    result = live.cli("runs", "--format", "jsonl")
    assert result.returncode == EXIT_OK, result.stderr
    row: dict[str, Any] = json.loads(result.stdout.splitlines()[0])
    return row


def ledger(live: LiveOrg, status: Outcome) -> list[str]:
    with Store.open(live.folder / "w.db") as store:
        return [e.key for e in store.ledger_entries(status=status)]


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[LiveOrg]:
    """The demo org, 20 records a page (Salesforce may return query batches of 200-2,000
    rows, fewer for wide records): the pull takes many requests."""
    with live_org(tmp_path / "live", page_size=20) as found:
        yield found


def _assert_recorded_stopped(live: LiveOrg) -> None:
    run = last_run(live)
    assert run["status"] == "stopped", run
    assert run["summary"]["stop_reason"] == STOPPED_SIGNAL, run


def _assert_next_run_completes(live: LiveOrg, plan: dict[str, Any]) -> None:
    rerun = live.cli("run")
    assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
    assert_no_duplicates(live.org)
    assert_applied_once(live.org, plan["actions"])


def _expected_writes(plan: dict[str, Any]) -> int:
    """One record write per action, plus the update that gives each conversion's new
    opportunity the mapped values."""
    return len(plan["actions"]) + sum(1 for a in plan["actions"] if a.get("opportunity_values"))


# == mid-pull ====================================================================================
@pytest.mark.parametrize(
    ("args", "sig"),
    [
        (["run"], signal.SIGTERM),
        (["run", "--loop", "--interval", "10"], signal.SIGTERM),
        (["plan", "--format", "json"], signal.SIGINT),
    ],
    ids=["run", "loop", "plan"],
)
def test_a_stop_mid_pull_reads_no_further_page_and_exits_4(
    slow: LiveOrg, local_plan: dict[str, Any], args: list[str], sig: signal.Signals
) -> None:
    stopped = stop_mid_pull(slow, args, sig)
    stopped.check()
    assert '"run.stop_requested"' in stopped.output
    assert slow.writes() == []
    _assert_recorded_stopped(slow)
    read = last_run(slow)["summary"]["records_read"]
    assert 0 < sum(read.values()) < len(demo_seed.demo_records())  # some pages, not all
    # what the stopped pull committed is kept; the next run reads the rest and does it all
    slow.server.reset_calls()
    _assert_next_run_completes(slow, local_plan)
    sent = written(slow.writes())
    assert sum(sent.values()) == _expected_writes(local_plan)


# == mid-write ===================================================================================
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_mid_write_records_the_answer_in_flight_and_sends_nothing_more(
    slow: LiveOrg, local_plan: dict[str, Any], sig: signal.Signals
) -> None:
    stopped = stop_mid_write(slow, ["run"], sig, answer_after=1.0)
    stopped.check()
    first_run_writes = slow.writes()
    assert len(first_run_writes) == 1, "a write started after the stop"
    _assert_recorded_stopped(slow)
    # The write in flight was answered and recorded; what was not sent stays planned.
    assert ledger(slow, Outcome.SENT) == []
    assert ledger(slow, Outcome.APPLIED)
    assert ledger(slow, Outcome.PLANNED)
    left = {
        problem.split(": ", 1)[0] for problem in effect_problems(slow.org, local_plan["actions"])
    }
    assert 0 < len(left) < len(local_plan["actions"])
    _assert_next_run_completes(slow, local_plan)
    sent = written(slow.writes())
    assert [k for k, n in sent.items() if n > 1] == [], "written twice"
    assert sum(sent.values()) == _expected_writes(local_plan)


def test_an_answer_slower_than_the_grace_period_does_not_hold_the_exit(
    slow: LiveOrg, local_plan: dict[str, Any]
) -> None:
    """The org applied the write but answers 20 s after the SIGTERM (the read timeout is
    120 s): the worker gives the answer up, exits 4 in time, and the next run reconciles."""
    stopped = stop_mid_write(slow, ["run"], signal.SIGTERM, answer_after=20.0)
    stopped.check()
    assert "salesforce.answer_given_up" in stopped.output
    assert len(slow.writes()) == 1
    _assert_recorded_stopped(slow)
    assert ledger(slow, Outcome.SENT), "the unanswered write is not marked outcome-unknown"
    _assert_next_run_completes(slow, local_plan)


def test_apply_stopped_mid_write_resumes_with_the_same_plan_file(
    slow: LiveOrg, local_plan: dict[str, Any]
) -> None:
    saved = slow.folder / "plan.json"
    planned = slow.cli("plan", "--out", str(saved))
    assert planned.returncode == EXIT_OK, planned.stderr[-2000:]
    stopped = stop_mid_write(slow, ["apply", str(saved)], signal.SIGTERM, answer_after=0.5)
    stopped.check()
    assert len(slow.writes()) == 1
    _assert_recorded_stopped(slow)
    again = slow.cli("apply", str(saved))
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    assert_no_duplicates(slow.org)
    assert_applied_once(slow.org, local_plan["actions"])
    sent = written(slow.writes())
    assert [k for k, n in sent.items() if n > 1] == [], "written twice"


# == progress ====================================================================================
def progress_events(output: str) -> list[dict[str, Any]]:
    events = []
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "progress":
                events.append(event)
    return events


def _non_decreasing(values: Sequence[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def test_off_a_terminal_a_slow_run_logs_progress_every_few_seconds(
    slow: LiveOrg, local_plan: dict[str, Any]
) -> None:
    slow.server.latency = 0.1
    result = slow.cli("run", WORKER_PROGRESS_SECONDS="0.5")
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    events = progress_events(result.stderr)
    assert len(events) >= 4, result.stderr[-3000:]
    phases = [e["phase"] for e in events]
    assert phases[0] == "pull"
    assert all(e["run_id"] == events[0]["run_id"] for e in events)
    for name in ("records_read", "actions_sent", "api_calls"):
        assert _non_decreasing([e[name] for e in events]), (name, events)
    assert events[-1]["records_read"] > events[0]["records_read"]
    assert events[-1]["api_calls"] > events[0]["api_calls"]
