"""Bench: the whole ``sop-worker run`` and its next cycles, beside a plain script doing the
same reads and writes with simple-salesforce, against the fake org over HTTPS.

    python bench/cycle_bench.py                          # 5,000 records, 50 ms per request
    python bench/cycle_bench.py --sizes 10000,50000,200000 --latency 0.1

For each size N, twice (a fresh org each time):

- **worker**: the real CLI (``python -m worker run``, then ``run`` twice more) in a
  subprocess against the fake org in a child process (``bench/fake_server.py``: N synthetic
  Opportunities shaped so the default mapping plans about N/10 actions, stamped and written
  on the machine's clock, every answer held back ``--latency`` seconds), with the default
  mapping, a SQLite store, rules, ledger and audit: everything a production run does.
- **script**: what a CumulusCI-style script would do with simple-salesforce on the same
  data: ``query_all_iter`` of every object and field the worker reads, then the worker's
  own writes (its ledger's actions) as ``composite/sobjects`` chunks of 200, upserting the
  Tasks on their key; its next cycle reads everything again.

API calls are the fake org's own count (``FakeOrg.call_count``). The floor is the
composite floor ceil(P/5) + ceil(W/5): P query pages of 2,000 rows over the objects read,
W write chunks of 200 per object and operation. ``idle`` is the cycle after the run (it
reads the worker's own writes back: new to the cache), ``idle_2`` the one after it, with
the org unchanged. Peak RSS is each process's own (``wait4``). The worker's seconds per step
are its run summary's ``phase_seconds``. The last line is one JSON
object: per size, both sides' figures and the reasons the worker's calls exceed the floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fake_server import FakeOrgProcess  # noqa: E402

MAPPING = ROOT / "mappings" / "default.toml"
KEY_FIELD = "SOP_Worker_Key__c"
PAGE_ROWS = 2000
CHUNK = 200
SCRIPT = r"""
import json, sys
import requests
from simple_salesforce import Salesforce

with open(sys.argv[1], encoding="utf-8") as f:
    cfg = json.load(f)
session = requests.Session()
session.verify = cfg["ca_bundle"]
session.trust_env = False
sf = Salesforce(instance_url=cfg["url"], session_id=cfg["token"], version=cfg["version"],
                session=session)
if cfg["read"]:
    for soql in cfg["soqls"]:
        for _ in sf.query_all_iter(soql, include_deleted=True):
            pass
for path, method, records in cfg["writes"]:
    for i in range(0, len(records), 200):
        body = {"allOrNone": False, "records": records[i:i + 200]}
        sf.restful(path, method=method, json=body)
"""


def object_queries() -> list[str]:
    """The SOQL the worker's full read sends, one per object (no incremental bound)."""
    from worker.mapping import load_mapping
    from worker.rules import rule_models
    from worker.salesforce.soql import incremental_select

    mapping = load_mapping(MAPPING, rule_models())
    out = []
    for sobject, names in mapping.object_fields().items():
        section = mapping.common.objects.get(sobject)
        filters = dict(section.filters) if section else {}
        replication = mapping.common.replication(sobject)
        out.append(incremental_select(sobject, names, filters, None, None, replication=replication))
    return out


