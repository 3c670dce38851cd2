"""SOP 000 rule: day boundaries, the day-by-day cadence, exits, catch-up, reruns."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.actions import Action, CloseRecord, CreateTask
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule

from .declared import is_picklist, undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "payment_followup")
OPP = "006TstP000000001AAA"
CLOSE = dt.date(2026, 9, 23)


def opp(**fields: Any) -> dict[str, Any]:
    base = {
        "attributes": {"type": "Opportunity"},
        "Id": OPP,
        "Name": "Acme - Payment",
        "Type": "Payment",
        "StageName": "Closed Won",
        "CloseDate": CLOSE.isoformat(),
        "OwnerId": "005TstU000000001AAA",
        "Account": {"Name": "Acme"},
        "NextStep": None,
        "Payment_Status__c": "Open",
        "Closed_Reason__c": None,
        "Customer_Responded__c": False,
        "SystemModstamp": "2026-09-23T10:00:00.000+0000",
    }
    return {**base, **fields}


def evaluate(
    org: dict[str, dict[str, Any]], day: dt.date, mapping: LoadedMapping, **overrides: Any
) -> Evaluation:
    settings = mapping.rules["payment_followup"].model_copy(update=overrides)
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    (evaluation,) = [
        e
        for e in evaluate_rule(RULE, snapshot, day, settings, mapping.common)
        if e.target.id == OPP
    ]
    return evaluation


def steps(actions: tuple[Action, ...]) -> set[tuple[str, str]]:
    return {(a.key.split(":")[1], a.kind.value) for a in actions}


def day(n: int) -> dt.date:
    return CLOSE + dt.timedelta(days=n)


@pytest.mark.parametrize(
    ("age", "verdict", "expected"),
    [
        (30, Verdict.NOT_DUE, set()),
        (31, Verdict.ACT, {("initial", "create_task"), ("initial-log", "update")}),
        (59, Verdict.ACT, {("initial", "create_task"), ("initial-log", "update")}),
        (60, Verdict.ACT, {("final", "create_task"), ("final-log", "update")}),
        (61, Verdict.ACT, {("final", "create_task"), ("final-log", "update")}),
    ],
)
def test_first_sight_at_day_boundaries(
    mapping: LoadedMapping, age: int, verdict: Verdict, expected: set[tuple[str, str]]
) -> None:
    result = evaluate({OPP: opp()}, day(age), mapping)
    assert result.verdict is verdict
    assert steps(result.actions) == expected


def test_not_due_says_when(mapping: LoadedMapping) -> None:
    result = evaluate({OPP: opp()}, day(30), mapping)
    assert result.next_due == day(31)
    assert "day 30 since CloseDate 2026-09-23" in result.why


@pytest.mark.parametrize(
    ("fields", "verdict", "why"),
    [
        ({"Payment_Status__c": "Resolved"}, Verdict.EXCLUDED, "Payment_Status__c='Resolved'"),
        ({"Payment_Status__c": "Closed"}, Verdict.DONE, "already closed out"),
        ({"StageName": "Negotiation/Review"}, Verdict.EXCLUDED, "StageName='Negotiation/Review'"),
        ({"CloseDate": None}, Verdict.ERROR, "no CloseDate"),
        ({"CloseDate": "2026-02-30"}, Verdict.ERROR, "not a date"),
        ({"Customer_Responded__c": True}, Verdict.DONE, "Customer_Responded__c is checked"),
    ],
)
def test_out_of_cadence(
    mapping: LoadedMapping, fields: dict[str, Any], verdict: Verdict, why: str
) -> None:
    result = evaluate({OPP: opp(**fields)}, day(45), mapping)
    assert result.verdict is verdict
    assert why in result.why
    assert result.actions == ()


def test_other_types_are_not_candidates(mapping: LoadedMapping) -> None:
    snapshot = Snapshot.build([Record.from_json(opp(Type="New Business"))])
    settings = mapping.rules["payment_followup"]
    assert list(evaluate_rule(RULE, snapshot, day(45), settings, mapping.common)) == []


def walk(
    mapping: LoadedMapping,
    start: int,
    end: int,
    org: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[int, set[tuple[str, str]]]:
    """Run the rule every day from ``start`` to ``end``, applying what it plans."""
    org = org if org is not None else {OPP: opp()}
    seen: dict[int, set[tuple[str, str]]] = {}
    for n in range(start, end + 1):
        today = day(n)
        result = evaluate(org, today, mapping, **overrides)
        seen[n] = steps(result.actions)
        now = dt.datetime.combine(today, dt.time(12), dt.UTC)
        assert all(
            r.outcome.value == "applied"
            for r in apply_actions(org, result.actions, now, "SOP_Worker_Key__c")
        )
        rerun = evaluate(org, today, mapping, **overrides)
        assert rerun.actions == (), f"rerun of day {n} planned {steps(rerun.actions)}"
    return seen


def test_day_by_day_from_29_to_62(mapping: LoadedMapping) -> None:
    seen = walk(mapping, 29, 62)
    expected: dict[int, set[tuple[str, str]]] = {n: set() for n in range(29, 63)}
    expected[31] = {("initial", "create_task"), ("initial-log", "update")}
    for attempt, n in enumerate(range(33, 60, 2), start=2):
        expected[n] = {
            (f"followup-{attempt}", "create_task"),
            (f"followup-{attempt}-log", "update"),
        }
    expected[60] = {("final", "create_task"), ("final-log", "update")}
    expected[61] = {("closeout", "close")}
    assert seen == expected


def test_closeout_sets_status_reason_and_note(mapping: LoadedMapping) -> None:
    org = {OPP: opp()}
    walk(mapping, 31, 61, org)
    record = org[OPP]
    assert record["Payment_Status__c"] == "Closed"
    assert record["Closed_Reason__c"] == "No Response"
    assert record["NextStep"].endswith("Closed out: no response or resolution by day 60.")
    assert len(record["NextStep"]) <= 255
    tasks = [r for r in org.values() if r["attributes"]["type"] == "Task"]
    assert len(tasks) == 16  # initial + 14 follow-ups + final
    assert all(t["WhatId"] == OPP and t["OwnerId"] == "005TstU000000001AAA" for t in tasks)
    final = next(t for t in tasks if t["SOP_Worker_Key__c"].startswith("payment_followup:final"))
    assert "closed out due to inactivity on 2026-11-23" in final["Description"]
    assert final["Priority"] == "High"


def test_response_task_stops_the_cadence(mapping: LoadedMapping) -> None:
    org = {OPP: opp()}
    walk(mapping, 31, 34, org)
    org["00TTstR000000001AAA"] = {
        "attributes": {"type": "Task"},
        "Id": "00TTstR000000001AAA",
        "WhatId": OPP,
        "Type": "Customer Response",
        "Subject": "Customer called back",
        "Status": "Completed",
        "ActivityDate": day(34).isoformat(),
        "SystemModstamp": "2026-10-27T10:00:00.000+0000",
    }
    seen = walk(mapping, 35, 62, org)
    assert all(actions == set() for actions in seen.values())
    assert evaluate(org, day(62), mapping).verdict is Verdict.DONE


def test_catch_up_does_the_step_due_now_and_records_missed_ones(mapping: LoadedMapping) -> None:
    org = {OPP: opp()}
    walk(mapping, 31, 33, org)  # attempts on days 31 and 33, then the worker is down
    result = evaluate(org, day(40), mapping)
    assert steps(result.actions) == {("followup-3", "create_task"), ("followup-3-log", "update")}
    assert [s.due for s in result.skipped] == [day(35), day(37)]
    assert all("not running" in s.reason for s in result.skipped)


@pytest.mark.parametrize(
    ("policy", "day62"),
    [("final_then_close", {("closeout", "close")}), ("close_now", set())],
)
def test_first_seen_after_final_day(
    mapping: LoadedMapping, policy: str, day62: set[tuple[str, str]]
) -> None:
    seen = walk(mapping, 61, 62, late_policy=policy)
    if policy == "final_then_close":
        assert seen[61] == {("final", "create_task"), ("final-log", "update")}
    else:
        assert seen[61] == {("closeout", "close")}
    assert seen[62] == day62


def test_notes_are_appended_never_overwritten(mapping: LoadedMapping) -> None:
    org = {OPP: opp(NextStep="Customer asked for invoice copy")}
    result = evaluate(org, day(31), mapping)
    (log,) = [a for a in result.actions if not isinstance(a, CreateTask)]
    assert not isinstance(log, CloseRecord)
    assert log.values()["NextStep"].startswith("Customer asked for invoice copy\n2026-10-24 ")


def test_missing_log_line_is_written_once(mapping: LoadedMapping) -> None:
    org = {OPP: opp()}
    walk(mapping, 31, 31, org)
    org[OPP]["NextStep"] = None  # the task was created but the log never landed
    result = evaluate(org, day(32), mapping)
    assert steps(result.actions) == {("initial-log", "update")}


# -- what doctor checks ----------------------------------------------------------------------


def test_doctor_declarations(mapping: LoadedMapping) -> None:
    settings = mapping.rules["payment_followup"]
    assert settings.writes() == {
        "Opportunity": {"NextStep", "Payment_Status__c", "Closed_Reason__c"}
    }
    assert settings.picklist_values() == {
        ("Opportunity", "Type"): {"Payment"},
        ("Opportunity", "StageName"): {"Closed Won"},
        ("Opportunity", "Payment_Status__c"): {"Resolved", "Closed"},
        ("Opportunity", "Closed_Reason__c"): {"No Response"},
        ("Task", "Type"): {"Customer Response"},
    }
    # only picklists: NextStep (text) and Customer_Responded__c (checkbox) are not listed
    assert all(is_picklist(*key) for key in settings.picklist_values())


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    """Every field the rule updates is declared (and nothing more), and every picklist value
    it writes is declared: the declarations cannot drift from the behaviour."""
    settings = mapping.rules["payment_followup"]
    seen = walk_demo("payment_followup", mapping, days=100)
    assert seen.updates > 0
    assert seen.writes == settings.writes()
    assert seen.values  # the close-out sets Payment_Status__c and Closed_Reason__c
    assert undeclared(seen, settings.picklist_values(), mapping) == {}


def test_only_the_steps_the_mapping_lists_let_assignment_rules_run(
    mapping: LoadedMapping,
) -> None:
    default = evaluate({OPP: opp()}, day(60), mapping)
    assert not any(a.auto_assign for a in default.actions)
    opted = evaluate({OPP: opp()}, day(60), mapping, assignment_rule_steps=("final",))
    assert {a.key.split(":")[1]: a.auto_assign for a in opted.actions} == {
        "final": True,
        "final-log": False,
    }
