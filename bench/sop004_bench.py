"""Bench: SOP 004's figures for scoring, routing and the sales process.

    python bench/sop004_bench.py                  # 100,000 leads scored; 1,000 leads routed,
                                                  # 1,000 opportunities changed
    python bench/sop004_bench.py --score 10000 --changed 200

Three figures, printed, then one JSON line:

- **Scoring**: ``--score`` synthetic Sales leads, a third of them with a logged demo request or
  pricing Task, scored by ``lead_scoring`` over one snapshot (``evaluate_rule``: tables,
  caps, categories, the breakdown text and the update it plans). The seconds and the peak
  memory; above 10 s at 100,000 exits 1.
- **API calls per 1,000 routed leads**: the bundled demo org in the fake org (its users,
  queues, pools and out-of-office rows), one run to settle it, then ``--changed`` new leads
  (copies of the demo's routing leads, with new Ids, their Tasks and campaign memberships
  copied with them) and a second run with the lead rules: the calls of that run by kind, and
  per 1,000 leads routed. The pools' daily caps are lifted for the bench (1,000 leads in one
  cycle would otherwise overflow the demo's three reps into the fallback queue).
- **API calls per 1,000 changed opportunities**: the same, with copies of the demo's SOP 004
  opportunities (their stage history, contact roles, Events and approval instances) and the
  sales process rules.

The fake org is :class:`tests.salesforce.fakeorg.FakeOrg` in this process (no latency: calls
are counted, not timed); the worker is the real pipeline with its source, sink, SQLite store,
ledger and audit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.salesforce import demo_seed  # noqa: E402
from tests.salesforce.fakeorg import FakeOrg  # noqa: E402
from tests.salesforce.sfhelpers import make_client  # noqa: E402
from worker.mapping import LoadedMapping, load_mapping  # noqa: E402
from worker.pipeline import Pipeline  # noqa: E402
from worker.records import Record, Snapshot, id18  # noqa: E402
from worker.rules import ALL_RULES, evaluate_rule, rule_models, runnable  # noqa: E402
from worker.salesforce.sink import SalesforceSink  # noqa: E402
from worker.salesforce.source import SalesforceSource  # noqa: E402
from worker.store import Store  # noqa: E402

MAPPING = ROOT / "mappings" / "default.toml"
RECORDS = demo_seed.DEMO_ORG / "records"
SCORING = next(r for r in ALL_RULES if r.id == "lead_scoring")
DAY = demo_seed.as_of()
# Which rules each figure runs, and the demo files its copies come from; a rule not in the
# mapping (yet) is left out.
LEAD_RULES = ("lead_scoring", "lead_routing", "lead_sla", "lead_disposition")
LEAD_FILES = ("lead_routing-leads", "lead_routing-tasks", "lead_routing-campaignmembers")
SALES_RULES = (
    "opportunity_stages",
    "closed_won_lost",
    "deal_approvals",
    "prospecting_cadence",
    "customer_handoff",
)
SALES_FILES = (
    "opportunity_stages-opportunities",
    "opportunity_stages-opportunityhistory",
    "opportunity_stages-contactroles",
    "opportunity_stages-events",
    "deal_approvals-opportunities",
    "deal_approvals-processinstances",
)
# Objects whose records are copied (with new Ids); every other Id they hold (users, queues,
# accounts, contacts, campaigns) is shared with the originals.
COPIED = {"Lead", "Task", "CampaignMember", "Opportunity", "OpportunityHistory",
          "OpportunityContactRole", "Event", "ProcessInstance"}  # fmt: skip


# -- scoring ---------------------------------------------------------------------------------
def scoring(mapping: LoadedMapping, count: int) -> dict[str, Any]:
    rng = random.Random(4)  # repeatable data
    titles = ("CEO", "VP Sales", "Director of IT", "Operations Manager", "Analyst")
    industries = ("Technology", "Banking", "Retail", "Healthcare")
    records: list[Record] = []
    for i in range(count):
        lead_id = id18(f"00QBn{i:010d}")
        records.append(Record.from_json({
            "attributes": {"type": "Lead"}, "Id": lead_id, "LastName": f"Lead {i}",
            "Company": f"Company {i}", "Title": rng.choice(titles),
            "Industry": rng.choice(industries), "NumberOfEmployees": rng.choice((10, 80, 400, 5000)),
            "AnnualRevenue": rng.choice((None, 2_000_000, 40_000_000)),
            "Email": f"p{i}@c{i}.example", "Phone": "+14155550100" if i % 2 else None,
            "LeadSource": rng.choice(("Web", "Partner Referral")), "Status": "Open - Not Contacted",
            "IsConverted": False, "OwnerId": "00GDm1500000001MAA",
            "RecordType": {"attributes": {"type": "RecordType"}, "DeveloperName": "Sales"},
            "CreatedDate": "2026-11-20T10:00:00.000+0000",
        }))  # fmt: skip
        if i % 3 == 0:
            records.append(Record.from_json({
                "attributes": {"type": "Task"}, "Id": id18(f"00TBn{i:010d}"), "WhoId": lead_id,
                "Subject": rng.choice(("Demo request", "Pricing question")), "Status": "Completed",
                "ActivityDate": "2026-11-20", "CreatedDate": "2026-11-20T10:00:00.000+0000",
            }))  # fmt: skip
    snapshot = Snapshot.build(records)
    settings = mapping.rules[SCORING.id]
    start = time.perf_counter()
    evaluations = sum(1 for _ in evaluate_rule(SCORING, snapshot, DAY, settings, mapping.common))
    seconds = time.perf_counter() - start
    return {
        "leads": count,
        "evaluations": evaluations,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


# -- calls per 1,000 changed records ---------------------------------------------------------
def demo_file(name: str) -> list[dict[str, Any]]:
    path = RECORDS / f"{name}.json"
    return list(json.loads(path.read_text(encoding="utf-8"))["records"]) if path.exists() else []


def copies(files: tuple[str, ...], sobject: str, wanted: int) -> Iterator[dict[str, Any]]:
    """Copies of the files' records, with new Ids, until ``wanted`` records of ``sobject``;
    the references among copied records point at the copies."""
    originals = [r for name in files for r in demo_file(name)]
    per_round = sum(1 for r in originals if r["attributes"]["type"] == sobject)
    serial = 0
    for round_no in range(math.ceil(wanted / max(per_round, 1))):
        new_ids: dict[str, str] = {}
        for raw in originals:
            if raw["attributes"]["type"] in COPIED:
                serial += 1
                new_ids[raw["Id"][:15]] = id18(f"{raw['Id'][:3]}Bn{round_no:03d}{serial:07d}")
        for raw in originals:
            if raw["attributes"]["type"] not in COPIED:
                continue
            copy = {
                k: new_ids.get(v[:15], v) if isinstance(v, str) and len(v) == 18 else v
                for k, v in raw.items()
            }
            if "Name" in copy and raw["attributes"]["type"] in ("Lead", "Opportunity"):
                copy["Name"] = f"{raw['Name']} #{round_no}"
            yield copy


def only(mapping: LoadedMapping, rule_ids: tuple[str, ...]) -> LoadedMapping:
    rules = {}
    for rule_id, section in mapping.rules.items():
        update: dict[str, Any] = {"enabled": rule_id in rule_ids and section.enabled}
        pools = getattr(section, "pools", None)
        if rule_id == "lead_routing" and pools:
            update["pools"] = {
                name: pool.model_copy(update={"daily_cap": 100_000}) for name, pool in pools.items()
            }
        rules[rule_id] = section.model_copy(update=update)
    return dataclasses.replace(mapping, rules=rules)


def demo_pipeline(org: FakeOrg, store: Store, bench: LoadedMapping, day: dt.date) -> Pipeline:
    """The real pipeline over the fake org seeded with the demo org, its clock at 15:00 on
    ``day``: source, sink, ``store`` as cache, ledger and audit, the mapping's rules."""
    demo_seed.seed(org)
    org.now = dt.datetime.combine(day, dt.time(15), dt.UTC)
    client = make_client(org)
    return Pipeline(
        store=store,
        source=SalesforceSource(client),
        sink=SalesforceSink(client, task_key_field=bench.common.org.task_key_field),
        ledger=store,
        mapping=bench,
        rules=runnable(ALL_RULES, bench),
        clock=lambda: org.now,
    )


