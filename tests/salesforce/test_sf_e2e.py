"""Two worker cycles against the fake org, through the real source and sink: read, check
stamps, write, read again incrementally; then a rerun that lost its state."""

from __future__ import annotations

import datetime as dt

from worker.actions import Outcome
from worker.ports import ObjectQuery
from worker.records import Record, RecordRef
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource

from .fakeorg import FakeOrg
from .sfhelpers import make_client
from .test_sf_sink import KEY_FIELD, task, update


def queries(since: dt.datetime | None, until: dt.datetime) -> list[ObjectQuery]:
    return [
        ObjectQuery("Opportunity", ("Name", "NextStep"), {"Type": ("Payment",)}, since, until),
        ObjectQuery("Task", ("WhatId", "Subject", KEY_FIELD), {}, since, until),
    ]


def test_two_cycles_and_a_rerun_without_state(org: FakeOrg) -> None:
    opps = [org.add("Opportunity", Name=f"Deal {i}", Type="Payment") for i in range(3)]
    org.add("Opportunity", Name="out of scope", Type="New Business")
    client = make_client(org, overlap_seconds=0)
    source, sink = SalesforceSource(client), SalesforceSink(client, task_key_field=KEY_FIELD)

    # cycle 1: full read, plan, conflict check, write
    run1 = org.now
    pages = list(source.fetch(queries(None, run1)))
    records = [Record.from_json(r) for p in pages for r in p.records]
    assert sorted(r.id for r in records if r.sobject == "Opportunity") == sorted(opps)
    seen = {r.id: r.ref().stamp for r in records}
    org.edit(opps[2], NextStep="a person typed this")  # between read and write
    now = sink.current_state([RecordRef("Opportunity", o) for o in opps])
    fresh = [o for o in opps if now[o].stamp == seen[o]]
    assert fresh == opps[:2]  # the edited one is a conflict: not overwritten
    actions = [task(o, f"k:{o}") for o in fresh] + [
        update("Opportunity", o, f"u:{o}", NextStep="worker") for o in fresh
    ]
    assert sink.estimate_write_calls(actions) == 1
    results = sink.write(actions)
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    assert org.get(opps[2])["NextStep"] == "a person typed this"  # type: ignore[index]
    calls_cycle1 = org.call_count
    assert calls_cycle1 == 3  # read composite, stamps composite, write composite

    # cycle 2: incremental read sees exactly what changed since run 1
    run2 = org.now + dt.timedelta(seconds=1)
    pages = list(source.fetch(queries(run1, run2)))
    changed = {r["Id"] for p in pages for r in p.records}
    assert changed == {*opps, *(t["Id"] for t in org.of("Task"))}
    assert org.call_count == calls_cycle1 + 1

    # idle cycle: one call
    run3 = org.now + dt.timedelta(seconds=1)
    assert all(not p.records for p in source.fetch(queries(run2 + dt.timedelta(seconds=1), run3)))
    assert org.call_count == calls_cycle1 + 2

    # a rerun that lost its SQLite plans the same keys again: nothing is duplicated
    again = sink.write([task(o, f"k:{o}") for o in fresh])
    assert {r.outcome for r in again} == {Outcome.APPLIED}
    assert len(org.of("Task")) == 2
    assert source.api_calls() + sink.api_calls() == client.api_calls() == org.call_count
