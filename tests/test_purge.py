"""`purge`: SOP 004's retention periods (prospects 2 years, customers 7 years) on the cache
and the audit log, with a dry run that only reports."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import time_machine

from worker.store import Store

from .test_cli import invoke, org_args


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
