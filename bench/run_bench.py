"""Bench: one full read + write cycle of the Salesforce gateway against the fake org.

    python bench/run_bench.py                      # N=50,000 records, M=5,000 actions
    python bench/run_bench.py --records 2000 --actions 300

Records are split Opportunity 40% / Lead 40% / Case 20%; actions Task upserts 40% /
Opportunity updates 40% / CaseComments 20% (the example of SALESFORCE-NOTES section D).
The cycle: pull every object (pages committed to a SQLite file as they arrive), re-read
the update targets' SystemModstamp (conflict check), write every action.

Printed: API calls by kind against the floors of section D, where P = sum over objects
of max(1, ceil(N_k/2000)) query pages and W = sum over (object, operation) of
ceil(M_g/200) collection chunks:

- ``min_api_calls`` = P + ceil(W/5): the issue's target floor (REST pages, composite writes);
- ``c_min`` = ceil(P/5) + ceil(W/5): the composite floor;
- ``c_plain`` = P + W: one call per page and per chunk.

The last line is one JSON object: records, actions, api_calls, min_api_calls, c_min,
c_plain, calls_by_kind, seconds, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402
import tenacity  # noqa: E402

from tests.salesforce.fakeorg import FakeOrg  # noqa: E402
from worker.actions import Action, AddCaseComment, CreateTask, FieldChange, UpdateRecord  # noqa: E402
from worker.ports import ObjectQuery  # noqa: E402
from worker.records import RecordRef  # noqa: E402
from worker.rules.kit import key_marker  # noqa: E402
from worker.salesforce.client import SalesforceClient  # noqa: E402
from worker.salesforce.sink import SalesforceSink  # noqa: E402
from worker.salesforce.source import SalesforceSource  # noqa: E402

KEY_FIELD = "SOP_Worker_Key__c"
RUN_START = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)
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


def _stamp(i: int) -> str:
    moment = RUN_START - dt.timedelta(days=30) + dt.timedelta(seconds=i)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def _make(sobject: str) -> Any:
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


def split(total: int, shares: dict[str, float]) -> dict[str, int]:
    counts = {k: int(total * v) for k, v in shares.items()}
    first = next(iter(counts))
    counts[first] += total - sum(counts.values())
    return counts


def build_actions(org: FakeOrg, reads: dict[str, int], m: int) -> list[Action]:
    tasks, updates = int(m * 0.4), int(m * 0.4)
    comments = m - tasks - updates
    opp = reads["Opportunity"]
    cases = reads["Case"]
    actions: list[Action] = []
    for i in range(tasks):
        rid = org.synthetic_id("Opportunity", i % opp)
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
        rid = org.synthetic_id("Opportunity", (tasks + i) % opp)
        actions.append(
            UpdateRecord(
                **META,
                target=RecordRef("Opportunity", rid),
                key=f"bench:upd{i}:{rid}",
                changes=(FieldChange("NextStep", None, f"Attempt {i}"),),
            )
        )
    for i in range(comments):
        rid = org.synthetic_id("Case", i % cases)
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


def run(n: int, m: int, bulk_threshold: int) -> dict[str, Any]:
    reads = split(n, READ_SHARE)
    started = time.perf_counter()
    with (
        FakeOrg(keep_calls=False, daily_limit=10_000_000) as org,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for sobject, count in reads.items():
            org.add_synthetic(sobject, count, _make(sobject))
        client = SalesforceClient(
            org.settings(bulk_threshold=bulk_threshold, overlap_seconds=0),
            wait=tenacity.wait_none(),
            sleep=lambda _s: None,
        )
        source = SalesforceSource(client)
        sink = SalesforceSink(client, task_key_field=KEY_FIELD)
        db = sqlite3.connect(Path(tmp) / "cache.db")
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
        read_calls = dict(org.calls_by_kind)

        actions = build_actions(org, reads, m)
        targets = [a.target.id for a in actions if isinstance(a, UpdateRecord)]
        before = org.call_count
        sink.current_stamps(targets)
        stamp_calls = org.call_count - before
        estimate = sink.estimate_calls(actions)
        results = sink.write(actions)
        db.close()
        failed = [r for r in results if r.outcome.value != "applied"]
        if seen != n or failed:
            raise SystemExit(f"bench cycle broken: read {seen}/{n}, {len(failed)} failed writes")
        by_kind = dict(org.calls_by_kind)
        total = org.call_count
        write_calls = total - sum(read_calls.values()) - stamp_calls
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out: dict[str, Any] = {
        "records": n,
        "actions": m,
        "api_calls": total,
        **{k: v for k, v in floors(reads, actions).items() if k not in ("pages", "chunks")},
        "read_calls": read_calls,
        "stamp_calls": stamp_calls,
        "write_calls": write_calls,
        "write_estimate": estimate,
        "calls_by_kind": by_kind,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(rss_mb, 1),
    }
    out["vs_min_pct"] = round(100 * (total - out["min_api_calls"]) / out["min_api_calls"], 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", "-n", type=int, default=50_000)
    parser.add_argument("--actions", "-m", type=int, default=5_000)
    parser.add_argument("--bulk-threshold", type=int, default=10_000)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = run(args.records, args.actions, args.bulk_threshold)
    fl = floors(split(args.records, READ_SHARE), [])
    print(
        f"records {result['records']:,}  actions {result['actions']:,}  "
        f"({result['seconds']} s, peak RSS {result['peak_rss_mb']} MB)"
    )
    print(f"  reads : {result['read_calls']}  (REST pages floor P = {fl['pages']})")
    print(f"  stamps: {result['stamp_calls']} (SystemModstamp re-read of the update targets)")
    print(
        f"  writes: {result['write_calls']} incl. key-marker lookups "
        f"(estimate_calls said {result['write_estimate']})"
    )
    print(
        f"  total : {result['api_calls']} calls; floors: issue min {result['min_api_calls']}, "
        f"composite C_min {result['c_min']}, plain C_plain {result['c_plain']} "
        f"({result['vs_min_pct']:+}% vs min)"
    )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "records",
                    "actions",
                    "api_calls",
                    "min_api_calls",
                    "c_min",
                    "c_plain",
                    "calls_by_kind",
                    "seconds",
                    "peak_rss_mb",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