def calls_for_changes(
    mapping: LoadedMapping, rule_ids: tuple[str, ...], files: tuple[str, ...], sobject: str,
    changed: int, folder: Path,
) -> dict[str, Any]:  # fmt: skip
    bench = only(mapping, rule_ids)
    with FakeOrg() as org, Store.open(folder / f"{sobject}.db") as store:
        pipeline = demo_pipeline(org, store, bench, DAY)
        pipeline.run("settle", DAY)
        org.now += dt.timedelta(minutes=30)  # past the read's overlap window
        added = 0
        for raw in copies(files, sobject, changed):
            fields = {k: v for k, v in raw.items() if k not in ("attributes", "SystemModstamp")}
            org.add(raw["attributes"]["type"], **fields)
            added += raw["attributes"]["type"] == sobject
        org.now += dt.timedelta(minutes=1)
        before, kinds = org.call_count, Counter(org.calls_by_kind)
        report = pipeline.run("changed", DAY)
        calls = org.call_count - before
        by_kind = dict(Counter(org.calls_by_kind) - kinds)
    applied = Counter(
        {rule: n for (rule, outcome), n in report.outcomes.items() if outcome == "applied"}
    )
    actions = sum(applied.values())
    return {
        "changed": added,
        "rules": [r for r in rule_ids if r in mapping.rules],
        "status": report.status,
        "record_errors": report.record_errors,  # copies the rules refuse (shown, not hidden)
        "api_calls": calls,
        "calls_by_kind": by_kind,
        "actions_applied": dict(applied),
        "calls_per_1000": round(calls * 1000 / max(added, 1), 1),
        "actions": actions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", type=int, default=100_000, help="leads to score")
    parser.add_argument("--changed", type=int, default=1000, help="new leads / changed opps")
    args = parser.parse_args(argv)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    mapping = load_mapping(MAPPING, rule_models())
    score = scoring(mapping, args.score)
    print(f"scoring: {score['leads']:,} leads in {score['seconds']} s "
          f"(peak RSS {score['peak_rss_mb']} MB)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sop004-bench-") as tmp:
        leads = calls_for_changes(mapping, LEAD_RULES, LEAD_FILES, "Lead", args.changed, Path(tmp))
        sales = calls_for_changes(
            mapping, SALES_RULES, SALES_FILES, "Opportunity", args.changed, Path(tmp)
        )
    for label, figure in (("new leads", leads), ("changed opportunities", sales)):
        print(
            f"{figure['changed']:,} {label} ({', '.join(figure['rules'])}): "
            f"{figure['api_calls']} API calls ({figure['calls_per_1000']} per 1,000), "
            f"{figure['actions']} actions applied {figure['actions_applied']}, "
            f"{figure['record_errors']} record error(s); "
            f"by kind {figure['calls_by_kind']}"
        )
    print(json.dumps({"scoring": score, "routing": leads, "sales": sales}))
    slow = args.score >= 100_000 and score["seconds"] > 10
    # Record errors are the copies of the demo's deliberately malformed records (printed).
    failed = any(figure["status"] not in ("ok", "ok, with errors") for figure in (leads, sales))
    return 1 if slow or failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
