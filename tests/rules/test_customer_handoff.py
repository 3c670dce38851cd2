"""SOP 004 Customer Handoff: the form, the kickoff within 3 business days (else the CSM's
manager is told), the introduction email drafted from the SOP's template, the checklists,
each once per win whatever the reruns; a re-opened deal's open handoff Tasks closed."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from worker import schema
from worker.actions import CreateTask, UpdateRecord
from worker.errors import MappingError
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping, load_mapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule, rule_models

from ..test_mapping import broken
from .declared import undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "customer_handoff")
OPP = "006Dm1640000091IAA"
REP = "005Dm1600000001000"
CSM = "005Dm1640000091IAA"
MANAGER = "005Dm1640000092IAA"
FALLBACK = "005Dm1640000004IAA"  # the mapping's fallback_manager
CONTACT = "003Dm1640000091IAA"
EVENT = "00UDm1640000091IAA"
WON = dt.date(2026, 11, 18)  # a Wednesday: 3 business days later is Monday 2026-11-23
Org = dict[str, dict[str, Any]]


def org_with(stage: str = "Closed Won", kickoff: str | None = None, **fields: Any) -> Org:
    """A deal won on WON with a complete handoff form, its CSM, the CSM's manager and the
    primary contact; a kickoff Event starting at ``kickoff`` (UTC) when given."""
    records = [
        {
            "attributes": {"type": "Opportunity"},
            "Id": OPP,
            "Name": "Hooli - Platform",
            "Type": "New Business",
            "StageName": stage,
            "IsClosed": stage.startswith("Closed"),
            "CloseDate": WON.isoformat(),
            "Amount": 48000.0,
            "Account": {"Name": "Hooli"},
            "Owner": {"Name": "Olivia Grant"},
            "OwnerId": REP,
            "Customer_Success_Manager__c": CSM,
            "Contract_Term_Months__c": 12,
            "Go_Live_Date__c": "2027-01-15",
            "Success_Criteria__c": "1. Reports in under an hour\n2. Every team onboarded",
            "Risk_Factors__c": "IT capacity in December",
            "SystemModstamp": "2026-11-18T16:00:00.000+0000",
            **fields,
        },
        history("008Dm1640000091IAA", "Negotiation/Review", "2026-11-02T15:00:00.000+0000"),
        history("008Dm1640000092IAA", "Closed Won", "2026-11-18T16:00:00.000+0000"),
        user(CSM, "Grace Okafor", MANAGER),
        user(MANAGER, "Ravi Menon", None),
        {
            "attributes": {"type": "Contact"},
            "Id": CONTACT,
            "FirstName": "Maya",
            "Email": "maya.chen@hooli.example.com",
        },
        role("00KDm1640000091IAA", "Economic Decision Maker", CONTACT, primary=True),
        role("00KDm1640000092IAA", "Executive Sponsor"),
        role("00KDm1640000093IAA", "Technical Buyer"),
    ]
    if kickoff:
        records.append(
            {
                "attributes": {"type": "Event"},
                "Id": EVENT,
                "WhatId": OPP,
                "Type": "Kickoff",
                "Subject": "Hooli kickoff",
                "StartDateTime": kickoff,
                "SystemModstamp": "2026-11-19T14:00:00.000+0000",
            }
        )
    return {r["Id"]: r for r in records}


def history(record_id: str, stage: str, when: str) -> dict[str, Any]:
    return {
        "attributes": {"type": "OpportunityHistory"},
        "Id": record_id,
        "OpportunityId": OPP,
        "StageName": stage,
        "CreatedDate": when,
        "SystemModstamp": when,
    }


def user(record_id: str, name: str, manager: str | None, active: bool = True) -> dict[str, Any]:
    return {
        "attributes": {"type": "User"},
        "Id": record_id,
        "Name": name,
        "ManagerId": manager,
        "IsActive": active,
    }


def role(record_id: str, name: str, contact: str | None = None, primary: bool = False) -> Any:
    return {
        "attributes": {"type": "OpportunityContactRole"},
        "Id": record_id,
        "OpportunityId": OPP,
        "ContactId": contact,
        "Role": name,
        "IsPrimary": primary,
    }


def evaluate(org: Org, day: dt.date, mapping: LoadedMapping) -> Evaluation:
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    settings = mapping.rules["customer_handoff"]
    (evaluation,) = evaluate_rule(RULE, snapshot, day, settings, mapping.common)
    return evaluation


def apply(org: Org, evaluation: Evaluation, day: dt.date, mapping: LoadedMapping) -> None:
    now = dt.datetime.combine(day, dt.time(18), dt.UTC)
    apply_actions(org, evaluation.actions, now, mapping.common.org.task_key_field)


def steps(evaluation: Evaluation) -> dict[str, CreateTask]:
    return {
        a.key.split(":")[1].split("-")[0]: a
        for a in evaluation.actions
        if isinstance(a, CreateTask)
    }


def test_a_won_deal_gets_its_checklists_and_introduction_once(mapping: LoadedMapping) -> None:
    org = org_with(kickoff="2026-11-20T16:00:00.000+0000")  # Friday, 10:00 in Chicago
    day = dt.date(2026, 11, 19)
    first = evaluate(org, day, mapping)
    found = steps(first)
    assert {step: (t.due, t.owner_id) for step, t in found.items()} == {
        "week1": (WON + dt.timedelta(days=7), CSM),
        "weeks2_4": (WON + dt.timedelta(days=28), CSM),
        "review": (WON + dt.timedelta(days=30), CSM),
        "introduction": (day, CSM),
    }
    assert "form 9/9 (100%)" in first.why
    assert "- [ ] Kickoff completed" in found["week1"].description
    assert "- [ ] Satisfaction check" in found["review"].description
    intro = found["introduction"]
    assert intro.subject == "Send: Welcome to SOP Worker! Meet Your Success Team"
    assert intro.description.startswith("To: maya.chen@hooli.example.com\n\nHi Maya,\n")
    assert "I'm Grace Okafor, your Customer Success Manager" in intro.description
    assert "help you achieve Reports in under an hour." in intro.description
    assert (
        "Olivia Grant has briefed me on your objectives:\n- Reports in under an hour\n- Every team onboarded\n"
        in intro.description
    )
    assert "scheduled for Friday November 20, 2026 at 10:00 CST." in intro.description
    assert "[" not in intro.description
    assert "{" not in intro.description
    apply(org, first, day, mapping)
    for later in (day, dt.date(2026, 11, 24), dt.date(2026, 12, 1)):
        again = evaluate(org, later, mapping)
        assert (again.verdict, again.actions) == (Verdict.DONE, ())


def test_an_incomplete_form_is_a_task_for_the_ae_listing_what_is_missing(
    mapping: LoadedMapping,
) -> None:
    org = org_with(Go_Live_Date__c=None, Risk_Factors__c="  ")
    del org["00KDm1640000093IAA"]  # no technical stakeholder
    result = evaluate(org, dt.date(2026, 11, 19), mapping)
    form = steps(result)["form"]
    assert form.owner_id == REP
    assert "6/9 (67%)" in form.description
    assert "Missing: Go-Live Date, Technical stakeholder, Risk Factors" in form.description
    assert "form 6/9 (67%), missing: Go-Live Date, Technical stakeholder, Risk Factors" in (
        result.why
    )


def test_no_success_criteria_holds_the_introduction_back(mapping: LoadedMapping) -> None:
    """The email's goal and objectives are the success criteria: never sent blank."""
    org = org_with(kickoff="2026-11-20T16:00:00.000+0000", Success_Criteria__c=None)
    result = evaluate(org, dt.date(2026, 11, 19), mapping)
    assert result.verdict is Verdict.ACT
    assert "introduction" not in steps(result)
    assert "Missing: Success Criteria" in steps(result)["form"].description
    assert "introduction email waits for Success_Criteria__c" in result.why
    org[OPP]["Success_Criteria__c"] = "Reports in under an hour"
    apply(org, result, dt.date(2026, 11, 19), mapping)
    assert set(steps(evaluate(org, dt.date(2026, 11, 20), mapping))) == {"introduction"}


