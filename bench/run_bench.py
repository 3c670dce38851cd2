"""Bench: one full read + write cycle of the Salesforce gateway against the fake org.

    python bench/run_bench.py                      # N=50,000 records, M=5,000 actions
    python bench/run_bench.py --records 2000 --actions 300

Two processes, so the figures are the worker's alone:

- the **fake org** runs in a child process (``bench/fake_server.py``): a
  ``tests.salesforce.fakeorg.FakeOrg`` whose N records are synthetic (made on demand in
  the child, never sent to or built by this process), served over real HTTPS on 127.0.0.1
  by ``tests.salesforce.httpsorg.HttpsOrg`` with a throwaway self-signed certificate;
- the **worker** (SalesforceClient, SalesforceSource, SalesforceSink and a SQLite file)
  runs here and talks HTTP+TLS to it; its ``requests`` session trusts only that
  certificate (``verify``; ``trust_env`` off, so no proxy or ``REQUESTS_CA_BUNDLE`` from
  the environment interferes).

The certificate and the SQLite file live in one temporary folder of this process. The
child is stopped and reaped when the cycle ends or fails (Ctrl-C and SIGTERM included;
it also exits by itself when this process dies, as its stdin closes); the folder is
then deleted.

Records are split Opportunity 40% / Lead 40% / Case 20%; actions Task upserts 40% /
Opportunity updates 40% / CaseComments 20% (the example of SALESFORCE-NOTES section D).
The cycle: pull every object (pages committed to the SQLite file as they arrive), re-read
every action's target (SystemModstamp, IsClosed: the conflict check), write every action.

API calls are counted by the worker's client (``SalesforceClient.api_calls()`` and
``calls_by_kind()``, the client's own kinds) and cross-checked, after the reads, the stamp
re-read and the writes, against what the server answered (the org's ``call_count``, the
HTTPS requests it served, none dropped); any difference stops the bench with an error.
They are printed against the floors of section D, where P = sum over objects of
max(1, ceil(N_k/2000)) query pages and W = sum over (object, operation) of ceil(M_g/200)
collection chunks:

- ``min_api_calls`` = P + ceil(W/5): the issue's target floor (REST pages, composite writes);
- ``c_min`` = ceil(P/5) + ceil(W/5): the composite floor;
- ``c_plain`` = P + W: one call per page and per chunk.

The floors count neither the stamp re-read (one query per object and 200 distinct targets,
five to a composite) nor the key-marker lookup, so a small N that reads through REST pages
lands a call or two above ``min_api_calls``; Bulk API 2.0 (above ``--bulk-threshold`` rows
per object) lands below.

The last line is one JSON object: records, actions, api_calls, min_api_calls, c_min,
c_plain, calls_by_kind, seconds (the cycle, from the client's creation to the last
write), peak_rss_mb (this process's peak RSS, ``ru_maxrss``: the worker's, the fake org
not included), then server_api_calls and server_calls_by_kind (the org's count, by REST
resource), rss_before_cycle_mb (this process's peak before the cycle: interpreter and
imports), fake_org_peak_rss_mb (the child's peak, for information), sqlite_mb (the SQLite
file's size) and startup_seconds (starting the child: imports, certificate, listen).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import structlog  # noqa: E402
import tenacity  # noqa: E402

from bench.fake_server import RUN_START, FakeOrgProcess, peak_rss_mb  # noqa: E402
from worker.actions import Action, AddCaseComment, CreateTask, FieldChange, UpdateRecord  # noqa: E402
from worker.keys import key_marker  # noqa: E402
from worker.ports import ObjectQuery  # noqa: E402
from worker.records import RecordRef  # noqa: E402
from worker.salesforce.client import SalesforceClient  # noqa: E402
from worker.salesforce.settings import SalesforceSettings  # noqa: E402
from worker.salesforce.sink import SalesforceSink  # noqa: E402
from worker.salesforce.source import SalesforceSource  # noqa: E402

KEY_FIELD = "SOP_Worker_Key__c"
READ_SHARE = {"Opportunity": 0.4, "Lead": 0.4, "Case": 0.2}
FIELDS = {
    "Opportunity": (
        "Name",
        "StageName",
        "Type",
        "CloseDate",
        "Amount",
        "NextStep",
        "Payment_Status__c",
    ),
    "Lead": ("LastName", "Company", "Status", "City", "PostalCode"),
    "Case": ("Subject", "Status", "Request_Type__c"),
}
META: dict[str, Any] = {"rule": "bench", "sop": "bench.txt", "step": "bench", "reason": "bench"}


def split(total: int, shares: dict[str, float]) -> dict[str, int]:
    counts = {k: int(total * v) for k, v in shares.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())
    return counts


def action_split(m: int) -> tuple[int, int, int]:
    """(Task upserts, Opportunity updates, CaseComments) among ``m`` actions."""
    tasks, updates = int(m * 0.4), int(m * 0.4)
    return tasks, updates, m - tasks - updates


def target_counts(m: int) -> dict[str, int]:
    """How many distinct synthetic Ids the actions need (the child sends them)."""
    tasks, updates, comments = action_split(m)
    return {"Opportunity": tasks + updates, "Case": comments}


def build_actions(ids: dict[str, list[str]], m: int) -> list[Action]:
    """``ids``: the first synthetic Ids of each object (as many as :func:`target_counts`
    asks, fewer when the object has fewer records); targets wrap around them."""
    tasks, updates, comments = action_split(m)
    opp = ids["Opportunity"]
    cases = ids["Case"]
    actions: list[Action] = []
    for i in range(tasks):
        rid = opp[i % len(opp)]
        actions.append(
            CreateTask(
                **META,
                target=RecordRef("Opportunity", rid),
                key=f"bench:task{i}:{rid}",
                subject=f"Follow up {i}",
                description="Call the customer.",
                due=dt.date(2026, 11, 25),
                owner_id=None,
                what_id=rid,
                who_id=None,
                fields={
                    "Status": "Not Started",
                    "Priority": "Normal",
                    KEY_FIELD: f"bench:task{i}:{rid}",
                },
            )
        )
    for i in range(updates):
        rid = opp[(tasks + i) % len(opp)]
        actions.append(
            UpdateRecord(
                **META,
                target=RecordRef("Opportunity", rid),
                key=f"bench:upd{i}:{rid}",
                changes=(FieldChange("NextStep", None, f"Attempt {i}"),),
            )
        )
    for i in range(comments):
        rid = cases[i % len(cases)]
        key = f"bench:cc{i}:{rid}"
        actions.append(
            AddCaseComment(
                **META,
                target=RecordRef("Case", rid),
                key=key,
                body=f"Called.\n\n{key_marker(key)}",
            )
        )
    return actions


def floors(reads: dict[str, int], actions: list[Action]) -> dict[str, int]:
    pages = sum(max(1, math.ceil(n / 2000)) for n in reads.values())
    groups: dict[tuple[str, str], int] = {}
    for a in actions:
        group = (a.target.sobject if not isinstance(a, CreateTask) else "Task", type(a).__name__)
        groups[group] = groups.get(group, 0) + 1
    chunks = sum(math.ceil(n / 200) for n in groups.values())
    return {
        "pages": pages,
        "chunks": chunks,
        "min_api_calls": pages + math.ceil(chunks / 5),
        "c_min": math.ceil(pages / 5) + math.ceil(chunks / 5),
        "c_plain": pages + chunks,
    }


def api_kinds(client: SalesforceClient) -> dict[str, int]:
    """The client's API calls by kind (OAuth token requests do not use the allowance)."""
    return {k: v for k, v in client.calls_by_kind().items() if k != "oauth" and v}


def minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def cross_check(fake: FakeOrgProcess, client: SalesforceClient, phase: str) -> dict[str, Any]:
    """The server's counts; raise SystemExit unless they match the worker's."""
    server = fake.stats()
    worker = client.api_calls()
    kinds = api_kinds(client)
    problems = []
    if sum(kinds.values()) != worker:
        problems.append(f"the client's kinds {kinds} do not add up to its {worker} calls")
    if server["api_calls"] != worker:
        problems.append(f"the org counted {server['api_calls']} API calls")
    if server["http_requests"] - server["oauth_requests"] != worker:
        problems.append(
            f"the server answered {server['http_requests']} requests "
            f"({server['oauth_requests']} OAuth)"
        )
    if server["dropped"]:
        problems.append(f"the server dropped {server['dropped']} requests")
    if problems:
        raise SystemExit(
            f"bench: API call counts disagree after {phase}: the worker counted {worker} "
            f"({kinds}), but " + "; ".join(problems) + f"; server says {server}"
        )
    return server


def run(n: int, m: int, bulk_threshold: int) -> dict[str, Any]:
    reads = split(n, READ_SHARE)
    with tempfile.TemporaryDirectory(prefix="sop-bench-") as tmp:
        folder = Path(tmp)
        booted = time.perf_counter()
        with FakeOrgProcess(reads, folder, ids=target_counts(m)) as fake:
            startup = time.perf_counter() - booted
            out = cycle(fake, reads, m, bulk_threshold, folder / "cache.db")
            out["startup_seconds"] = round(startup, 2)
        if fake.proc is None or fake.proc.returncode != 0:
            code = None if fake.proc is None else fake.proc.returncode
            raise SystemExit(f"bench: the fake org process ended with code {code}")
    return out


