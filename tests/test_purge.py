"""`purge`: SOP 004's retention periods (prospects 2 years, customers 7 years) on the cache
and the audit log, with a dry run that only reports."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import time_machine

from worker.localorg import read_manifest
from worker.ports import Page
from worker.store import Store

from .conftest import DEMO_ORG
from .test_cli import invoke, org_args, plan_json


def counts(db: Path) -> dict[str, int]:
    store = Store.open(db)
    try:
        return {
            **store.cached_counts(),
            "audit": store.count("audit"),
            "ledger": store.count("ledger"),
        }
    finally:
        store.close()


def purge(db: Path, when: dt.datetime, *extra: str) -> dict[str, int]:
    with time_machine.travel(when, tick=False):
        result = invoke("purge", "--db-path", str(db), *extra)
    assert result.exit_code == 0, result.output
    lines = (line.split(": ") for line in result.stdout.splitlines())
    return {what: int(text.split()[-1]) for what, text in lines}


def test_retention_by_kind_of_record(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    assert invoke("run", *org_args(demo_copy, db)).exit_code == 0
    before = counts(db)
    assert before["Lead"] > 0
    assert before["Opportunity"] > 0
    assert before["audit"] > 0

    three_years_on = dt.datetime(2029, 12, 1, tzinfo=dt.UTC)
    reported = purge(db, three_years_on, "--dry-run")
    assert counts(db) == before  # a dry run removes nothing
    assert reported["Lead"] == before["Lead"]  # prospects: kept 2 years
    assert reported["Opportunity"] == reported["Account"] == reported["Case"] == 0
    assert reported["audit"] == reported["ledger"] == 0  # the audit log is kept 7 years

    assert purge(db, three_years_on) == reported
    after = counts(db)
    assert after.get("Lead", 0) == 0
    assert after["Opportunity"] == before["Opportunity"]

    eight_years_on = dt.datetime(2034, 12, 1, tzinfo=dt.UTC)
    later = purge(db, eight_years_on)
    assert later["Opportunity"] == before["Opportunity"]  # customers: kept 7 years
    assert later["audit"] == before["audit"]
    assert later["ledger"] == before["ledger"]
    assert counts(db)["audit"] == counts(db)["ledger"] == 0


def _plan(org: Path, db: Path, as_of: dt.date) -> dict[str, Any]:
    doc = plan_json(org, db, "--as-of", as_of.isoformat())
    doc.pop("generated_at")
    return doc


@pytest.mark.parametrize("days_on", [0, 800])
def test_plans_after_a_purge_equal_plans_without_it(tmp_path: Path, days_on: int) -> None:
    """Over the demo org, one database purged before every cycle and one never: the same
    plans on every as-of date. The collections rule's contacts (kept 2 years as prospects)
    stay while their account stays; 800 days on, leads and tasks past their 2 years are
    removed and read again in full on the next pull, as the rules may still act on them."""
    start = read_manifest(DEMO_ORG).as_of + dt.timedelta(days=days_on)
    plain, purged = tmp_path / "plain" / "w.db", tmp_path / "purged" / "w.db"
    removed: Counter[str] = Counter()
    for day in (0, 1, 3, 7, 14, 30, 61):
        as_of = start + dt.timedelta(days=day)
        noon = dt.datetime(as_of.year, as_of.month, as_of.day, 18, tzinfo=dt.UTC)  # in Chicago
        with time_machine.travel(noon, tick=False):
            if day:
                removed.update(purge(purged, noon))
            assert _plan(DEMO_ORG, purged, as_of) == _plan(DEMO_ORG, plain, as_of), as_of
            for db in (plain, purged):
                result = invoke("run", *org_args(DEMO_ORG, db), "--as-of", as_of.isoformat())
                assert result.exit_code == 0, result.output
    assert removed["Contact"] > 0
    if days_on:
        assert removed["Lead"] > 0
        assert removed["Task"] > 0


def test_what_a_purge_keeps_and_reads_again(store: Store) -> None:
    """Past the cutoff, a record stays while a kept record names it or it is an activity of
    a kept record; each object it removed records from is read in full on the next pull."""
    old, new = "2024-01-10T12:00:00.000+0000", "2026-11-20T12:00:00.000+0000"

    def rec(rid: str, stamp: str, **fields: str) -> dict[str, str]:
        return {"Id": rid, "SystemModstamp": stamp, **fields}

    pages = {
        "Account": [rec("001A", new, Primary_Contact__c="003MAIN")],
        "Contact": [rec("003MAIN", old, AccountId="001A"), rec("003OTHER", old, AccountId="001A")],
        "Lead": [rec("00QOLD", old)],
        "Task": [rec("00TACC", old, WhatId="001A"), rec("00TLEAD", old, WhoId="00QOLD")],
        "EmailMessage": [rec("02sACC", old, RelatedToId="001A")],
    }
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    for sobject, records in pages.items():
        store.save_page(Page(sobject, records, []), "Name", now)
        store.set_watermark(sobject, new, "h", now)
    cutoff = now - dt.timedelta(days=730)

    assert store.purge(lambda _: cutoff, cutoff, dry_run=True)["Contact"] == 1
    assert store.cached_counts()["Contact"] == 2
    store.purge(lambda _: cutoff, cutoff)

    snapshot, _ = store.load_snapshot(pages)
    assert sorted(r.id for recs in snapshot.records.values() for r in recs) == [
        "001A", "003MAIN", "00TACC", "02sACC"
    ]  # fmt: skip
    reread = {s for s in pages if store.watermark(s, "h") is None}
    assert reread == {"Contact", "Lead", "Task"}
