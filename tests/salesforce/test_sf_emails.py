"""SOP 001's automated emails over a day-by-day run against a fake org that logs emails as
Salesforce does (a Task, or an EmailMessage with Enhanced Email): each email goes out once
even when the database is lost the day after every email milestone, and a lost answer to
the send is settled from the org, never by sending again."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import Counter
from pathlib import Path

import pytest

from worker.actions import Outcome
from worker.keys import keys_in_text
from worker.mapping import LoadedMapping, load_mapping
from worker.pipeline import Pipeline, RunReport
from worker.rules import ALL_RULES, rule_models
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from .demo_seed import DEMO_ORG
from .fakeorg import FakeOrg
from .sfhelpers import make_client

ROOT = Path(__file__).resolve().parents[2]
RULE = next(r for r in ALL_RULES if r.id == "collections")
DUE = dt.date(2026, 7, 26)  # the oldest unpaid invoice of both accounts
ACCOUNTS = {  # account -> (CSM, contact first name)
    "001EmC000000001AAA": ("005DmU000000003AAA", "Ada"),  # Dana Whitfield, Core CSM
    "001EmC000000002AAA": ("005DmU000000005AAA", "Ben"),  # Jennifer Simon, Digital CSM
}
EMAIL_DAYS = (60, 67, 80)  # email #1, email #2, win-back email #3
STEPS = ("email1", "email2", "winback")


def day(n: int) -> dt.date:
    return DUE + dt.timedelta(days=n)


def email_mapping() -> LoadedMapping:
    mapping = load_mapping(ROOT / "mappings" / "default.toml", rule_models())
    org = mapping.common.org.model_copy(update={"email_action_enabled": True})
    return dataclasses.replace(mapping, common=dataclasses.replace(mapping.common, org=org))


def seeded(enhanced_email: bool) -> FakeOrg:
    org = FakeOrg(now=dt.datetime.combine(day(50), dt.time(17), dt.UTC))
    org.enhanced_email = enhanced_email
    users = json.loads((DEMO_ORG / "records" / "users.json").read_text(encoding="utf-8"))
    for user in users["records"]:
        org.add("User", **{k: v for k, v in user.items() if k != "attributes"})
    stamp = "2026-07-01T10:00:00.000+0000"
    for i, (account, (csm, first)) in enumerate(ACCOUNTS.items(), start=1):
        contact = org.add(
            "Contact",
            Id=f"003EmC00000000{i}AAA",
            FirstName=first,
            LastName="Park",
            Name=f"{first} Park",
            Email=f"{first.lower()}.park@example.com",
            AccountId=account,
            SystemModstamp=stamp,
        )
        org.add(
            "Account",
            Id=account,
            Name=f"Clinic {i}",
            OwnerId=csm,
            Primary_Contact__c=contact,
            Oldest_Unpaid_Due_Date__c=DUE.isoformat(),
            Overdue_Amount__c=4200.5,
            SystemModstamp=stamp,
        )
    return org


def cycle(org: FakeOrg, db: Path, mapping: LoadedMapping, n: int, run: str = "") -> RunReport:
    """One scheduled run on day ``n`` at noon in the org's time zone, with the database at
    ``db`` (a new path: the disk was wiped)."""
    org.now = max(org.now, dt.datetime.combine(day(n), dt.time(17), dt.UTC))
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
        return pipeline.run(run or f"day{n}", day(n))


def sent(org: FakeOrg) -> Counter[tuple[str, str]]:
    """Emails that went out, by (recipient, subject)."""
    return Counter((i["emailAddresses"], i["emailSubject"]) for i in org.emails_sent)


@pytest.mark.parametrize("enhanced_email", [False, True], ids=["task-logged", "enhanced-email"])
def test_each_email_is_sent_once_when_the_database_is_lost_after_each_milestone(
    tmp_path: Path, enhanced_email: bool
) -> None:
    mapping = email_mapping()
    with seeded(enhanced_email) as org:
        db = tmp_path / "w0.db"
        per_day: dict[int, int] = {}
        for n in range(55, 86):
            if n - 1 in EMAIL_DAYS:
                db = tmp_path / f"w{n}.db"  # Heroku's disk was wiped overnight
            before = len(org.emails_sent)
            report = cycle(org, db, mapping, n)
            assert (report.failed, report.record_errors) == (0, 0), report.summary()
            per_day[n] = len(org.emails_sent) - before

        assert {n: k for n, k in per_day.items() if k} == dict.fromkeys(EMAIL_DAYS, 2)
        assert set(sent(org).values()) == {1}
        assert len(sent(org)) == 6  # three emails to each of the two contacts
        logged = org.of("EmailMessage") if enhanced_email else org.of("Task")
        keys = {
            k
            for r in logged
            for k in keys_in_text(r.get("TextBody") if enhanced_email else r.get("Description"))
        }
        assert {k.split(":")[1].split("-")[0] for k in keys} >= set(STEPS)
        settings = mapping.rules["collections"]
        for account in ACCOUNTS:
            notes = (org.get(account) or {})["Case_Notes__c"].splitlines()
            for step in STEPS:  # each email noted once on the account, not once a day
                label = settings.step_label(step)
                assert sum(label in line for line in notes) == 1, (step, notes)


def test_a_lost_answer_to_the_send_is_settled_from_the_org(tmp_path: Path) -> None:
    mapping = email_mapping()
    with seeded(enhanced_email=True) as org:
        db = tmp_path / "w.db"
        cycle(org, db, mapping, 59)
        org.fail(kind="email", drop=True)  # Salesforce sent and logged them; the answer is lost
        lost = cycle(org, db, mapping, 60)
        assert len(org.emails_sent) == 2
        # Settled from their log before the run ended, not left to the next run.
        assert ("collections", "unknown") not in lost.outcomes
        with Store.open(db) as store:
            reconciled = [r for r in store.audit_rows(run_id="day60") if r.event == "reconciled"]
        assert [r.outcome for r in reconciled] == [Outcome.APPLIED.value] * 2

        cycle(org, db, mapping, 61)
        assert len(org.emails_sent) == 2  # not sent again
        with Store.open(db) as store:
            emails = [e for e in store.ledger_entries() if e.action.kind.value == "send_email"]
        assert {e.status for e in emails} == {Outcome.APPLIED}


def test_a_send_refused_before_salesforce_committed_it_is_sent_the_next_day(
    tmp_path: Path,
) -> None:
    mapping = email_mapping()
    with seeded(enhanced_email=False) as org:
        db = tmp_path / "w.db"
        cycle(org, db, mapping, 59)
        # A gateway error without a Salesforce body: nothing was sent or logged, but the worker
        # cannot know that from the answer.
        org.fail(kind="email", status=502, error_code=None)
        lost = cycle(org, db, mapping, 60)
        assert lost.outcomes[("collections", "unknown")] == 2
        assert org.emails_sent == []

        # A run minutes later: the request might still be running in Salesforce and commit,
        # so the emails wait (still "sent") rather than go out twice.
        org.now += dt.timedelta(minutes=3)
        cycle(org, db, mapping, 60, run="day60-again")
        assert org.emails_sent == []
        with Store.open(db) as store:
            emails = [e for e in store.ledger_entries() if e.action.kind.value == "send_email"]
        assert {e.status for e in emails} == {Outcome.SENT}

        cycle(org, db, mapping, 61)
        assert set(sent(org).values()) == {1}
        assert len(sent(org)) == 2  # the org showed no logged email: sent once, a day late