def cycle(
    fake: FakeOrgProcess, reads: dict[str, int], m: int, bulk_threshold: int, db_path: Path
) -> dict[str, Any]:
    """One gateway cycle in this process, against the fake org over HTTPS."""
    n = sum(reads.values())
    rss_before = peak_rss_mb()
    http = requests.Session()
    http.verify = str(fake.ca_bundle)  # the child's throwaway certificate, and nothing else
    http.trust_env = False  # no proxy for 127.0.0.1; REQUESTS_CA_BUNDLE cannot override verify
    settings = SalesforceSettings(
        _env_file=None,
        instance_url=fake.url,
        access_token=fake.token,
        auth="token",
        api_version=fake.api_version,
        bulk_threshold=bulk_threshold,
        overlap_seconds=0,
    )
    started = time.perf_counter()
    client = SalesforceClient(settings, http=http, wait=tenacity.wait_none(), sleep=lambda _s: None)
    source = SalesforceSource(client)
    sink = SalesforceSink(client, task_key_field=KEY_FIELD)
    db = sqlite3.connect(db_path)
    try:
        db.execute(
            "CREATE TABLE records (id TEXT PRIMARY KEY, sobject TEXT, stamp TEXT, body TEXT)"
        )
        queries = [ObjectQuery(s, FIELDS[s], until=RUN_START) for s in reads]
        seen = 0
        for page in source.fetch(queries):
            db.executemany(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                [(r["Id"], page.sobject, r["SystemModstamp"], json.dumps(r)) for r in page.records],
            )
            db.commit()
            seen += len(page.records)
        read_kinds = api_kinds(client)
        read_server = cross_check(fake, client, "the reads")

        actions = build_actions(fake.ids, m)
        before = api_kinds(client)
        sink.current_state([a.target for a in actions])
        stamp_kinds = minus(api_kinds(client), before)
        stamp_server = cross_check(fake, client, "the stamp re-read")
        estimate = sink.estimate_write_calls(actions)
        before = api_kinds(client)
        results = sink.write(actions)
        write_kinds = minus(api_kinds(client), before)
    finally:
        db.close()
        http.close()
    seconds = time.perf_counter() - started
    server = cross_check(fake, client, "the writes")
    failed = [r for r in results if r.outcome.value != "applied"]
    if seen != n or failed:
        raise SystemExit(f"bench cycle broken: read {seen}/{n}, {len(failed)} failed writes")
    total = client.api_calls()
    out: dict[str, Any] = {
        "records": n,
        "actions": m,
        "api_calls": total,
        **{k: v for k, v in floors(reads, actions).items() if k not in ("pages", "chunks")},
        "read_calls": read_kinds,
        "stamp_calls": sum(stamp_kinds.values()),
        "write_calls": sum(write_kinds.values()),
        "write_estimate": estimate,
        "calls_by_kind": api_kinds(client),
        "server_api_calls": server["api_calls"],
        "server_calls_by_kind": server["calls_by_kind"],
        "server_read_calls": read_server["calls_by_kind"],
        "server_stamp_calls": stamp_server["api_calls"] - read_server["api_calls"],
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_cycle_mb": rss_before,
        "fake_org_peak_rss_mb": server["peak_rss_mb"],
        "sqlite_mb": round(db_path.stat().st_size / 2**20, 1),
    }
    out["vs_min_pct"] = round(100 * (total - out["min_api_calls"]) / out["min_api_calls"], 1)
    return out


JSON_KEYS = (
    "records",
    "actions",
    "api_calls",
    "min_api_calls",
    "c_min",
    "c_plain",
    "calls_by_kind",
    "seconds",
    "peak_rss_mb",
    "server_api_calls",
    "server_calls_by_kind",
    "rss_before_cycle_mb",
    "fake_org_peak_rss_mb",
    "sqlite_mb",
    "startup_seconds",
)


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwind: the fake org process and temp folder go away


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", "-n", type=int, default=50_000)
    parser.add_argument("--actions", "-m", type=int, default=5_000)
    parser.add_argument("--bulk-threshold", type=int, default=10_000)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        result = run(args.records, args.actions, args.bulk_threshold)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    fl = floors(split(args.records, READ_SHARE), [])
    print(
        f"records {result['records']:,}  actions {result['actions']:,}  "
        f"({result['seconds']} s, peak RSS {result['peak_rss_mb']} MB)"
    )
    print(
        f"  memory: worker peak RSS {result['peak_rss_mb']} MB "
        f"({result['rss_before_cycle_mb']} MB before the cycle), "
        f"fake org process {result['fake_org_peak_rss_mb']} MB, "
        f"SQLite file {result['sqlite_mb']} MB"
    )
    print(f"  reads : {result['read_calls']}  (REST pages floor P = {fl['pages']})")
    print(f"  stamps: {result['stamp_calls']} (re-read of every action's target)")
    print(
        f"  writes: {result['write_calls']} incl. key-marker lookups "
        f"(estimate_write_calls said {result['write_estimate']})"
    )
    print(
        f"  total : {result['api_calls']} calls; floors: issue min {result['min_api_calls']}, "
        f"composite C_min {result['c_min']}, plain C_plain {result['c_plain']} "
        f"({result['vs_min_pct']:+}% vs min)"
    )
    print(
        f"  server: {result['server_api_calls']} calls answered, as counted by the worker; "
        f"by resource {result['server_calls_by_kind']}"
    )
    print(json.dumps({k: result[k] for k in JSON_KEYS}))


if __name__ == "__main__":
    main()
