"""SOP 004 approval matrices: discount bands (deal_approvals) and campaign budget bands
(campaign_budgets): band edges, bad values, and the state read back from the org so a value
is asked about once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.actions import CreateTask, SubmitApproval, UpdateRecord
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule

from .declared import undeclared, walk_demo

DEALS = next(r for r in ALL_RULES if r.id == "deal_approvals")
BUDGETS = next(r for r in ALL_RULES if r.id == "campaign_budgets")
DAY = dt.date(2026, 11, 23)  # a Monday
OPP = "006Dm1600000901000"
CAMPAIGN = "701Dm1600000901000"
REP = "005Dm1600000001000"
MANAGER = "005Dm1600000002000"
VP = "005Dm1600000003000"
CEO = "005Dm1600000004000"
STAMP = "2026-11-20T10:00:00.000+0000"


def user(uid: str, manager: str | None = None, active: bool = True) -> dict[str, Any]:
    return {
        "attributes": {"type": "User"},
        "Id": uid,
        "Name": uid[-6:],
        "IsActive": active,
        "ManagerId": manager,
        "SystemModstamp": STAMP,
    }


def people() -> dict[str, dict[str, Any]]:
    return {
        REP: user(REP, MANAGER),
        MANAGER: user(MANAGER, VP),
        VP: user(VP, CEO),
        CEO: user(CEO),
    }


def opp(discount: Any, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Opportunity"},
        "Id": OPP,
        "Name": "Globex - Platform",
        "Type": "New Business",
        "StageName": "Negotiation/Review",
        "IsClosed": False,
        "Discount_Percent__c": discount,
        "OwnerId": REP,
        "SystemModstamp": STAMP,
        **fields,
    }


def campaign(budget: Any, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Campaign"},
        "Id": CAMPAIGN,
        "Name": "Spring webinar",
        "Status": "Planned",
        "BudgetedCost": budget,
        "Approval_Level_Required__c": None,
        "OwnerId": REP,
        "SystemModstamp": STAMP,
        **fields,
    }


def evaluate(
    org: dict[str, dict[str, Any]],
    mapping: LoadedMapping,
    rule_id: str = "deal_approvals",
    **overrides: Any,
) -> Evaluation:
    rule = DEALS if rule_id == "deal_approvals" else BUDGETS
    settings = mapping.rules[rule_id].model_copy(update=overrides)
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    (evaluation,) = evaluate_rule(rule, snapshot, DAY, settings, mapping.common)
    return evaluation


def apply(org: dict[str, dict[str, Any]], evaluation: Evaluation, mapping: LoadedMapping) -> None:
    now = dt.datetime.combine(DAY, dt.time(15), dt.UTC)
    results = apply_actions(org, evaluation.actions, now, mapping.common.org.task_key_field)
    assert all(r.outcome.value == "applied" for r in results), results


@pytest.mark.parametrize(
    ("discount", "approver", "level"),
    [
        (0, None, "Sales Rep"),
        (10, None, "Sales Rep"),
        (10.01, MANAGER, "Sales Manager"),
        (15, MANAGER, "Sales Manager"),
        (20, MANAGER, "Sales Manager"),
        (20.5, VP, "VP Sales"),
        (30, VP, "VP Sales"),
        (30.01, CEO, "CEO"),
        (75, CEO, "CEO"),
    ],
)
def test_the_discount_band_gives_the_approver(
    mapping: LoadedMapping, discount: float, approver: str | None, level: str
) -> None:
    result = evaluate({OPP: opp(discount), **people()}, mapping)
    assert level in result.why
    if approver is None:  # within the rep's authority: nothing to ask
        assert (result.verdict, result.actions) == (Verdict.DONE, ())
        return
    (submission,) = result.actions
    assert isinstance(submission, SubmitApproval)
    assert submission.approver_ids == (approver,)
    assert submission.process == "SOP_Discount_Approval"
    assert submission.submitter_id == REP
    value = f"{discount:g}"
    assert submission.key == f"deal_approvals:submit-{submission.key.split('-')[1]}-{value}:{OPP}"
    assert f"[sop-worker {submission.key}]" in submission.comments


@pytest.mark.parametrize(
    ("discount", "verdict", "why"),
    [
        (None, Verdict.EXCLUDED, "Discount_Percent__c is empty: nothing to approve"),
        (-5, Verdict.ERROR, "Discount_Percent__c = -5 is negative"),
        (0.15, Verdict.ERROR, "reads as a fraction (15%?) but value_scale = 'percent'"),
        ("fifteen", Verdict.ERROR, "not a number: 'fifteen'"),
    ],
)
def test_bad_discounts_are_said_not_guessed(
    mapping: LoadedMapping, discount: Any, verdict: Verdict, why: str
) -> None:
    result = evaluate({OPP: opp(discount), **people()}, mapping)
    assert result.verdict is verdict
    assert why in result.why
    assert result.actions == ()


def test_a_field_holding_fractions_reads_them_as_percents(mapping: LoadedMapping) -> None:
    result = evaluate({OPP: opp(0.15), **people()}, mapping, value_scale="fraction")
    (submission,) = result.actions
    assert isinstance(submission, SubmitApproval)
    assert submission.approver_ids == (MANAGER,)
    assert "Discount_Percent__c 15%: band (10%, 20%]" in result.why
    wrong = evaluate({OPP: opp(15), **people()}, mapping, value_scale="fraction")
    assert wrong.verdict is Verdict.ERROR
    assert "reads as a percent but value_scale = 'fraction'" in wrong.why


def test_closed_and_out_of_scope_deals_are_left_alone(mapping: LoadedMapping) -> None:
    closed = evaluate({OPP: opp(25, IsClosed=True), **people()}, mapping)
    assert (closed.verdict, closed.actions) == (Verdict.EXCLUDED, ())
    snapshot = Snapshot.build(Record.from_json(opp(25, Type="Payment")) for _ in (1,))
    settings = mapping.rules["deal_approvals"]
    assert list(evaluate_rule(DEALS, snapshot, DAY, settings, mapping.common)) == []


def test_an_owner_without_a_manager_is_an_error_for_that_deal(mapping: LoadedMapping) -> None:
    org = {OPP: opp(15), **people()}
    org[REP] = user(REP, None)
    result = evaluate(org, mapping)
    assert result.verdict is Verdict.ERROR
    assert "has no manager (User.ManagerId)" in result.why
    org[REP] = user(REP, MANAGER)
    org[MANAGER] = user(MANAGER, VP, active=False)
    assert "is inactive" in evaluate(org, mapping).why


def test_a_value_is_submitted_once_and_a_new_value_after_the_decision(
    mapping: LoadedMapping,
) -> None:
    org = {OPP: opp(15), **people()}
    first = evaluate(org, mapping)
    apply(org, first, mapping)
    again = evaluate(org, mapping)  # read back from the org: the instance and its step
    assert (again.verdict, again.actions) == (Verdict.DONE, ())
    assert "submitted to SOP_Discount_Approval for Sales Manager: Pending" in again.why

    org[OPP]["Discount_Percent__c"] = 18  # changed while the approval is pending
    waiting = evaluate(org, mapping)
    assert (waiting.verdict, waiting.actions) == (Verdict.NOT_DUE, ())
    assert "an earlier approval is pending" in waiting.why

    (instance,) = [r for r in org.values() if r["attributes"]["type"] == "ProcessInstance"]
    instance["Status"] = "Rejected"
    second = evaluate(org, mapping)
    (submission,) = second.actions
    assert isinstance(submission, SubmitApproval)
    assert submission.key != first.actions[0].key  # a new value: a new request
    apply(org, second, mapping)

    org[OPP]["Discount_Percent__c"] = 15  # back to the first value: already decided
    back = evaluate(org, mapping)
    assert back.actions == ()
    assert "Rejected" in back.why


@pytest.mark.parametrize(
    ("budget", "approver", "level"),
    [
        (0, "005Dm1600000005000", "Marketing Manager"),
        (4999.99, "005Dm1600000005000", "Marketing Manager"),
        (5000, "005Dm1600000006000", "Director of Marketing"),
        (24999, "005Dm1600000006000", "Director of Marketing"),
        (25000, "005Dm1600000007000", "CMO"),
        (100000, "005Dm1600000007000", "CMO"),
        (100000.01, CEO, "CEO"),
    ],
)
def test_the_campaign_budget_band_gives_the_approver_by_task(
    mapping: LoadedMapping, budget: float, approver: str, level: str
) -> None:
    org = {CAMPAIGN: campaign(budget), **people()}
    result = evaluate(org, mapping, "campaign_budgets")
    assert result.verdict is Verdict.ACT
    update, task = result.actions
    assert isinstance(update, UpdateRecord)
    assert isinstance(task, CreateTask)
    assert update.values() == {"Approval_Level_Required__c": level}
    assert task.owner_id == approver
    assert task.due == dt.date(2026, 11, 25)  # 2 business days
    assert level in task.description

    apply(org, result, mapping)
    again = evaluate(org, mapping, "campaign_budgets")
    assert (again.verdict, again.actions) == (Verdict.DONE, ())
    assert "asked by Task" in again.why


def test_campaign_budgets_bad_input(mapping: LoadedMapping) -> None:
    negative = evaluate({CAMPAIGN: campaign(-1), **people()}, mapping, "campaign_budgets")
    assert negative.verdict is Verdict.ERROR
    empty = evaluate({CAMPAIGN: campaign(None), **people()}, mapping, "campaign_budgets")
    assert (empty.verdict, empty.actions) == (Verdict.EXCLUDED, ())
    settings = mapping.rules["campaign_budgets"]
    completed = Snapshot.build([Record.from_json(campaign(9000, Status="Completed"))])
    assert list(evaluate_rule(BUDGETS, completed, DAY, settings, mapping.common)) == []


@pytest.mark.parametrize("rule_id", ["deal_approvals", "campaign_budgets"])
def test_declarations_match_what_the_rules_do_on_the_demo_org(
    mapping: LoadedMapping, rule_id: str
) -> None:
    """Fields updated and picklist values written are the ones declared for doctor."""
    settings = mapping.rules[rule_id]
    seen = walk_demo(rule_id, mapping, days=10)
    assert seen.writes == {k: v for k, v in settings.writes().items() if v}
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
    if rule_id == "campaign_budgets":
        assert seen.values == {
            ("Campaign", "Approval_Level_Required__c"): {
                "Marketing Manager",
                "Director of Marketing",
                "CMO",
                "CEO",
            }
        }
