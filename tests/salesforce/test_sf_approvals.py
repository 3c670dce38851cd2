"""SOP 004 discount approvals against a fake org with an approval process: each discount is
submitted once through process/approvals even when the database is lost every day, the
submissions of a run share a call and each answer is matched to its record, a record the
process's entry criteria refuse fails alone with Salesforce's error code, a bulk call
refused as a whole is settled and sent again alone, and a lost answer to a submission is
settled from ProcessInstance, never sent again."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from worker.actions import Outcome
from worker.keys import keys_in_text
from worker.mapping import LoadedMapping
from worker.pipeline import Pipeline, RunReport
from worker.rules import ALL_RULES
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.store import Store

from .fakeorg import FakeOrg
from .sfhelpers import make_client

RULE = next(r for r in ALL_RULES if r.id == "deal_approvals")
DAY = dt.date(2026, 11, 23)
REP, MANAGER, VP, CEO = (f"005Dm16000000{i:02d}000" for i in range(1, 5))
DEALS = {  # opportunity -> discount
    "006Dm1600000801000": 15,  # the manager's
    "006Dm1600000802000": 25,  # the VP's
    "006Dm1600000803000": 8,  # the rep's own
}
PROCESS = "SOP_Discount_Approval"


def seeded(entry: Any = lambda record: True) -> FakeOrg:
    org = FakeOrg(now=dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC))
    for uid, manager in ((REP, MANAGER), (MANAGER, VP), (VP, CEO), (CEO, None)):
        org.add("User", Id=uid, Name=uid[-6:], IsActive=True, ManagerId=manager)
    for i, (rid, discount) in enumerate(DEALS.items(), start=1):
        org.add(
            "Opportunity",
            Id=rid,
            Name=f"Deal {i}",
            Type="New Business",
            StageName="Negotiation/Review",
            CloseDate="2026-12-31",
            Amount=10000.0 * i,
            Discount_Percent__c=discount,
            OwnerId=REP,
        )
    org.define_approval(PROCESS, "Opportunity", entry)
    return org


def cycle(org: FakeOrg, db: Path, mapping: LoadedMapping, n: int) -> RunReport:
    org.now = max(org.now, dt.datetime.combine(DAY + dt.timedelta(days=n), dt.time(15), dt.UTC))
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
        return pipeline.run(f"day{n}", DAY + dt.timedelta(days=n))


def submitted(org: FakeOrg) -> dict[str, list[str]]:
    """Opportunity -> the approvers each submission named."""
    out: dict[str, list[str]] = {}
    for request in org.approval_requests:
        out.setdefault(request["contextId"], []).extend(request.get("nextApproverIds") or [])
    return out


def test_each_discount_is_submitted_once_when_the_database_is_lost_every_day(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    with seeded() as org:
        for n in range(4):
            report = cycle(org, tmp_path / f"w{n}.db", mapping, n)  # a new disk every day
            assert (report.failed, report.record_errors) == (0, 0), report.summary()
        assert submitted(org) == {
            "006Dm1600000801000": [MANAGER],
            "006Dm1600000802000": [VP],
        }
        request = org.approval_requests[0]
        assert request["actionType"] == "Submit"
        assert request["processDefinitionNameOrId"] == PROCESS
        assert request["contextActorId"] == REP
        assert request["skipEntryCriteria"] is False
        steps = org.of("ProcessInstanceStep")
        assert {k for s in steps for k in keys_in_text(s["Comments"])} == {
            "deal_approvals:submit-manager-15:006Dm1600000801000",
            "deal_approvals:submit-vp_sales-25:006Dm1600000802000",
        }

        # The manager rejects; the rep lowers the discount to 12: a new value, a new request.
        (first,) = [
            i for i in org.of("ProcessInstance") if i["TargetObjectId"] == "006Dm1600000801000"
        ]
        org.decide_approval(first["Id"], "Rejected")
        org.edit("006Dm1600000801000", Discount_Percent__c=12)
        cycle(org, tmp_path / "w9.db", mapping, 4)
        cycle(org, tmp_path / "w10.db", mapping, 5)
        assert submitted(org)["006Dm1600000801000"] == [MANAGER, MANAGER]
        assert len(org.approval_requests) == 3


def instances_by_action(db: Path) -> dict[str, str]:
    """Opportunity -> the ProcessInstance Id the ledger recorded for its submission."""
    with Store.open(db) as store:
        return {
            e.action.target.id: e.sf_id
            for e in store.ledger_entries()
            if e.action.rule == "deal_approvals" and e.sf_id
        }


def test_the_submissions_of_a_run_share_one_call_and_each_answer_finds_its_record(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    with seeded() as org:
        db = tmp_path / "w.db"
        report = cycle(org, db, mapping, 0)
        assert report.outcomes[("deal_approvals", "applied")] == 2
        assert org.calls_by_kind["approval"] == 1  # both in one bulk call
        # The org answers in another order than the requests: each instance is recorded
        # against the deal it was started on.
        assert instances_by_action(db) == {
            i["TargetObjectId"]: i["Id"] for i in org.of("ProcessInstance")
        }


def test_a_bulk_call_refused_as_a_whole_is_settled_then_sent_again_alone(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    with seeded() as org:
        db = tmp_path / "w.db"
        org.fail(kind="approval", status=400, error_code="REQUEST_LIMIT_EXCEEDED", times=1)
        report = cycle(org, db, mapping, 0)
        assert report.outcomes[("deal_approvals", "applied")] == 2
        assert org.calls_by_kind["approval"] == 3  # the refused bulk call, then one each
        assert len(org.of("ProcessInstance")) == 2  # nothing started twice
        assert instances_by_action(db) == {
            i["TargetObjectId"]: i["Id"] for i in org.of("ProcessInstance")
        }


def test_a_deal_the_entry_criteria_refuse_fails_alone_with_its_error_code(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    # The org's process only takes deals of $15,000 or more: Deal 1 ($10,000) is refused.
    with seeded(entry=lambda record: (record.get("Amount") or 0) >= 15000) as org:
        db = tmp_path / "w.db"
        report = cycle(org, db, mapping, 0)
        assert report.outcomes[("deal_approvals", "failed")] == 1
        assert report.outcomes[("deal_approvals", "applied")] == 1
        with Store.open(db) as store:
            failed = [r for r in store.audit_rows() if r.outcome == Outcome.FAILED.value]
        assert [(r.record_id, r.error_code) for r in failed] == [
            ("006Dm1600000801000", "NO_APPLICABLE_PROCESS")
        ]
        assert "No applicable approval process was found." in (failed[0].message or "")
        assert [i["TargetObjectId"] for i in org.of("ProcessInstance")] == ["006Dm1600000802000"]


def test_a_lost_submission_answer_is_settled_from_process_instance(
    tmp_path: Path, mapping: LoadedMapping
) -> None:
    with seeded() as org:
        db = tmp_path / "w.db"
        # Salesforce submits both; both answers are lost on the way back.
        org.fail(kind="approval", drop=True, times=2)
        lost = cycle(org, db, mapping, 0)
        assert len(org.approval_requests) == 2
        assert ("deal_approvals", "unknown") not in lost.outcomes  # settled in the same run
        with Store.open(db) as store:
            reconciled = [r for r in store.audit_rows(run_id="day0") if r.event == "reconciled"]
        assert [r.outcome for r in reconciled] == [Outcome.APPLIED.value] * 2

        cycle(org, db, mapping, 1)
        cycle(org, tmp_path / "fresh.db", mapping, 2)
        assert len(org.approval_requests) == 2  # never sent again
        assert len(org.of("ProcessInstance")) == 2