def run_measured(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds, peak RSS (MB, its own) and exit code."""
    started = time.monotonic()
    with (cwd / "out.log").open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=log)  # noqa: S603
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": round(time.monotonic() - started, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "exit": proc.returncode,
    }


def calls_since(fake: FakeOrgProcess, before: dict[str, Any]) -> dict[str, Any]:
    """The API calls the org counted since ``before`` (its stats then), in all and by kind."""
    now = fake.stats()
    kinds = {
        k: v - before["calls_by_kind"].get(k, 0)
        for k, v in now["calls_by_kind"].items()
        if v - before["calls_by_kind"].get(k, 0)
    }
    return {"calls": now["api_calls"] - before["api_calls"], "by_kind": kinds}


def worker_side(n: int, latency: float, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True)
    with FakeOrgProcess(
        {"Opportunity": n}, folder, latency=latency, shape="cycle", now=dt.datetime.now(dt.UTC)
    ) as fake:
        env = {
            "PATH": os.defpath,
            "HOME": str(folder),
            "LANG": "C.UTF-8",
            # As a scheduled production job signs in: its token answer names the org and
            # user, so no UserInfo call is made (a ready SF_ACCESS_TOKEN would need one).
            "SF_AUTH": "client_credentials",
            "SF_LOGIN_URL": fake.url,
            "SF_CLIENT_ID": fake.client_id,
            "SF_CLIENT_SECRET": fake.client_secret,
            "SF_API_VERSION": fake.api_version,
            "REQUESTS_CA_BUNDLE": str(fake.ca_bundle),
            "WORKER_DB_PATH": str(folder / "w.db"),
            "WORKER_MAPPING": str(MAPPING),
            "WORKER_LOG_FORMAT": "json",
            "WORKER_LOG_LEVEL": "warning",
        }
        cmd = [sys.executable, "-m", "worker", "run", "--as-of-is-intended"]
        out: dict[str, Any] = {}
        for phase in ("run", "idle", "idle_2"):
            before = fake.stats()
            measured = run_measured(cmd, env, folder)
            if measured["exit"] != 0:
                tail = (folder / "out.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"sop-worker {phase} exited {measured['exit']}:\n{tail}")
            out[phase] = {**measured, **calls_since(fake, before)}
    with sqlite3.connect(folder / "w.db") as db:
        out["actions"] = [json.loads(a) for (a,) in db.execute("SELECT action FROM ledger")]
        (summary,) = db.execute("SELECT summary FROM runs ORDER BY started_at LIMIT 1").fetchone()
    out["summary"] = json.loads(summary)
    return out


def script_writes(actions: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """The worker's writes as sObject Collections requests (path, method, records)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in actions:
        target = a["target"]
        if a["kind"] == "create_task":
            record = {
                "attributes": {"type": "Task"},
                "Subject": a["subject"],
                "Description": a.get("description"),
                "ActivityDate": a.get("due"),
                "WhatId": a.get("what_id"),
                **(a.get("fields") or {}),
            }
            groups.setdefault((f"composite/sobjects/Task/{KEY_FIELD}", "PATCH"), []).append(record)
        elif a["kind"] in ("update_record", "close_record"):
            record = {"attributes": {"type": target["sobject"]}, "id": target["id"]}
            record.update({c["field"]: c["after"] for c in a.get("changes", [])})
            groups.setdefault(("composite/sobjects", "PATCH"), []).append(record)
        elif a["kind"] == "case_comment":
            record = {
                "attributes": {"type": "CaseComment"},
                "ParentId": target["id"],
                "CommentBody": a["body"],
            }
            groups.setdefault(("composite/sobjects", "POST"), []).append(record)
    return [(path, method, records) for (path, method), records in groups.items()]


def script_side(
    n: int, latency: float, folder: Path, soqls: list[str], actions: list[dict[str, Any]]
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    writes = script_writes(actions)
    with FakeOrgProcess(
        {"Opportunity": n}, folder, latency=latency, shape="cycle", now=dt.datetime.now(dt.UTC)
    ) as fake:
        env = {"PATH": os.defpath, "HOME": str(folder), "LANG": "C.UTF-8"}
        base = {
            "url": fake.url,
            "token": fake.token,
            "version": fake.api_version,
            "ca_bundle": str(fake.ca_bundle),
            "soqls": soqls,
        }
        out: dict[str, Any] = {}
        for phase, cfg in (
            ("run", {**base, "read": True, "writes": writes}),
            ("idle", {**base, "read": True, "writes": []}),
        ):
            before = fake.stats()
            config = folder / f"{phase}.json"
            config.write_text(json.dumps(cfg), encoding="utf-8")
            cmd = [sys.executable, "-c", SCRIPT, str(config)]
            measured = run_measured(cmd, env, folder)
            if measured["exit"] != 0:
                tail = (folder / "out.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"the script's {phase} exited {measured['exit']}:\n{tail}")
            out[phase] = {**measured, **calls_since(fake, before)}
    out["writes"] = {f"{m} {p}": len(r) for p, m, r in writes}
    return out


def floor(n: int, objects: int, actions: list[dict[str, Any]]) -> dict[str, int]:
    """The composite floor: ceil(P/5) + ceil(W/5)."""
    pages = math.ceil(n / PAGE_ROWS) + (objects - 1)  # the other objects: one page each
    groups: dict[tuple[str, str], int] = {}
    for a in actions:
        key = (a["target"]["sobject"] if a["kind"] != "create_task" else "Task", a["kind"])
        groups[key] = groups.get(key, 0) + 1
    chunks = sum(math.ceil(c / CHUNK) for c in groups.values())
    return {
        "pages": pages,
        "write_chunks": chunks,
        "floor": math.ceil(pages / 5) + math.ceil(chunks / 5),
    }


def idle_floor() -> dict[str, Any]:
    """What an idle cycle of the default mapping must ask, and the Composites that takes: an
    object read whole or on CreatedDate needs its first page (a query, five to a Composite);
    any other needs Get Updated, and Get Deleted when it has IsDeleted (two subrequests),
    25 subrequests to a Composite. The source puts up to five objects' first pages in place
    of their probes, one subrequest instead of two each."""
    from worker.mapping import load_mapping
    from worker.rules import rule_models

    mapping = load_mapping(MAPPING, rule_models())
    queries = probes = 0
    for sobject in mapping.object_fields():
        replication = mapping.common.replication(sobject)
        if replication.full or replication.stamp != "SystemModstamp":
            queries += 1
        else:
            probes += 2 if replication.deletes else 1
    # Objects probed twice that the spare query slots read instead, saving one each.
    saved = min(5 - min(queries, 5), probes // 2)
    subrequests = queries + probes - saved
    return {
        "objects": len(mapping.object_fields()),
        "queries": queries,
        "probe_subrequests": probes,
        "subrequests": subrequests,
        "composites": max(math.ceil(queries / 5), math.ceil(subrequests / 25)),
    }


def why_above_floor(n: int, idle: dict[str, Any]) -> list[str]:
    reasons = [
        "writes: every target's SystemModstamp is read again before the first write (the "
        "conflict check): one query per 800 targets, five to a composite",
        "writes: creates (no external Id: a lost answer is reconciled, never resent) go in "
        "composites apart from upserts and updates, so each kind's last composite may carry "
        "fewer than five collections",
        f"idle: {idle['objects']} objects need {idle['queries']} first pages (read whole or "
        f"on CreatedDate) and {idle['probe_subrequests']} Get Updated/Get Deleted probes; "
        f"{idle['subrequests']} subrequests at 25 per composite take {idle['composites']} "
        "calls (a cycle of fewer objects takes one)",
    ]
    if n > 10_000:
        reasons.insert(
            0,
            "reads above SF_BULK_THRESHOLD go through a Bulk API 2.0 job (create, poll, one "
            "results call per 25,000 rows): fewer calls than the REST floor from about "
            "50,000 rows on, more below (SF_BULK_THRESHOLD is 10,000)",
        )
    return reasons


def bench_size(n: int, latency: float, folder: Path, soqls: list[str]) -> dict[str, Any]:
    worker = worker_side(n, latency, folder / "worker")
    script = script_side(n, latency, folder / "script", soqls, worker["actions"])
    actions = worker.pop("actions")
    summary = worker.pop("summary")
    bound = floor(n, len(soqls), actions)
    phases = summary.get("phase_seconds") or {}
    idle = idle_floor()
    return {
        "records": n,
        "actions": len(actions),
        **bound,
        "worker": {
            "calls": worker["run"]["calls"],
            "wall_s": worker["run"]["seconds"],
            "peak_rss_mb": worker["run"]["peak_rss_mb"],
            "idle_calls": worker["idle"]["calls"],
            "idle_wall_s": worker["idle"]["seconds"],
            "idle_peak_rss_mb": worker["idle"]["peak_rss_mb"],
            "idle_2_calls": worker["idle_2"]["calls"],
            "calls_by_kind": {p: worker[p]["by_kind"] for p in ("run", "idle", "idle_2")},
            "run_api_calls_counted": summary.get("api_calls"),
            # The plan's price of its apply, beside the calls the apply made.
            "apply_calls": summary.get("apply_calls"),
            # Where the run's seconds went (the run's own summary), and the local work's
            # rates: cached records the plan step decided on per second, the ledger's and
            # audit's bookkeeping per 1,000 actions.
            "phase_seconds": phases,
            "plan_records_per_s": round(n / phases["plan"]) if phases.get("plan") else None,
            "ledger_s_per_1000_actions": (
                round(phases.get("ledger", 0.0) * 1000 / len(actions), 3) if actions else None
            ),
        },
        "script": {
            "calls": script["run"]["calls"],
            "wall_s": script["run"]["seconds"],
            "peak_rss_mb": script["run"]["peak_rss_mb"],
            "idle_calls": script["idle"]["calls"],
            "idle_wall_s": script["idle"]["seconds"],
            "calls_by_kind": {p: script[p]["by_kind"] for p in ("run", "idle")},
        },
        "idle_floor": idle,
        "why_above_floor": why_above_floor(n, idle),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5000", help="records per run, comma-separated")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    soqls = object_queries()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sop-cycle-bench-") as tmp:
        for n in sizes:
            result = bench_size(n, args.latency, Path(tmp) / str(n), soqls)
            results[str(n)] = result
            w, s = result["worker"], result["script"]
            priced = w["apply_calls"] or {}
            print(
                f"N={n}: {result['actions']} actions; calls worker {w['calls']} / script "
                f"{s['calls']} (floor {result['floor']}); wall {w['wall_s']} / {s['wall_s']} s; "
                f"peak RSS {w['peak_rss_mb']} / {s['peak_rss_mb']} MB; idle cycle "
                f"{w['idle_calls']} (then {w['idle_2_calls']}) / {s['idle_calls']} calls; "
                f"apply priced {priced.get('estimated')} / made {priced.get('made')} calls; "
                f"plan step {w['plan_records_per_s']} records/s, ledger "
                f"{w['ledger_s_per_1000_actions']} s per 1,000 actions",
                flush=True,
            )
    print(json.dumps({"latency_s": args.latency, "sizes": results}))


if __name__ == "__main__":
    main()