def test_no_kickoff_within_3_business_days_tells_the_csms_manager(
    mapping: LoadedMapping,
) -> None:
    org = org_with()
    apply(org, evaluate(org, WON, mapping), WON, mapping)
    on_deadline = evaluate(org, dt.date(2026, 11, 23), mapping)
    assert (on_deadline.verdict, on_deadline.next_due) == (Verdict.NOT_DUE, dt.date(2026, 11, 24))
    assert "introduction email waits for the kickoff Event" in on_deadline.why
    late = evaluate(org, dt.date(2026, 11, 24), mapping)
    (escalation,) = late.actions
    assert isinstance(escalation, CreateTask)
    assert escalation.key == f"customer_handoff:kickoff_escalation-2026-11-18:{OPP}"
    assert (escalation.owner_id, escalation.fields["Priority"]) == (MANAGER, "High")
    assert "no kickoff Event by 2026-11-23" in escalation.description
    apply(org, late, dt.date(2026, 11, 24), mapping)
    assert evaluate(org, dt.date(2026, 11, 25), mapping).actions == ()


@pytest.mark.parametrize("manager", [None, "inactive"])
def test_a_csm_without_an_active_manager_escalates_to_the_fallback(
    mapping: LoadedMapping, manager: str | None
) -> None:
    org = org_with()
    if manager is None:
        org[CSM]["ManagerId"] = None
    else:
        org[MANAGER]["IsActive"] = False
    escalation = steps(evaluate(org, dt.date(2026, 11, 24), mapping))["kickoff_escalation"]
    assert escalation.owner_id == FALLBACK


