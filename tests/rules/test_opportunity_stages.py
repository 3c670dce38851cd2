"""SOP 004 sales stages: exit criteria of the stages an opportunity moved past, days in stage
from OpportunityHistory, a skipped stage, a move backwards, and a day-by-day table."""

from __future__ import annotations

import datetime as dt
from typing import Any

from worker.actions import CreateTask
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, AsOf, Evaluation, Verdict, evaluate_rule

from .declared import undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "opportunity_stages")
OPP = "006Dm1600000950000"
REP = "005Dm1600000001000"
MANAGER = "005Dm1600000002000"


def stamp(day: dt.date, hour: int = 15) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00.000+0000"


def base_org(created: dt.date = dt.date(2026, 11, 2)) -> dict[str, dict[str, Any]]:
    return {
        OPP: {
            "attributes": {"type": "Opportunity"},
            "Id": OPP,
            "Name": "Initech - Analytics",
            "Type": "New Business",
            "StageName": "Prospecting",
            "IsClosed": False,
            "Pain_Points__c": None,
            "NextStep": None,
            "OwnerId": REP,
            "CreatedDate": stamp(created),
            "SystemModstamp": stamp(created),
        },
        REP: {"attributes": {"type": "User"}, "Id": REP, "ManagerId": MANAGER, "IsActive": True},
        "008Dm1600000950001": history(1, "Prospecting", created),
    }


def history(n: int, stage: str, day: dt.date, hour: int = 15) -> dict[str, Any]:
    return {
        "attributes": {"type": "OpportunityHistory"},
        "Id": f"008Dm16000009500{n:02d}",
        "OpportunityId": OPP,
        "StageName": stage,
        "CreatedDate": stamp(day, hour),
        "SystemModstamp": stamp(day, hour),
    }


def move(org: dict[str, dict[str, Any]], n: int, stage: str, day: dt.date) -> None:
    org[OPP]["StageName"] = stage
    row = history(n, stage, day)
    org[row["Id"]] = row


def evaluate(org: dict[str, dict[str, Any]], day: dt.date, mapping: LoadedMapping) -> Evaluation:
    at = AsOf(dt.datetime.combine(day, dt.time(12), mapping.common.org.zone))
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    settings = mapping.rules["opportunity_stages"]
    (evaluation,) = [
        e for e in evaluate_rule(RULE, snapshot, at, settings, mapping.common) if e.target.id == OPP
    ]
    return evaluation


def run(org: dict[str, dict[str, Any]], day: dt.date, mapping: LoadedMapping) -> Evaluation:
    evaluation = evaluate(org, day, mapping)
    now = dt.datetime.combine(day, dt.time(18), dt.UTC)
    apply_actions(org, evaluation.actions, now, mapping.common.org.task_key_field)
    return evaluation


def step(action: CreateTask) -> str:
    return action.key.split(":")[1]


def test_day_by_day_through_the_stages(mapping: LoadedMapping) -> None:
    """Created in Prospecting on Mon 11-02; a discovery call booked 11-04; Discovery on
    11-12; a champion named 11-16; straight to Proposal on 11-20 (Solution Design skipped);
    back to Discovery on 11-24. Each day runs twice: the second run adds nothing."""
    org = base_org()
    changes = {
        dt.date(2026, 11, 4): lambda: org.update(
            {
                "00UDm1600000950001": {
                    "attributes": {"type": "Event"},
                    "Id": "00UDm1600000950001",
                    "WhatId": OPP,
                    "Type": "Discovery Call",
                    "Subject": "Discovery call",
                    "SystemModstamp": stamp(dt.date(2026, 11, 4)),
                }
            }
        ),
        dt.date(2026, 11, 12): lambda: move(org, 2, "Needs Analysis", dt.date(2026, 11, 12)),
        dt.date(2026, 11, 16): lambda: org.update(
            {
                "00KDm1600000950001": {
                    "attributes": {"type": "OpportunityContactRole"},
                    "Id": "00KDm1600000950001",
                    "OpportunityId": OPP,
                    "Role": "Executive Sponsor",
                    "SystemModstamp": stamp(dt.date(2026, 11, 16)),
                }
            }
        ),
        dt.date(2026, 11, 20): lambda: move(org, 3, "Proposal/Price Quote", dt.date(2026, 11, 20)),
        dt.date(2026, 11, 24): lambda: move(org, 4, "Needs Analysis", dt.date(2026, 11, 24)),
    }
    table: dict[dt.date, set[str]] = {}
    owners: dict[str, str | None] = {}
    day = dt.date(2026, 11, 2)
    while day <= dt.date(2026, 12, 14):
        if day in changes:
            changes[day]()
        first = run(org, day, mapping)
        again = run(org, day, mapping)
        assert again.actions == (), (day, again.actions)
        tasks = [a for a in first.actions if isinstance(a, CreateTask)]
        assert len(tasks) == len(first.actions)
        if tasks:
            table[day] = {step(t) for t in tasks}
            owners.update({step(t): t.owner_id for t in tasks})
        day += dt.timedelta(days=1)

    assert table == {
        dt.date(2026, 11, 9): {"overdue-prospecting-2026-11-02"},  # 7 days: the maximum
        dt.date(2026, 11, 12): {"missing-prospecting"},  # moved on, 2 of 3 criteria missing
        dt.date(2026, 11, 20): {"missing-needs_analysis", "missing-value_proposition"},
        dt.date(2026, 12, 8): {"overdue-needs_analysis-2026-11-24"},  # count restarted 11-24
        dt.date(2026, 12, 11): {"escalate-needs_analysis-2026-11-24"},  # 3 days' grace
    }
    assert owners["escalate-needs_analysis-2026-11-24"] == MANAGER
    assert {k: v for k, v in owners.items() if not k.startswith("escalate")} == dict.fromkeys(
        set(owners) - {"escalate-needs_analysis-2026-11-24"}, REP
    )
    assert org[OPP]["StageName"] == "Needs Analysis"  # never moved back by the worker


