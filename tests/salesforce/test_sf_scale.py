"""At scale, through the real source on the fake org: a dry run over an object read by
Bulk API 2.0, and an idle cycle's cost."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline
from worker.rules import ALL_RULES
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.sinks import DryRunSink
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import make_client

STAMP = "2026-11-20T10:00:00.000+0000"


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
        mapping=mapping,
        rules=ALL_RULES,
        clock=lambda: org.now,
    )


def test_a_dry_run_reads_an_object_above_the_bulk_threshold(
    org: FakeOrg, tmp_path: Path, mapping: LoadedMapping
) -> None:
    org.add_synthetic("Lead", 50_000, lead)  # above SF_BULK_THRESHOLD (10,000)
    with Store.open(tmp_path / "w.db") as store:
        pipeline = dry_run_pipeline(org, store, mapping)
        report = pipeline.run("dry", dt.date(2026, 11, 23), write=False)
        assert report.status == "ok"
        assert report.records_read["Lead"] == 50_000
        assert store.cached_counts()["Lead"] == 50_000
    assert org.calls_by_kind["bulk"] >= 3  # create, poll, results: all allowed
    assert org.write_calls == []