def test_a_kickoff_on_a_holiday_does_not_count(mapping: LoadedMapping) -> None:
    # Won Friday 2026-11-20: the deadline is Wednesday 11-25; the kickoff is booked on
    # Thanksgiving (11-26), when the business is closed.
    org = org_with(kickoff="2026-11-26T16:00:00.000+0000")
    org["008Dm1640000092IAA"]["CreatedDate"] = "2026-11-20T16:00:00.000+0000"
    waiting = evaluate(org, dt.date(2026, 11, 23), mapping)
    assert "kickoff Event 'Hooli kickoff' on 2026-11-26 not counted: not a business day" in (
        waiting.why
    )
    assert "introduction" not in steps(waiting)
    late = steps(evaluate(org, dt.date(2026, 11, 27), mapping))
    assert "not a business day" in late["kickoff_escalation"].description


def test_a_deleted_kickoff_event_no_longer_counts(mapping: LoadedMapping) -> None:
    org = org_with(kickoff="2026-11-20T16:00:00.000+0000")
    apply(org, evaluate(org, WON, mapping), WON, mapping)
    assert evaluate(org, dt.date(2026, 11, 24), mapping).actions == ()
    del org[EVENT]  # deleted: the pull's queryAll takes it out of the cache
    late = evaluate(org, dt.date(2026, 11, 24), mapping)
    assert set(steps(late)) == {"kickoff_escalation"}
    assert "no kickoff Event on the opportunity" in late.actions[0].description  # type: ignore[attr-defined]


def test_a_reopened_deal_closes_its_open_handoff_tasks_with_a_note(
    mapping: LoadedMapping,
) -> None:
    org = org_with()
    apply(org, evaluate(org, WON, mapping), WON, mapping)
    week1 = next(r for r in org.values() if "week1" in str(r.get("SOP_Worker_Key__c")))
    week1["Status"] = "Completed"  # the CSM did it
    org[OPP].update(StageName="Negotiation/Review", IsClosed=False)
    org["008Dm1640000093IAA"] = history(
        "008Dm1640000093IAA", "Negotiation/Review", "2026-11-20T16:00:00.000+0000"
    )
    reopened = evaluate(org, dt.date(2026, 11, 20), mapping)
    assert reopened.verdict is Verdict.ACT
    updates = [a for a in reopened.actions if isinstance(a, UpdateRecord)]
    assert len(updates) == len(reopened.actions) == 2  # weeks 2-4 and the review
    assert week1["Id"] not in {a.target.id for a in updates}
    for update in updates:
        values = update.values()
        assert values[schema.STATUS] == "Completed"
        assert values[schema.DESCRIPTION].endswith(
            "Closed on 2026-11-20: the opportunity won on 2026-11-18 is Negotiation/Review "
            "again, so the handoff stops."
        )
    apply(org, reopened, dt.date(2026, 11, 20), mapping)
    after = evaluate(org, dt.date(2026, 11, 21), mapping)
    assert (after.verdict, after.actions) == (Verdict.EXCLUDED, ())


def test_bad_won_deals_are_said(mapping: LoadedMapping) -> None:
    future = evaluate(org_with(CloseDate="2026-12-31"), WON, mapping)
    assert future.verdict is Verdict.ERROR
    assert "CloseDate 2026-12-31 is in the future" in future.why
    no_csm = evaluate(org_with(Customer_Success_Manager__c=None), WON, mapping)
    assert (no_csm.verdict, no_csm.actions) == (Verdict.ERROR, ())
    assert "no CSM" in no_csm.why
    old = evaluate(org_with(), dt.date(2026, 12, 10), mapping)  # won 22 days before
    assert (old.verdict, old.actions) == (Verdict.EXCLUDED, ())


def test_day_by_day_each_step_is_made_once(mapping: LoadedMapping) -> None:
    """From the win to day 31, runs twice a day: each handoff Task once, on its day."""
    org = org_with()
    made: Counter[str] = Counter()
    first_day: dict[str, dt.date] = {}
    for offset in range(32):
        day = WON + dt.timedelta(days=offset)
        for _ in range(2):
            evaluation = evaluate(org, day, mapping)
            for action in evaluation.actions:
                made[action.key] += 1
                first_day.setdefault(action.key.split(":")[1], day)
            apply(org, evaluation, day, mapping)
    assert set(made.values()) == {1}
    assert first_day == {
        "week1-2026-11-18": WON,
        "weeks2_4-2026-11-18": WON,
        "review-2026-11-18": WON,
        "kickoff_escalation-2026-11-18": dt.date(2026, 11, 24),
    }


def test_an_unknown_placeholder_in_the_introduction_is_refused(tmp_path: Path) -> None:
    path = broken(tmp_path, "Hi {customer},", "Hi {customer_name},")
    with pytest.raises(MappingError) as info:
        load_mapping(path, rule_models())
    assert "rules.customer_handoff.intro_body: unknown placeholder(s) {customer_name}" in str(
        info.value
    )


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    settings = mapping.rules["customer_handoff"]
    seen = walk_demo("customer_handoff", mapping, days=10)
    assert seen.writes == {"Task": {schema.STATUS, schema.DESCRIPTION}}
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
