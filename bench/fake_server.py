"""The bench's fake org in a process of its own, served over real HTTPS.

``run_bench.py`` starts this file as a child (``python bench/fake_server.py``) through
:class:`FakeOrgProcess`, so the worker's peak RSS holds only the worker: the fake's
records, query cursors, Bulk CSV bodies and call log live in the child.

The child builds a :class:`tests.salesforce.fakeorg.FakeOrg` with synthetic records
(:meth:`FakeOrg.add_synthetic`: made on demand, only edited rows are stored) and serves it
with :class:`tests.salesforce.httpsorg.HttpsOrg` on 127.0.0.1 (a random port, a throwaway
self-signed certificate in a folder the parent owns and deletes). Parent and child speak
JSON lines over the child's stdin and stdout (never over HTTP, so the control traffic is
not counted as API calls):

- parent -> child, once: ``{"records": {"Opportunity": 20000, ...}, "cert_dir": "...",
  "ids": {"Opportunity": 4000, ...}}``; the child answers ``{"url", "ca_bundle", "token",
  "client", "api_version", "ids"}`` (``client``: the connected app's id and secret, for
  the client credentials flow) where ``ids[sobject]`` are the first synthetic Ids of that object
  (the bench's action targets);
- ``{"cmd": "stats"}`` -> ``{"api_calls", "http_requests", "dropped", "calls_by_kind",
  "used", "peak_rss_mb"}``: the org's own count of API calls (``FakeOrg.call_count``), every
  HTTPS request the server answered or dropped (OAuth included), and the child's peak RSS;
- ``{"cmd": "stop"}``, or end of input (the parent died): the server stops, the child exits 0.

The child ignores SIGINT and runs in its own session: a Ctrl-C reaches only the parent,
which stops the child (:meth:`FakeOrgProcess.close`: stop, then SIGTERM, then SIGKILL).

Only the standard library is imported at module level: the parent imports this module too,
and the fake org's modules (``responses``, ``cryptography``...) must not count in the
worker's memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import resource
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent

RUN_START = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
START_TIMEOUT = 60.0  # seconds for the child to import, make its certificate and listen
ANSWER_TIMEOUT = 30.0  # seconds for any other answer on the control pipe
STOP_TIMEOUT = 10.0  # seconds for a clean exit before SIGTERM, then again before SIGKILL


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# == the parent's side =========================================================================
class FakeOrgError(RuntimeError):
    """The fake org's process failed, or answered something unexpected."""


