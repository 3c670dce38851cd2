"""Bench: the store's throughput on SQLite beside PostgreSQL (printed, not asserted).

    python bench/store_bench.py                    # 50,000 records, 5,000 actions
    python bench/store_bench.py --records 5000 --actions 500 --postgres URL

For each backend, through :class:`worker.store.Store` exactly as a run uses it:

- **cache**: the records saved a page (2,000) at a time (``save_page``: one transaction
  each), records cached per second;
- **snapshot**: every record read back for the rules (``load_snapshot``), records per second;
- **ledger**: the actions planned, marked sent and given their outcomes in batches of 1,000
  (``record_planned``, ``mark_sent``, ``record_results``: the ledger row and its audit row in
  one transaction, as ``apply`` does), ledger writes per second (3 per action);
- **cycle**: the three together, seconds.

PostgreSQL is the server at ``--postgres`` (default: ``SOP_WORKER_TEST_DATABASE_URL``; start
one with ``.ci/postgres start /tmp/pg``), in a schema of its own that is dropped afterwards;
without one, only SQLite is measured. The last line is one JSON object per backend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.actions import ActionResult, CreateTask, Outcome
from worker.ports import Page
from worker.records import RecordRef
from worker.store import Store, database_url

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
PAGE = 2000
BATCH = 1000


def record(i: int) -> dict[str, Any]:
    return {
        "Id": f"006{i:015d}",
        "Name": f"Opportunity {i}",
        "StageName": "Closed Won",
        "CloseDate": "2026-09-01",
        "Amount": 1000 + i,
        "OwnerId": "005000000000000001",
        "NextStep": "2026-10-01 call attempt 1/5: no answer",
        "SystemModstamp": f"2026-11-{1 + i % 20:02d}T10:00:00.000+0000",
    }


def action(i: int) -> CreateTask:
    rid = f"006{i:015d}"
    return CreateTask(
        rule="payment_followup",
        sop="000_8d938a1ad00c5e13.txt",
        step="Step 2",
        target=RecordRef("Opportunity", rid, f"Opportunity {i}", "2026-11-01T10:00:00.000+0000"),
        reason="33 days past Close Date, no response logged",
        key=f"payment_followup:attempt-2:{rid}",
        subject="Payment follow-up: attempt 2 of 5",
        description="Call the customer about the overdue payment.",
        due=NOW.date(),
        owner_id="005000000000000001",
        what_id=rid,
        who_id=None,
        fields={"Priority": "Normal", "Status": "Not Started"},
    )


def measure(store: Store, n: int, m: int) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, n, PAGE):
        store.save_page(
            Page("Opportunity", [record(i) for i in range(start, min(start + PAGE, n))]),
            "Name",
            NOW,
        )
    cached = time.perf_counter()
    snapshot, problems = store.load_snapshot(["Opportunity"])
    assert len(snapshot.of("Opportunity")) == n
    assert not problems
    loaded = time.perf_counter()
    for start in range(0, m, BATCH):
        batch = [action(i) for i in range(start, min(start + BATCH, m))]
        by_key = {a.key: a for a in batch}
        store.record_planned(batch, "bench", NOW)
        store.mark_sent(batch, "bench", NOW)
        results = [ActionResult(a.key, Outcome.APPLIED, sf_id="00T000000000001") for a in batch]
        store.record_results(by_key, results, "bench", NOW)
    done = time.perf_counter()
    return {
        "backend": store.backend,
        "records": n,
        "actions": m,
        "records_cached_per_s": round(n / (cached - started)),
        "records_loaded_per_s": round(n / (loaded - cached)),
        "ledger_writes_per_s": round(3 * m / (done - loaded)),
        "cycle_seconds": round(done - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--actions", type=int, default=5_000)
    parser.add_argument("--postgres", default=os.environ.get("SOP_WORKER_TEST_DATABASE_URL"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "bench.db") as store:
        rows.append(measure(store, args.records, args.actions))
    if args.postgres:
        base = database_url(args.postgres)
        admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = base.update_query_dict({"options": f"-csearch_path={schema}"})
            with Store.open(url) as store:
                rows.append(measure(store, args.records, args.actions))
        finally:
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    else:
        print("PostgreSQL not measured: pass --postgres URL or set SOP_WORKER_TEST_DATABASE_URL")
    header = ("backend", "records_cached_per_s", "records_loaded_per_s", "ledger_writes_per_s")
    print(" | ".join((*header, "cycle_seconds")))
    for row in rows:
        print(" | ".join(str(row[k]) for k in (*header, "cycle_seconds")))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
