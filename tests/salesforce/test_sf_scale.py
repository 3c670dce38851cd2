"""At scale, through the real source on the fake org: a dry run over an object read by
Bulk API 2.0, and an idle cycle's cost."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from worker.actions import Action, CreateTask, FieldChange, UpdateRecord
from worker.dryrun import DryRunSink, ReadOnlyLedger
from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline
from worker.plan import Plan
from worker.records import RecordRef
from worker.rules import ALL_RULES, runnable
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import make_client

STAMP = "2026-11-20T10:00:00.000+0000"
KEY_FIELD = "SOP_Worker_Key__c"
META: dict[str, Any] = {"rule": "r", "sop": "r.txt", "step": "s", "reason": "due"}


def lead(index: int, rid: str) -> dict[str, Any]:
    return {
        "LastName": f"Lead {index}",
        "Status": "Open - Not Contacted",
        "CreatedDate": STAMP,
        "SystemModstamp": STAMP,
    }


def dry_run_pipeline(org: FakeOrg, store: Store, mapping: LoadedMapping) -> Pipeline:
    client = make_client(org, read_only=True)  # what `plan` and `run --dry-run` get
    sink = SalesforceSink(client, task_key_field=mapping.common.org.task_key_field)
    return Pipeline(
        store=store,
        source=SalesforceSource(client),
        sink=DryRunSink(estimate=sink.estimate_calls, usage=client.usage),
        ledger=ReadOnlyLedger(store),
        mapping=mapping,
        rules=runnable(ALL_RULES, mapping),
        clock=lambda: org.now,
    )


def test_a_dry_run_reads_an_object_above_the_bulk_threshold(
    org: FakeOrg, tmp_path: Path, mapping: LoadedMapping
) -> None:
    org.add_synthetic("Lead", 50_000, lead)  # above SF_BULK_THRESHOLD (10,000)
    with Store.open(tmp_path / "w.db") as store:
        pipeline = dry_run_pipeline(org, store, mapping)
        report = pipeline.run("dry", dt.date(2026, 11, 23))
        assert report.status == "ok"
        assert report.records_read["Lead"] == 50_000
        assert store.cached_counts()["Lead"] == 50_000
    assert org.calls_by_kind["bulk"] >= 3  # create, poll, results: all allowed
    assert org.write_calls == []


@pytest.fixture
def idle_mapping(mapping: LoadedMapping) -> LoadedMapping:
    """The default mapping without lead_routing, lead_sla and lead_disposition, whose queues
    (Group, GroupMember: read whole every cycle), OutOfOffice and LeadHistory take the objects
    past what one composite's five first pages and twenty probe subrequests hold: with them
    an idle cycle is 2 calls."""
    queue_readers = {"lead_routing", "lead_sla", "lead_disposition"}
    rules = {
        rule_id: section.model_copy(update={"enabled": rule_id not in queue_readers})
        for rule_id, section in mapping.rules.items()
    }
    return dataclasses.replace(mapping, rules=rules)


def cycle(pipeline: Pipeline, org: FakeOrg, run_id: str) -> tuple[dict[str, int], int]:
    """One dry-run cycle: (records read per object, API calls it made)."""
    before = org.call_count
    report = pipeline.run(run_id, dt.date(2026, 11, 23))
    assert report.status == "ok"
    return {k: v for k, v in report.records_read.items() if v}, org.call_count - before


def test_a_mass_load_sharing_one_stamp_is_read_once(
    org: FakeOrg, tmp_path: Path, idle_mapping: LoadedMapping
) -> None:
    org.add_synthetic("Lead", 5_000, lead)  # one data load: every row stamped alike
    with Store.open(tmp_path / "w.db") as store:
        pipeline = dry_run_pipeline(org, store, idle_mapping)
        assert cycle(pipeline, org, "r1")[0] == {"Lead": 5_000}
        org.now += dt.timedelta(minutes=5)
        read, calls = cycle(pipeline, org, "r2")
    assert read == {}  # the cursor is past the load's last (stamp, Id)
    assert calls == 1  # one composite: five first pages, the other objects probed


def test_records_written_since_are_read_once(
    org: FakeOrg, tmp_path: Path, idle_mapping: LoadedMapping
) -> None:
    with Store.open(tmp_path / "w.db") as store:
        pipeline = dry_run_pipeline(org, store, idle_mapping)
        cycle(pipeline, org, "r1")
        lead_id = org.add("Lead", LastName="Lee", Status="Open - Not Contacted")
        for i in range(3):  # a burst of Tasks (the worker's own writes), one second apart
            org.add("Task", WhoId=lead_id, Subject=f"Call {i}", Status="Not Started")
        assert cycle(pipeline, org, "r2")[0] == {"Lead": 1, "Task": 3}
        # Rows stamped within SF_OVERLAP_SECONDS before the last read began are read again
        # (a row Salesforce commits late could hide among them, stamped before its commit)...
        org.now += dt.timedelta(minutes=11)
        assert cycle(pipeline, org, "r3")[0] == {"Lead": 1, "Task": 3}
        # ...and once older than that, never: the cursor resumes after the last (stamp, Id).
        org.now += dt.timedelta(minutes=1)
        read, calls = cycle(pipeline, org, "r4")
    assert read == {}
    assert calls == 1


def test_an_idle_cycle_is_one_call_and_its_probes_miss_no_change(
    org: FakeOrg, tmp_path: Path, idle_mapping: LoadedMapping
) -> None:
    lead_id = org.add("Lead", LastName="Lee", Status="Open - Not Contacted")
    opp_id = org.add("Opportunity", Name="Deal", StageName="Prospecting", Type="Payment")
    with Store.open(tmp_path / "w.db") as store:
        pipeline = dry_run_pipeline(org, store, idle_mapping)
        cycle(pipeline, org, "r1")
        org.now += dt.timedelta(minutes=11)
        cycle(pipeline, org, "r2")  # the two rows again: stamped within the overlap of r1
        org.now += dt.timedelta(minutes=1)
        assert cycle(pipeline, org, "r3") == ({}, 1)
        probes = [c for c in org.calls if "/updated" in c[1] or "/deleted" in c[1]]
        assert probes == []  # they ride inside the composite, not as calls of their own

        org.now += dt.timedelta(minutes=1)
        org.edit(lead_id, Status="Working - Contacted")  # objects the composite probes
        org.delete(opp_id)
        read, calls = cycle(pipeline, org, "r4")
        assert read == {"Lead": 1}
        assert calls == 2  # the probes found both: their first pages in a second composite
        assert store.cached_record(opp_id) is None
        lead = store.cached_record(lead_id)
        assert lead is not None
        assert lead.text("Status") == "Working - Contacted"


def follow_ups(org: FakeOrg, targets: int) -> list[Action]:
    """A Task (upserted on its key) and a NextStep update on each of ``targets`` deals."""
    actions: list[Action] = []
    for i in range(targets):
        rid = org.add("Opportunity", Name=f"Deal {i}", StageName="Prospecting")
        target = RecordRef("Opportunity", rid, stamp=org.get(rid)["SystemModstamp"])  # type: ignore[index]
        key = f"r:{rid}:s"
        actions.append(
            CreateTask(
                **META,
                target=target,
                key=key,
                subject="Follow up",
                description="Call the customer.",
                due=dt.date(2026, 11, 25),
                owner_id=None,
                what_id=rid,
                who_id=None,
                fields={"Status": "Not Started", KEY_FIELD: key},
            )
        )
        actions.append(
            UpdateRecord(
                **META,
                target=target,
                key=f"{key}:next",
                changes=(FieldChange("NextStep", None, "Call"),),
            )
        )
    return actions


@pytest.mark.parametrize(("batch", "calls"), [(5_000, 4), (1_000, 6)])
def test_the_plans_cost_is_what_applying_it_spends(
    org: FakeOrg,
    tmp_path: Path,
    mapping: LoadedMapping,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    calls: int,
) -> None:
    """2,400 actions on 1,200 records: the targets re-read (2 queries of up to 800 Ids, one
    composite), then 6 + 6 collections of updates and upserts. In one write batch (the
    default) they take 3 composites; in batches of 1,000, each batch's last composite rounds
    up on its own: 2 + 2 + 1. The plan prices what the batches cost."""
    monkeypatch.setattr("worker.pipeline.WRITE_BATCH", batch)
    actions = follow_ups(org, 1_200)
    client = make_client(org)
    sink = SalesforceSink(client, task_key_field=KEY_FIELD)
    with Store.open(tmp_path / "w.db") as store:
        pipeline = Pipeline(
            store=store,
            source=SalesforceSource(client),
            sink=sink,
            ledger=store,
            mapping=mapping,
            rules=runnable(ALL_RULES, mapping),
            clock=lambda: org.now,
        )
        estimate = pipeline.estimate_calls(actions)
        plan = Plan(pipeline.org(), "m", dt.date(2026, 11, 23), org.now, tuple(actions))
        report = pipeline.apply_plan_file("apply", plan)
    assert report.status == "ok"
    assert report.outcomes[("r", "applied")] == 2_400
    assert sink.api_calls() == estimate == calls
    assert report.apply_calls_estimated == report.apply_calls == calls