class FakeOrgProcess:
    """Run the fake org in a child process; use as a context manager.

    ``folder`` must exist and belong to the caller (the certificate goes to ``folder/tls``).
    Leaving the ``with`` block, normally or on any exception (KeyboardInterrupt included),
    stops and reaps the child.
    """

    def __init__(
        self,
        records: Mapping[str, int],
        folder: Path,
        *,
        ids: Mapping[str, int] | None = None,
        latency: float = 0.0,
        shape: str = "gateway",
        now: dt.datetime | None = None,
    ) -> None:
        self.config = {
            "records": dict(records),
            "cert_dir": str(folder / "tls"),
            "ids": dict(ids or {}),
            "latency": latency,
            "shape": shape,
            "now": now.isoformat() if now else None,
        }
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.ca_bundle = Path()
        self.token = ""
        self.client_id = ""
        self.client_secret = ""
        self.api_version = ""
        self.ids: dict[str, list[str]] = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> FakeOrgProcess:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and file
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=ROOT,
            start_new_session=True,  # a Ctrl-C on the terminal goes to the parent only
        )
        try:
            ready = self._ask(self.config, timeout=START_TIMEOUT)
            self.url = str(ready["url"])
            self.ca_bundle = Path(ready["ca_bundle"])
            self.token = str(ready["token"])
            self.client_id, self.client_secret = ready["client"]
            self.api_version = str(ready["api_version"])
            self.ids = {k: list(v) for k, v in ready["ids"].items()}
        except BaseException:
            self.close()
            raise
        return self

    def stats(self) -> dict[str, Any]:
        """The server's counts so far (see the module docstring)."""
        return self._ask({"cmd": "stats"})

    def close(self) -> None:
        """Stop the child and reap it, whatever state it is in. Safe to call twice."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                    proc.stdin.flush()
            for stdio in (proc.stdin, proc.stdout):
                if stdio is not None:
                    with contextlib.suppress(OSError):
                        stdio.close()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            if proc.poll() is None:  # interrupted while waiting above
                proc.kill()
                proc.wait()

    def __enter__(self) -> FakeOrgProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, message: Mapping[str, Any], *, timeout: float = ANSWER_TIMEOUT) -> Any:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise FakeOrgError("the fake org process is not running")
        try:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
        except OSError as exc:
            raise FakeOrgError(f"the fake org process is gone (exit {proc.poll()})") from exc
        # One answer per message, so nothing is left buffered past the line we wait for.
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise FakeOrgError(f"the fake org did not answer {message} within {timeout:g} s")
        line = proc.stdout.readline()
        if not line:
            raise FakeOrgError(
                f"the fake org process exited (code {proc.wait(timeout=STOP_TIMEOUT)}); "
                "see its traceback above"
            )
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise FakeOrgError(f"the fake org refused {message}: {answer['error']}")
        return answer


# == the child's side ==========================================================================
def _stamp(i: int) -> str:
    moment = RUN_START - dt.timedelta(days=30) + dt.timedelta(seconds=i)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def make_record(sobject: str) -> Callable[[int, str], dict[str, Any]]:
    """The fields of synthetic record ``i`` of ``sobject`` (see FakeOrg.add_synthetic)."""

    def make(i: int, rid: str) -> dict[str, Any]:
        base = {"SystemModstamp": _stamp(i), "CreatedDate": _stamp(i)}
        if sobject == "Opportunity":
            return {
                **base,
                "Name": f"Deal {i}",
                "StageName": "Closed Won",
                "Type": "Payment",
                "CloseDate": "2026-09-01",
                "Amount": 100.0 + i,
                "NextStep": None,
                "Payment_Status__c": "Open",
            }
        if sobject == "Lead":
            return {
                **base,
                "LastName": f"Lead {i}",
                "Company": f"Co {i}",
                "Status": "New Lead",
                "City": "Chicago",
                "PostalCode": "60601",
                "IsConverted": False,
            }
        return {
            **base,
            "Subject": f"Case {i}",
            "Status": "New",
            "Request_Type__c": "Rejected Payments",
        }

    return make


def cycle_record(now: dt.datetime, count: int) -> Callable[[int, str], dict[str, Any]]:
    """Synthetic Opportunity ``i`` for the whole-cycle bench, stamped over the two days
    before ``now``: every 20th is a payment opportunity 35 days past its Close Date (the
    default mapping's SOP 000 contacts it: a Task and a Next Step line, two actions), the
    others close next month (nothing due)."""
    today = now.date()
    first = now - dt.timedelta(days=3)
    step = dt.timedelta(days=2) / max(count, 1)

    def make(i: int, rid: str) -> dict[str, Any]:
        stamp = (first + step * i).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        due = i % 20 == 0
        close = today - dt.timedelta(days=35) if due else today + dt.timedelta(days=30)
        return {
            "SystemModstamp": stamp,
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "Name": f"Payment {i}",
            "StageName": "Closed Won",
            "Type": "Payment",
            "CloseDate": close.isoformat(),
            "Amount": 100.0 + i,
            "NextStep": None,
            "Payment_Status__c": "Open",
            "Customer_Responded__c": False,
            "IsClosed": True,
            "IsWon": True,
        }

    return make


def serve(requests_in: IO[str], answers: IO[str]) -> int:
    """The child: read the config, serve the org until told to stop (or input ends)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.salesforce.fakeorg import FakeOrg
    from tests.salesforce.httpsorg import HttpsOrg

    def answer(message: Mapping[str, Any]) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    line = requests_in.readline()
    if not line:
        return 0  # the parent went away before asking anything
    config = json.loads(line)

    class RealClockOrg(FakeOrg):
        """Stamps writes with the machine's clock, to the second, as Salesforce stamps
        them with its own: the worker's cursor and probes compare the two."""

        def stamp(self) -> str:
            self.now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            return self.now.strftime("%Y-%m-%dT%H:%M:%S.000+0000")

    now = dt.datetime.fromisoformat(config["now"]) if config.get("now") else None
    org = (RealClockOrg if now else FakeOrg)(keep_calls=False, daily_limit=10_000_000, now=now)
    counts = {str(k): int(v) for k, v in config["records"].items()}
    for sobject, count in counts.items():
        if config.get("shape") == "cycle" and now is not None:
            org.add_synthetic(sobject, count, cycle_record(now, count))
        else:
            org.add_synthetic(sobject, count, make_record(sobject))
    ids = {
        sobject: [org.synthetic_id(sobject, i) for i in range(min(int(n), counts[sobject]))]
        for sobject, n in config.get("ids", {}).items()
    }
    with HttpsOrg(org, Path(config["cert_dir"])) as server:
        server.latency = float(config.get("latency") or 0.0)
        answer(
            {
                "url": server.url,
                "ca_bundle": str(server.ca_bundle),
                "token": org.issue_token(),
                "client": [org.credentials.client_id, org.credentials.client_secret],
                "api_version": org.api_version,
                "ids": ids,
            }
        )
        for line in requests_in:
            command = json.loads(line).get("cmd")
            if command == "stop":
                break
            if command == "stats":
                with server.lock:
                    calls = list(server.calls)
                    answer(
                        {
                            "api_calls": org.call_count,
                            "http_requests": len(calls),
                            "oauth_requests": sum(c.kind == "oauth" for c in calls),
                            "dropped": sum(c.status is None for c in calls),
                            "calls_by_kind": dict(org.calls_by_kind),
                            "used": org.used,
                            "peak_rss_mb": peak_rss_mb(),
                        }
                    )
            else:
                answer({"error": f"unknown command {command!r}"})
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    answers = sys.stdout
    sys.stdout = sys.stderr  # a stray print must not corrupt the control pipe
    return serve(sys.stdin, answers)


if __name__ == "__main__":
    sys.exit(main())