def test_the_missing_evidence_is_named_and_the_met_evidence_explained(
    mapping: LoadedMapping,
) -> None:
    org = base_org()
    move(org, 2, "Needs Analysis", dt.date(2026, 11, 10))
    org[OPP]["Pain_Points__c"] = "Manual reporting takes two days a month"
    result = evaluate(org, dt.date(2026, 11, 10), mapping)
    (task,) = result.actions
    assert isinstance(task, CreateTask)
    assert task.subject == "Exit criteria missing: Stage 1: Prospecting on Initech - Analytics"
    assert "without: Discovery call scheduled, Decision maker identified." in task.description
    assert "Stage 1: Prospecting: Discovery call scheduled missing" in result.why
    assert "Initial pain point uncovered (Pain_Points__c set)" in result.why
    assert "in Stage 2: Discovery since 2026-11-10 (0 days, max 14)" in result.why


def test_a_skipped_stage_counts_as_passed(mapping: LoadedMapping) -> None:
    org = base_org()
    move(org, 2, "Proposal/Price Quote", dt.date(2026, 11, 5))
    result = evaluate(org, dt.date(2026, 11, 5), mapping)
    assert {step(a) for a in result.actions if isinstance(a, CreateTask)} == {
        "missing-prospecting",
        "missing-needs_analysis",
        "missing-value_proposition",
    }


def test_history_older_than_what_was_read_leaves_the_days_unknown(
    mapping: LoadedMapping,
) -> None:
    org = base_org()
    del org["008Dm1600000950001"]  # the stage was entered before the history the worker read
    result = evaluate(org, dt.date(2026, 12, 30), mapping)
    assert (result.verdict, result.actions) == (Verdict.NOT_DUE, ())
    assert "days unknown: no OpportunityHistory row for entering 'Prospecting'" in result.why


def test_won_deals_are_checked_for_a_while_closed_lost_never(mapping: LoadedMapping) -> None:
    org = base_org()
    for n, stage in enumerate(
        ("Needs Analysis", "Value Proposition", "Proposal/Price Quote", "Negotiation/Review"), 2
    ):
        move(org, n, stage, dt.date(2026, 11, n))
    move(org, 9, "Closed Won", dt.date(2026, 11, 10))
    org[OPP]["IsClosed"] = True
    won = evaluate(org, dt.date(2026, 11, 12), mapping)
    assert "missing-negotiation_review" in {step(a) for a in won.actions}
    late = evaluate(org, dt.date(2026, 12, 1), mapping)  # won 21 days before
    assert (late.verdict, late.actions) == (Verdict.EXCLUDED, ())
    org[OPP]["StageName"] = "Closed Lost"
    lost = evaluate(org, dt.date(2026, 11, 12), mapping)
    assert (lost.verdict, lost.actions) == (Verdict.EXCLUDED, ())


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    settings = mapping.rules["opportunity_stages"]
    seen = walk_demo("opportunity_stages", mapping, days=30)
    assert seen.writes == {}
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
    needs = settings.needs()
    assert needs["OpportunityHistory"] >= {"OpportunityId", "StageName", "CreatedDate"}
    assert needs["OpportunityContactRole"] >= {"OpportunityId", "Role"}
    assert ("Event", "Type") in settings.picklist_values()
