"""SOP 004 Closed Won/Lost actions: each once per deal, dated from the day it closed, only
for recent closes; a won deal with a future Close Date or no CSM is an error."""

from __future__ import annotations

import datetime as dt
from typing import Any

from worker.actions import AddCampaignMember, CreateTask
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule

from .declared import undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "closed_won_lost")
OPP = "006Dm1600000960000"
REP = "005Dm1600000001000"
CSM = "005Dm1600000009000"
CLOSED = dt.date(2026, 11, 18)


def org_with(stage: str, **fields: Any) -> dict[str, dict[str, Any]]:
    return {
        OPP: {
            "attributes": {"type": "Opportunity"},
            "Id": OPP,
            "Name": "Los Pollos - Logistics",
            "Type": "New Business",
            "StageName": stage,
            "IsClosed": True,
            "CloseDate": CLOSED.isoformat(),
            "Amount": 36000.0,
            "Account": {"Name": "Los Pollos"},
            "Owner": {"Name": "Olivia Grant"},
            "Customer_Success_Manager__c": CSM,
            "Loss_Reason__c": None,
            "OwnerId": REP,
            "SystemModstamp": "2026-11-18T15:00:00.000+0000",
            **fields,
        },
        "008Dm1600000960001": {
            "attributes": {"type": "OpportunityHistory"},
            "Id": "008Dm1600000960001",
            "OpportunityId": OPP,
            "StageName": stage,
            "CreatedDate": "2026-11-18T15:00:00.000+0000",
            "SystemModstamp": "2026-11-18T15:00:00.000+0000",
        },
    }


def evaluate(org: dict[str, dict[str, Any]], day: dt.date, mapping: LoadedMapping) -> Evaluation:
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    settings = mapping.rules["closed_won_lost"]
    (evaluation,) = evaluate_rule(RULE, snapshot, day, settings, mapping.common)
    return evaluation


def tasks(evaluation: Evaluation) -> dict[str, tuple[dt.date, str | None]]:
    return {
        a.key.split(":")[1]: (a.due, a.owner_id)
        for a in evaluation.actions
        if isinstance(a, CreateTask)
    }


def test_won_gets_its_actions_once(mapping: LoadedMapping) -> None:
    org = org_with("Closed Won")
    day = dt.date(2026, 11, 19)
    first = evaluate(org, day, mapping)
    assert tasks(first) == {
        "notify": (day, REP),  # the email action is off in the demo: a Task to send it
        "kickoff": (day, CSM),
        "introduce_cs": (day, REP),
        "referral": (CLOSED + dt.timedelta(days=30), REP),
    }
    now = dt.datetime.combine(day, dt.time(18), dt.UTC)
    apply_actions(org, first.actions, now, mapping.common.org.task_key_field)
    again = evaluate(org, dt.date(2026, 11, 20), mapping)
    assert (again.verdict, again.actions) == (Verdict.DONE, ())


def test_lost_gets_interview_reason_and_follow_up(mapping: LoadedMapping) -> None:
    day = dt.date(2026, 11, 19)
    lost = evaluate(org_with("Closed Lost"), day, mapping)
    assert tasks(lost) == {
        "loss_interview": (day, REP),
        "loss_reason": (day, REP),  # the reason is blank
        "followup": (CLOSED + dt.timedelta(days=90), REP),
    }
    documented = evaluate(
        org_with("Closed Lost", Loss_Reason__c="Going with Another Company"), day, mapping
    )
    assert set(tasks(documented)) == {"loss_interview", "followup"}


def test_bad_closed_deals_are_said(mapping: LoadedMapping) -> None:
    no_csm = evaluate(org_with("Closed Won", Customer_Success_Manager__c=None), CLOSED, mapping)
    assert no_csm.verdict is Verdict.ERROR
    assert "no CSM" in no_csm.why
    future = org_with("Closed Won", CloseDate="2026-12-31")
    del future["008Dm1600000960001"]
    result = evaluate(future, CLOSED, mapping)
    assert result.verdict is Verdict.ERROR
    assert "CloseDate 2026-12-31 is in the future" in result.why
    old = evaluate(org_with("Closed Won"), dt.date(2026, 12, 10), mapping)  # 22 days later
    assert (old.verdict, old.actions) == (Verdict.EXCLUDED, ())


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    settings = mapping.rules["closed_won_lost"]
    seen = walk_demo("closed_won_lost", mapping, days=10)
    assert seen.writes == {}
    assert undeclared(seen, settings.picklist_values(), mapping) == {}


def test_a_lost_deals_primary_contact_joins_the_nurture_campaign(mapping: LoadedMapping) -> None:
    campaign = mapping.rules["closed_won_lost"].nurture_campaign_id
    contact = "003Dm1600000960002"
    org = org_with("Closed Lost")
    day = dt.date(2026, 11, 19)
    alone = evaluate(org, day, mapping)
    assert not [a for a in alone.actions if isinstance(a, AddCampaignMember)]
    assert "no primary contact (OpportunityContactRole.IsPrimary)" in alone.why
    for rid, primary, person in (
        ("00KDm1600000960003", False, "003Dm1600000960003"),
        ("00KDm1600000960004", True, contact),
    ):
        org[rid] = {
            "attributes": {"type": "OpportunityContactRole"},
            "Id": rid,
            "OpportunityId": OPP,
            "ContactId": person,
            "IsPrimary": primary,
        }
    (joins,) = [a for a in evaluate(org, day, mapping).actions if isinstance(a, AddCampaignMember)]
    assert (joins.key, joins.campaign_id, joins.member_id, joins.status) == (
        f"closed_won_lost:nurture:{OPP}",
        campaign,
        contact,
        "Sent",
    )
    org["00vDm1600000960005"] = {  # the org shows them a member: nothing to do
        "attributes": {"type": "CampaignMember"},
        "Id": "00vDm1600000960005",
        "CampaignId": campaign,
        "ContactId": contact,
    }
    member = evaluate(org, day, mapping)
    assert not [a for a in member.actions if isinstance(a, AddCampaignMember)]
