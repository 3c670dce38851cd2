"""The SOP 004 Stage 1 sequence against a fake org, 1,000 opportunities entering Prospecting
together: every step written once over the days of the sequence, even with the database
lost on a day, and the API calls each day costs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline, RunReport
from worker.rules import ALL_RULES
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import make_client

RULE = next(r for r in ALL_RULES if r.id == "prospecting_cadence")
REP = "005Dm1600000001000"
ENTERED = dt.date(2026, 11, 20)  # a Friday: Day 7 is Dec 1 (weekend, Thanksgiving)
OPPORTUNITIES = 1000


def seeded() -> FakeOrg:
    org = FakeOrg(now=dt.datetime(2026, 11, 20, 13, 0, tzinfo=dt.UTC))
    org.add("User", Id=REP, Name="Olivia Grant", IsActive=True)
    for i in range(OPPORTUNITIES):
        contact = org.add(
            "Contact",
            FirstName="Pat",
            LastName=f"Buyer {i}",
            Name=f"Pat Buyer {i}",
            Email=f"pat{i}@example.com",
        )
        opp = org.add(
            "Opportunity",
            Name=f"Deal {i}",
            Type="New Business",
            StageName="Prospecting",
            CloseDate="2026-12-31",
            OwnerId=REP,
        )
        org.add("OpportunityContactRole", OpportunityId=opp, ContactId=contact, IsPrimary=True)
    return org


def cycle(org: FakeOrg, db: Path, mapping: LoadedMapping, day: dt.date) -> RunReport:
    org.now = dt.datetime.combine(day, dt.time(15), dt.UTC)
    client = make_client(org)
    with Store.open(db) as store:
        pipeline = Pipeline(
            store=store,
            source=SalesforceSource(client),
            sink=SalesforceSink(client, task_key_field=mapping.common.org.task_key_field),
            ledger=store,
            mapping=mapping,
            rules=[RULE],
            clock=lambda: org.now,
        )
        return pipeline.run(day.isoformat(), day)


def test_a_thousand_opportunities_get_each_step_once_and_the_calls_per_day(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    d = dt.date
    # The days with steps, an idle day after each kind, and a database lost on Day 3.
    days = [d(2026, 11, 20), d(2026, 11, 21), d(2026, 11, 23), d(2026, 11, 24)]
    days += [d(2026, 11, 27), d(2026, 12, 1), d(2026, 12, 2)]
    calls: dict[dt.date, int] = {}
    written: dict[dt.date, int] = {}
    with seeded() as org:
        for day in days:
            db = tmp_path / ("lost.db" if day == d(2026, 11, 24) else "worker.db")
            report = cycle(org, db, mapping, day)
            assert report.status == "ok", report.plan and report.plan.errors[:1]
            calls[day] = report.api_calls
            written[day] = report.outcomes[(RULE.id, "applied")]
        keys = [t["SOP_Worker_Key__c"] for t in org.of("Task")]
    assert len(keys) == len(set(keys)) == 6 * OPPORTUNITIES
    assert written == {
        d(2026, 11, 20): 2 * OPPORTUNITIES,  # Day 1: the email and the LinkedIn Tasks
        d(2026, 11, 21): 0,
        d(2026, 11, 23): OPPORTUNITIES,  # Day 2, after the weekend
        d(2026, 11, 24): OPPORTUNITIES,  # Day 3, from a new database: nothing twice
        d(2026, 11, 27): OPPORTUNITIES,  # Day 5, after Thanksgiving
        d(2026, 12, 1): OPPORTUNITIES,  # Day 7
        d(2026, 12, 2): 0,
    }
    # Per 1,000 opportunities: an idle day is the incremental read, a day with a step adds
    # its Task upserts (the figures in docs/rules/prospecting_cadence.md).
    assert calls[d(2026, 11, 21)] <= 3
    assert calls[d(2026, 12, 2)] <= 3
    assert max(calls[day] for day in (d(2026, 11, 23), d(2026, 11, 27), d(2026, 12, 1))) <= 5
    assert calls[d(2026, 11, 20)] <= 8
    assert calls[d(2026, 11, 24)] <= 8  # the whole org read again
