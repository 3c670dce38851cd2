"""SOP 002 rule (home-care stages): every stage walked day by day, attempt counting, the
stop-calling request mid-cadence, monthly touches across month ends, catch-up, reruns, the
demo org and the mapping section's validation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from worker.actions import CloseRecord, ConvertLead, CreateTask, UpdateRecord, make_key
from worker.errors import MappingError
from worker.localorg import apply_actions, iter_raw_records, read_manifest
from worker.mapping import LoadedMapping, load_mapping
from worker.records import Record, Snapshot
from worker.rules import Evaluation, Verdict, evaluate_rule, rule_models
from worker.rules.homecare_stages import RULE, RULE_ID, STEPS, HomecareStagesSettings

from .declared import is_picklist, undeclared, walk_demo

ROOT = Path(__file__).resolve().parents[2]
DEMO_ORG = ROOT / "fixtures" / "demo-org"
MAPPING_FILE = ROOT / "mappings" / "default.toml"

LEAD = "00QTstH000000001AAA"
OPP = "006TstH000000001AAA"
OWNER = "005DmU000000007AAA"
KEY_FIELD = "SOP_Worker_Key__c"

Raw = dict[str, Any]
Org = dict[str, Raw]
Steps = set[tuple[str, str]]


# -- builders ------------------------------------------------------------------------------


def lead(created: str = "2027-03-01T15:00:00.000+0000", **fields: Any) -> Raw:
    return {
        "attributes": {"type": "Lead"},
        "Id": LEAD,
        "Name": "Margaret Olsen",
        "Status": "New Lead",
        "RecordType": {"attributes": {"type": "RecordType"}, "DeveloperName": "Home_Care"},
        "PostalCode": "60614",
        "City": "Chicago",
        "Looking_For_Home_Care__c": False,
        "Financially_Qualified__c": False,
        "Budget__c": None,
        "Closed_Reason__c": None,
        "Closed_Date__c": None,
        "DoNotCall": False,
        "HasOptedOutOfEmail": False,
        "IsConverted": False,
        "OwnerId": OWNER,
        "CreatedDate": created,
        "SystemModstamp": created,
        **fields,
    }


def opp(created: str = "2027-03-01T15:00:00.000+0000", **fields: Any) -> Raw:
    return {
        "attributes": {"type": "Opportunity"},
        "Id": OPP,
        "Name": "Eleanor Vance - Home Care",
        "Type": "Home Care",
        "StageName": "Assessment Pending",
        "CloseDate": "2027-06-30",
        "Requested_Weekly_Hours__c": 20,
        "Loss_Reason__c": None,
        "Assessment_Date_Time__c": None,
        "Do_Not_Call__c": False,
        "OwnerId": OWNER,
        "CreatedDate": created,
        "SystemModstamp": created,
        **fields,
    }


def task(target: str, n: int, day: str, *, done: bool = True, kind: str | None = "Call") -> Raw:
    on_lead = target.startswith("00Q")
    return {
        "attributes": {"type": "Task"},
        "Id": f"00TTstH{n:08d}AAA",
        "Subject": f"logged activity {n}",
        "Status": "Completed" if done else "Not Started",
        "IsClosed": done,
        "ActivityDate": day,
        "CompletedDateTime": f"{day}T17:00:00.000+0000" if done else None,
        "Type": kind,
        "TaskSubtype": kind or "Task",
        "WhoId": target if on_lead else None,
        "WhatId": None if on_lead else target,
        "OwnerId": OWNER,
        "CreatedDate": f"{day}T15:00:00.000+0000",
    }


def org_of(*records: Raw) -> Org:
    return {r["Id"]: dict(r) for r in records}


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# -- running -------------------------------------------------------------------------------


def settings_of(mapping: LoadedMapping, **update: Any) -> HomecareStagesSettings:
    base = mapping.rules[RULE_ID]
    assert isinstance(base, HomecareStagesSettings)
    return base.model_copy(update=update)


def evaluate_all(org: Org, day: dt.date, mapping: LoadedMapping, **update: Any) -> list[Evaluation]:
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    return list(evaluate_rule(RULE, snapshot, day, settings_of(mapping, **update), mapping.common))


def evaluate(
    org: Org, day: dt.date, mapping: LoadedMapping, target: str = LEAD, **update: Any
) -> Evaluation:
    (found,) = [e for e in evaluate_all(org, day, mapping, **update) if e.target.id == target]
    return found


def steps(evaluations: Sequence[Evaluation]) -> Steps:
    return {(a.key.split(":")[1], a.kind.value) for e in evaluations for a in e.actions}


def apply(org: Org, evaluations: Sequence[Evaluation], day: dt.date) -> None:
    actions = [a for e in evaluations for a in e.actions]
    now = dt.datetime.combine(day, dt.time(18, 0), tzinfo=dt.UTC)
    results = apply_actions(org, actions, now, KEY_FIELD)
    assert all(r.outcome.value == "applied" for r in results), results


def complete(org: Org, target: str, step_key: str, day: dt.date) -> None:
    """The owner completes the worker's Task of ``step_key`` on ``day``."""
    key = make_key(RULE_ID, step_key, target)
    (found,) = [r for r in org.values() if r.get(KEY_FIELD) == key]
    found.update(
        Status="Completed",
        IsClosed=True,
        CompletedDateTime=f"{day.isoformat()}T17:00:00.000+0000",
    )


Event = tuple[Any, ...]


def happen(org: Org, target: str, day: dt.date, event: Event) -> None:
    what = event[0]
    if what == "complete":
        complete(org, target, event[1], day)
    elif what == "call":  # a call the owner logged by hand, completed
        n = len(org) + 1
        org[f"00TTstH{n:08d}AAA"] = task(target, n, day.isoformat())
    elif what == "open_call":  # a call planned by hand, still open
        n = len(org) + 1
        org[f"00TTstH{n:08d}AAA"] = task(target, n, day.isoformat(), done=False)
    elif what == "set":
        org[target][event[1]] = event[2]
    else:  # pragma: no cover - a typo in a table
        raise AssertionError(event)


Day = tuple[str, list[Event], Steps]


def walk(mapping: LoadedMapping, org: Org, target: str, days: Sequence[Day], **update: Any) -> None:
    """Each row: events happen, the rule runs, exactly ``expected`` is planned and applied;
    running the same day again plans nothing."""
    for text, events, expected in days:
        day = d(text)
        for event in events:
            happen(org, target, day, event)
        evaluations = evaluate_all(org, day, mapping, **update)
        assert steps(evaluations) == expected, (day, [e.why for e in evaluations])
        apply(org, evaluations, day)
        assert steps(evaluate_all(org, day, mapping, **update)) == set(), f"rerun on {day}"


TASK = "create_task"


# -- leads: New Lead and Contact Attempted -------------------------------------------------

CONTACT_CADENCE: list[Day] = [
    ("2027-02-28", [], set()),  # not arrived yet
    ("2027-03-01", [], {("first_contact", TASK)}),
    ("2027-03-02", [], set()),  # first-contact Task still open
    ("2027-03-03", [("complete", "first_contact"), ("set", "Status", "Contact Attempted")], set()),
    ("2027-03-04", [], set()),
    ("2027-03-05", [], {("followup-2", TASK)}),  # 2 days after attempt 1
    ("2027-03-06", [("complete", "followup-2")], set()),
    ("2027-03-08", [], {("followup-3", TASK)}),
    ("2027-03-08", [("complete", "followup-3")], set()),
    ("2027-03-10", [], {("followup-4", TASK)}),
    ("2027-03-10", [("complete", "followup-4")], set()),
    ("2027-03-12", [], {("followup-5", TASK)}),
    ("2027-03-13", [("complete", "followup-5")], set()),
    ("2027-03-15", [], {("followup-6", TASK)}),  # follow-up 5 of 5
    ("2027-03-16", [("complete", "followup-6")], set()),  # first contact + 5 follow-ups: done
    ("2027-03-17", [], set()),
    ("2027-03-18", [], {("lead_closeout", "close")}),
    ("2027-03-19", [], set()),
    ("2027-04-17", [], set()),
    ("2027-04-18", [], {("reengage-1", TASK)}),  # one month after the close-out
    ("2027-05-17", [("complete", "reengage-1")], set()),
    ("2027-05-18", [], {("reengage-2", TASK)}),
    ("2027-06-18", [], set()),  # touch 2 still open: nothing new
    ("2027-06-19", [("complete", "reengage-2")], {("reengage-3", TASK)}),
]


def test_new_lead_to_reengagement(mapping: LoadedMapping) -> None:
    org = org_of(lead())
    walk(mapping, org, LEAD, CONTACT_CADENCE)
    closed = org[LEAD]
    assert closed["Status"] == "Closed - Not Converted"
    assert closed["Closed_Reason__c"] == "Unable to Contact"
    assert closed["Closed_Date__c"] == "2027-03-18"


def test_human_logged_calls_count_and_stop_calling_mid_cadence(mapping: LoadedMapping) -> None:
    org = org_of(lead(Status="Contact Attempted"))
    walk(
        mapping,
        org,
        LEAD,
        [
            ("2027-03-02", [("call",)], set()),  # logged by hand: attempt 1, no first contact
            ("2027-03-04", [], {("followup-2", TASK)}),
            ("2027-03-05", [("complete", "followup-2"), ("call",)], set()),  # attempts 2, 3
            ("2027-03-07", [], {("followup-4", TASK)}),
            ("2027-03-08", [("complete", "followup-4"), ("set", "DoNotCall", True)], set()),
            ("2027-03-10", [], set()),
            ("2027-04-30", [], set()),
        ],
    )
    result = evaluate(org, d("2027-03-10"), mapping)
    assert result.verdict is Verdict.EXCLUDED
    assert result.why.startswith("excluded because DoNotCall=true")


@pytest.mark.parametrize(
    ("count", "expected_key", "why"),
    [
        # two completed calls count; the open call and the completed plain Task do not
        ("completed", "followup-3", "2 of 6 contact attempts"),
        # "any": the open call counts too
        ("any", "followup-4", "3 of 6 contact attempts"),
    ],
)
def test_attempt_counting(mapping: LoadedMapping, count: str, expected_key: str, why: str) -> None:
    org = org_of(
        lead(Status="Contact Attempted"),
        task(LEAD, 1, "2027-03-02"),
        task(LEAD, 2, "2027-03-03", kind="Email"),
        task(LEAD, 3, "2027-03-04", done=False),
        task(LEAD, 4, "2027-03-04", kind=None),
    )
    result = evaluate(org, d("2027-03-08"), mapping, attempt_count=count)
    assert steps([result]) == {(expected_key, TASK)}
    assert why in result.why


@pytest.mark.parametrize(
    ("attempts", "subject"),
    [
        (1, "Follow-up call 1 of 5: Margaret Olsen"),
        (5, "Follow-up call 5 of 5: Margaret Olsen"),
    ],
)
def test_five_follow_ups_after_the_first_contact(
    mapping: LoadedMapping, attempts: int, subject: str
) -> None:
    """SOP 002: the first contact, then "5 follow ups before closing out"."""
    days = [f"2027-03-{2 * n:02d}" for n in range(1, attempts + 1)]
    org = org_of(
        lead(Status="Contact Attempted"), *(task(LEAD, n, day) for n, day in enumerate(days, 1))
    )
    result = evaluate(org, d(days[-1]) + dt.timedelta(days=2), mapping)
    (action,) = result.actions
    assert isinstance(action, CreateTask)
    assert action.subject == subject
    assert f"Follow-up {subject.split()[2]} of 5 after the first contact" in action.description


def test_open_followup_blocks_and_is_not_an_attempt(mapping: LoadedMapping) -> None:
    org = org_of(lead(Status="Contact Attempted"), task(LEAD, 1, "2027-03-02"))
    walk(
        mapping,
        org,
        LEAD,
        [
            ("2027-03-04", [], {("followup-2", TASK)}),
            ("2027-03-20", [], set()),
        ],
    )
    result = evaluate(org, d("2027-03-20"), mapping)
    assert result.verdict is Verdict.NOT_DUE
    assert "nothing new until it is completed" in result.why


@pytest.mark.parametrize(
    ("as_of", "verdict", "why"),
    [
        ("2026-11-21", Verdict.NOT_DUE, "arrives on 2026-11-22"),
        ("2026-11-22", Verdict.ACT, "arrived today"),
        ("2026-11-25", Verdict.ACT, "arrived on 2026-11-22"),
    ],
)
def test_lead_arrives_in_the_org_time_zone(
    mapping: LoadedMapping, as_of: str, verdict: Verdict, why: str
) -> None:
    # 03:40 UTC on the 23rd is 21:40 on the 22nd in Chicago
    org = org_of(lead(created="2026-11-23T03:40:00.000+0000"))
    result = evaluate(org, d(as_of), mapping)
    assert result.verdict is verdict
    assert why in result.why
    if verdict is Verdict.ACT:
        (action,) = result.actions
        assert isinstance(action, CreateTask)
        assert action.due == d(as_of)
        assert (action.who_id, action.what_id, action.owner_id) == (LEAD, None, OWNER)
        assert action.fields[KEY_FIELD] == make_key(RULE_ID, "first_contact", LEAD)


def test_late_followup_records_skipped_slots(mapping: LoadedMapping) -> None:
    org = org_of(lead(Status="Contact Attempted"), task(LEAD, 1, "2027-03-02"))
    result = evaluate(org, d("2027-03-11"), mapping)
    assert steps([result]) == {("followup-2", TASK)}
    assert [s.due for s in result.skipped] == [d("2027-03-04"), d("2027-03-06"), d("2027-03-08")]


def test_closeout_then_opt_out_stops_reengagement(mapping: LoadedMapping) -> None:
    org = org_of(
        lead(
            Status="Closed - Not Converted",
            Closed_Reason__c="Unable to Contact",
            Closed_Date__c="2027-01-15",
        )
    )
    walk(
        mapping,
        org,
        LEAD,
        [
            ("2027-02-15", [], {("reengage-1", TASK)}),
            (
                "2027-03-01",
                [("complete", "reengage-1"), ("set", "HasOptedOutOfEmail", True)],
                set(),
            ),
            ("2027-03-15", [], set()),
        ],
    )
    result = evaluate(org, d("2027-03-15"), mapping)
    assert result.verdict is Verdict.DONE
    assert "re-engagement stopped: HasOptedOutOfEmail=true" in result.why


# -- monthly touches across month ends -----------------------------------------------------


def act_days(
    mapping: LoadedMapping, org: Org, target: str, start: dt.date, end: dt.date, step: str
) -> list[tuple[dt.date, str]]:
    """Run every day, the owner completing each Task the same day; the days that act."""
    out = []
    day = start
    while day <= end:
        evaluations = evaluate_all(org, day, mapping)
        planned = sorted(k for k, _ in steps(evaluations))
        apply(org, evaluations, day)
        for key in planned:
            assert key.startswith(f"{step}-")
            out.append((day, key))
            complete(org, target, key, day)
        day += dt.timedelta(days=1)
    return out


@pytest.mark.parametrize(
    ("closed", "expected"),
    [
        # leap year: Jan 31 -> Feb 29
        ("2027-12-31", ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"]),
        # non-leap year: Jan 31 -> Feb 28, and back to the 31st after it
        ("2026-12-31", ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30"]),
        ("2027-01-30", ["2027-02-28", "2027-03-30", "2027-04-30", "2027-05-30"]),
    ],
)
def test_reengagement_monthly_across_month_ends(
    mapping: LoadedMapping, closed: str, expected: list[str]
) -> None:
    org = org_of(
        lead(
            Status="Closed - Not Converted",
            Closed_Reason__c="Unable to Contact",
            Closed_Date__c=closed,
        )
    )
    got = act_days(mapping, org, LEAD, d(closed), d(expected[-1]), "reengage")
    assert got == [(d(day), f"reengage-{k}") for k, day in enumerate(expected, 1)]


@pytest.mark.parametrize(
    ("closed", "expected"),
    [
        ("2028-01-10", ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"]),
        ("2027-01-10", ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30"]),
    ],
)
def test_nurture_three_weeks_then_monthly(
    mapping: LoadedMapping, closed: str, expected: list[str]
) -> None:
    org = org_of(
        opp(StageName="Closed Lost", Loss_Reason__c="Below Hourly Minimum", CloseDate=closed)
    )
    got = act_days(mapping, org, OPP, d(closed), d(expected[-1]), "nurture")
    assert got == [(d(day), f"nurture-{k}") for k, day in enumerate(expected, 1)]


def test_catch_up_makes_only_the_touch_due_now(mapping: LoadedMapping) -> None:
    org = org_of(
        lead(
            Status="Closed - Not Converted",
            Closed_Reason__c="Unable to Contact",
            Closed_Date__c="2026-07-31",
        )
    )
    result = evaluate(org, d("2026-11-23"), mapping)
    assert steps([result]) == {("reengage-3", TASK)}
    assert [(s.key, s.due) for s in result.skipped] == [
        (make_key(RULE_ID, "reengage-1", LEAD), d("2026-08-31")),
        (make_key(RULE_ID, "reengage-2", LEAD), d("2026-09-30")),
    ]


# -- qualification, conversion, the budget guard -------------------------------------------

PENDING = "Contact Successful - Pending Qualification"


def test_pending_qualification_to_conversion(mapping: LoadedMapping) -> None:
    org = org_of(lead(Status=PENDING, Looking_For_Home_Care__c=True))
    walk(
        mapping,
        org,
        LEAD,
        [
            ("2027-03-01", [], {("qualify-1", TASK)}),
            ("2027-03-02", [], set()),
            ("2027-03-03", [("complete", "qualify-1")], set()),
            ("2027-03-05", [], set()),
            ("2027-03-06", [], {("qualify-2", TASK)}),
            (
                "2027-03-07",
                [("set", "Financially_Qualified__c", True)],
                {("convert", "convert_lead")},
            ),
            ("2027-03-08", [], set()),
        ],
    )
    assert org[LEAD]["IsConverted"] is True
    assert org[LEAD]["Status"] == "Qualified"
    assert evaluate(org, d("2027-03-08"), mapping).verdict is Verdict.EXCLUDED


def test_conversion_action(mapping: LoadedMapping) -> None:
    org = org_of(
        lead(Status="Qualified", Looking_For_Home_Care__c=True, Financially_Qualified__c=True)
    )
    result = evaluate(org, d("2027-03-02"), mapping)
    (action,) = result.actions
    assert isinstance(action, ConvertLead)
    assert action.converted_status == "Qualified"
    assert action.opportunity_name == "Margaret Olsen - Home Care"
    assert action.owner_id == OWNER
    assert "meets the three criteria" in result.why


def test_conversion_off_gives_the_owner_a_task(mapping: LoadedMapping) -> None:
    org = org_of(lead(Status=PENDING, Looking_For_Home_Care__c=True, Financially_Qualified__c=True))
    walk(
        mapping,
        org,
        LEAD,
        [
            ("2027-03-01", [], {("convert", TASK)}),
            ("2027-03-02", [], set()),
            ("2027-03-09", [("complete", "convert")], set()),
        ],
        convert_enabled=False,
    )
    result = evaluate(org, d("2027-03-09"), mapping, convert_enabled=False)
    assert result.verdict is Verdict.DONE


@pytest.mark.parametrize(
    ("postal", "city", "in_area"),
    [
        ("60614", "Chicago", True),
        (" 60614-2231 ", None, True),  # ZIP+4, padded: 5-digit prefix
        ("46320", "Chicago", True),  # the city is served
        (None, "  OAK   park ", True),  # trimmed, case-insensitive
        ("46320", "Hammond", False),
        ("6061", None, False),
        (None, None, False),
    ],
)
def test_service_area_is_normalised(
    mapping: LoadedMapping, postal: str | None, city: str | None, in_area: bool
) -> None:
    org = org_of(
        lead(
            Status=PENDING,
            PostalCode=postal,
            City=city,
            Looking_For_Home_Care__c=True,
            Financially_Qualified__c=True,
        )
    )
    result = evaluate(org, d("2027-03-02"), mapping)
    expected = {("convert", "convert_lead")} if in_area else {("qualify-1", TASK)}
    assert steps([result]) == expected
    assert ("not in the service area" in result.why) is not in_area


@pytest.mark.parametrize(
    ("budget", "verdict", "expected"),
    [
        (None, Verdict.ACT, {("budget_guard", TASK)}),
        (1800, Verdict.EXCLUDED, set()),
    ],
)
def test_financially_unqualified_needs_a_budget(
    mapping: LoadedMapping, budget: int | None, verdict: Verdict, expected: Steps
) -> None:
    org = org_of(
        lead(
            Status="Closed - Not Converted",
            Closed_Reason__c="Financially Unqualified",
            Closed_Date__c="2027-03-01",
            Budget__c=budget,
            DoNotCall=True,  # an internal flag to the owner, not outreach
        )
    )
    result = evaluate(org, d("2027-03-02"), mapping)
    assert result.verdict is verdict
    assert steps([result]) == expected
    if expected:
        assert "Budget__c is empty" in result.why
        apply(org, [result], d("2027-03-02"))
        later = evaluate(org, d("2027-03-09"), mapping)
        assert later.verdict is Verdict.DONE
        assert later.actions == ()


@pytest.mark.parametrize(
    ("fields", "verdict", "why"),
    [
        ({"IsConverted": True, "Status": "Qualified"}, Verdict.EXCLUDED, "IsConverted=true"),
        (
            {"Status": "Closed - Not Converted", "Closed_Reason__c": "Not Looking for Care"},
            Verdict.EXCLUDED,
            "Closed_Reason__c='Not Looking for Care'",
        ),
        ({"Status": "Working"}, Verdict.EXCLUDED, "Status='Working'"),
        ({"CreatedDate": "2027-02-30T10:00:00.000+0000"}, Verdict.ERROR, "CreatedDate"),
        (
            {"Status": PENDING, "Financially_Qualified__c": "maybe"},
            Verdict.ERROR,
            "Financially_Qualified__c",
        ),
        (
            {"Status": "Closed - Not Converted", "Closed_Reason__c": "Unable to Contact"},
            Verdict.ERROR,
            "Closed_Date__c",
        ),
    ],
)
def test_lead_out_of_cadence(
    mapping: LoadedMapping, fields: dict[str, Any], verdict: Verdict, why: str
) -> None:
    result = evaluate(org_of(lead(**fields)), d("2027-03-02"), mapping)
    assert result.verdict is verdict
    assert why in result.why
    assert result.actions == ()


def test_scope_leaves_other_leads_and_opportunities_alone(mapping: LoadedMapping) -> None:
    org = org_of(
        lead(RecordType={"DeveloperName": "Facility_Staffing"}),
        opp(Type="Payment", StageName="Closed Won"),
    )
    assert evaluate_all(org, d("2027-03-02"), mapping) == []


# -- opportunities -------------------------------------------------------------------------


def test_assessment_pending_to_closeout_and_nurture(mapping: LoadedMapping) -> None:
    org = org_of(opp())
    walk(
        mapping,
        org,
        OPP,
        [
            ("2027-03-07", [], set()),
            ("2027-03-08", [], {("assessment_followup-1", TASK)}),  # 7 days after creation
            ("2027-03-09", [("complete", "assessment_followup-1")], set()),
            ("2027-03-16", [], {("assessment_followup-2", TASK)}),
            ("2027-03-16", [("complete", "assessment_followup-2")], set()),
            ("2027-03-20", [("call",)], set()),  # a call logged by hand is attempt 3
            ("2027-03-27", [], {("assessment_followup-4", TASK)}),
            ("2027-03-27", [("complete", "assessment_followup-4")], set()),
            ("2027-04-03", [], {("assessment_followup-5", TASK)}),
            ("2027-04-03", [("complete", "assessment_followup-5")], set()),
            ("2027-04-04", [], set()),
            ("2027-04-05", [], {("assessment_closeout", "close")}),
            ("2027-04-25", [], set()),
            ("2027-04-26", [], {("nurture-1", TASK)}),  # three weeks out
            ("2027-05-26", [("complete", "nurture-1")], {("nurture-2", TASK)}),
        ],
    )
    assert org[OPP]["StageName"] == "Closed Lost"
    assert org[OPP]["Loss_Reason__c"] == "No Assessment After Follow-Ups"
    assert org[OPP]["CloseDate"] == "2027-04-05"


def test_calls_made_while_a_lead_are_not_assessment_attempts(mapping: LoadedMapping) -> None:
    # five calls logged before the opportunity existed (carried over by the conversion)
    before = [task(OPP, n, f"2027-02-{20 + n:02d}") for n in range(1, 6)]
    result = evaluate(org_of(opp(), *before), d("2027-03-08"), mapping, target=OPP)
    assert steps([result]) == {("assessment_followup-1", TASK)}
    assert "no follow-up attempt yet" in result.why


def test_assessment_date_moves_to_scheduled(mapping: LoadedMapping) -> None:
    org = org_of(opp())
    walk(
        mapping,
        org,
        OPP,
        [
            ("2027-03-08", [], {("assessment_followup-1", TASK)}),
            (
                "2027-03-10",
                [("set", "Assessment_Date_Time__c", "2027-03-15T16:00:00.000+0000")],
                {("schedule", "update")},
            ),
            ("2027-03-30", [], set()),
        ],
    )
    assert org[OPP]["StageName"] == "Assessment Scheduled"
    result = evaluate(org, d("2027-03-30"), mapping, target=OPP)
    assert result.verdict is Verdict.DONE
    assert "2027-03-15 11:00 (America/Chicago)" in result.why


def test_assessment_not_yet_scheduled_stays_pending(mapping: LoadedMapping) -> None:
    result = evaluate(org_of(opp()), d("2027-03-04"), mapping, target=OPP)
    assert result.verdict is Verdict.NOT_DUE
    assert result.next_due == d("2027-03-08")
    assert result.next_step == "Opportunity - Assessment Pending: follow up"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Requested_Weekly_Hours__c": 8}, "Below Hourly Minimum"),
        (
            {"Requested_Weekly_Hours__c": 11.5, "StageName": "Assessment Scheduled"},
            "Below Hourly Minimum",
        ),
        ({"Loss_Reason__c": "Going with Another Company"}, "Going with Another Company"),
        ({"Loss_Reason__c": "Trying Family Care First"}, "Trying Family Care First"),
    ],
)
def test_qualified_but_declined_or_below_minimum_is_closed_to_nurture(
    mapping: LoadedMapping, fields: dict[str, Any], reason: str
) -> None:
    org = org_of(opp(**fields))
    walk(
        mapping,
        org,
        OPP,
        [
            ("2027-03-02", [], {("close_nurture", "close")}),
            ("2027-03-22", [], set()),
            ("2027-03-23", [], {("nurture-1", TASK)}),
            ("2027-04-23", [("complete", "nurture-1")], {("nurture-2", TASK)}),
        ],
    )
    assert (org[OPP]["StageName"], org[OPP]["Loss_Reason__c"], org[OPP]["CloseDate"]) == (
        "Closed Lost",
        reason,
        "2027-03-02",
    )


def test_minimum_hours_met_is_not_closed(mapping: LoadedMapping) -> None:
    result = evaluate(
        org_of(opp(Requested_Weekly_Hours__c=12)), d("2027-03-02"), mapping, target=OPP
    )
    assert result.verdict is Verdict.NOT_DUE


def test_close_action_and_task_placement_on_opportunity(mapping: LoadedMapping) -> None:
    org = org_of(opp(Requested_Weekly_Hours__c=6))
    (close,) = evaluate(org, d("2027-03-02"), mapping, target=OPP).actions
    assert isinstance(close, CloseRecord)
    assert {c.field: c.after for c in close.changes} == {
        "StageName": "Closed Lost",
        "Loss_Reason__c": "Below Hourly Minimum",
        "CloseDate": "2027-03-02",
    }
    assert "Requested_Weekly_Hours__c=6 is below the minimum of 12" in close.reason
    org = org_of(opp())
    (followup,) = evaluate(org, d("2027-03-08"), mapping, target=OPP).actions
    assert isinstance(followup, CreateTask)
    assert (followup.what_id, followup.who_id) == (OPP, None)


def test_opportunity_opt_out(mapping: LoadedMapping) -> None:
    pending = evaluate(org_of(opp(Do_Not_Call__c=True)), d("2027-03-08"), mapping, target=OPP)
    assert pending.verdict is Verdict.EXCLUDED
    org = org_of(
        opp(
            StageName="Closed Lost",
            Loss_Reason__c="Trying Family Care First",
            CloseDate="2027-03-01",
        )
    )
    walk(
        mapping,
        org,
        OPP,
        [
            ("2027-03-22", [], {("nurture-1", TASK)}),
            ("2027-04-01", [("set", "Do_Not_Call__c", True)], set()),
            ("2027-04-22", [], set()),
        ],
    )
    assert evaluate(org, d("2027-04-22"), mapping, target=OPP).verdict is Verdict.DONE


@pytest.mark.parametrize(
    ("fields", "verdict", "why"),
    [
        ({"StageName": "Closed Won"}, Verdict.EXCLUDED, "StageName='Closed Won'"),
        (
            {"StageName": "Closed Lost", "Loss_Reason__c": "Moved to Assisted Living"},
            Verdict.EXCLUDED,
            "Loss_Reason__c='Moved to Assisted Living'",
        ),
        ({"Assessment_Date_Time__c": "next Tuesday"}, Verdict.ERROR, "Assessment_Date_Time__c"),
        ({"Requested_Weekly_Hours__c": "lots"}, Verdict.ERROR, "Requested_Weekly_Hours__c"),
        (
            {
                "StageName": "Closed Lost",
                "Loss_Reason__c": "Below Hourly Minimum",
                "CloseDate": None,
            },
            Verdict.ERROR,
            "CloseDate",
        ),
    ],
)
def test_opportunity_out_of_cadence(
    mapping: LoadedMapping, fields: dict[str, Any], verdict: Verdict, why: str
) -> None:
    result = evaluate(org_of(opp(**fields)), d("2027-03-08"), mapping, target=OPP)
    assert result.verdict is verdict
    assert why in result.why
    assert result.actions == ()


# -- the demo org --------------------------------------------------------------------------


def demo_org() -> tuple[Org, dt.date]:
    org = {r["Id"]: r for r in iter_raw_records(DEMO_ORG)}
    return org, read_manifest(DEMO_ORG).as_of


def test_demo_org_acts_on_every_step(mapping: LoadedMapping) -> None:
    org, as_of = demo_org()
    evaluations = evaluate_all(org, as_of, mapping)
    acted = {a.key.split(":")[1].split("-")[0] for e in evaluations for a in e.actions}
    assert acted == set(STEPS)
    assert {e.verdict for e in evaluations} == set(Verdict)
    assert all(e.target.id[3:6] == "DmH" for e in evaluations), (
        "only this rule's demo records are in scope"
    )
    # every action kind the rule can produce is shown
    kinds = {type(a) for e in evaluations for a in e.actions}
    assert kinds == {CreateTask, CloseRecord, UpdateRecord, ConvertLead}
    apply(org, evaluations, as_of)
    assert steps(evaluate_all(org, as_of, mapping)) == set()


@pytest.mark.parametrize(
    ("name", "verdict"),
    [
        ("Dolores Nguyen", Verdict.NOT_DUE),
        ("George Papadopoulos", Verdict.NOT_DUE),
        ("Raymond Castillo", Verdict.EXCLUDED),
        ("Arthur Jennings", Verdict.DONE),
        ("Irene Kowalski", Verdict.ERROR),
        ("Rose Caldwell", Verdict.EXCLUDED),
        ("Calvin Reyes - Home Care", Verdict.ERROR),
        ("Francis Mendez - Home Care", Verdict.DONE),
    ],
)
def test_demo_org_records(mapping: LoadedMapping, name: str, verdict: Verdict) -> None:
    org, as_of = demo_org()
    (found,) = [e for e in evaluate_all(org, as_of, mapping) if e.target.name == name]
    assert found.verdict is verdict


# -- mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            "max_contact_followups = 5",
            'max_contact_followups = "five"',
            "max_contact_followups",
            "integer",
        ),
        (  # the key before it counted follow-ups only
            "max_contact_followups = 5",
            "max_contact_attempts = 5",
            "max_contact_attempts",
            "replaced by max_contact_followups: the follow-ups after the first contact attempt",
        ),
        (
            "nurture_first_after_days = 21",
            "nurture_first_after_days = -1",
            "nurture_first_after_days",
            "greater than or equal to 0",
        ),
        (
            'attempt_count = "completed"',
            'attempt_count = "some"',
            "attempt_count",
            "'completed' or 'any'",
        ),
        ("convert_enabled = true", "convert_enable = true", "convert_enable", "unknown key"),
        (
            'reengage_reasons = ["Unable to Contact"]',
            'reengage_reasons = ["Other"]',
            "reengage_reasons",
            "must include lead_closeout_reason",
        ),
        (
            '\nfollowup_subject = "',
            '\nfollowup_subject = "{owner} ',
            "followup_subject",
            "unknown placeholder(s) {owner}",
        ),
        (
            'scheduled_stage = "Assessment Scheduled"',
            'scheduled_stage = "Closed Lost"',
            "closed_stage",
            "must all differ",
        ),
        (
            'qualified_statuses = ["Qualified"]',
            'qualified_statuses = ["Contact Attempted"]',
            "lead_closed_status",
            "is in both attempted_statuses and qualified_statuses",
        ),
        (
            'attempt_task_types = ["Call", "Email"]\nattempt_task_subtypes = ["Call", "Email"]',
            "",
            "attempt_task_subtypes",
            "set attempt_task_types",
        ),
    ],
)
def test_mapping_errors_name_the_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    start = text.index(f"[rules.{RULE_ID}]")
    steps_at = text.index(f"[rules.{RULE_ID}.steps]")
    section = text[start:steps_at]
    assert section.count(old) == 1, old
    path = tmp_path / "mapping.toml"
    path.write_text(text[:start] + section.replace(old, new) + text[steps_at:], encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path, rule_models())
    problems = dict(caught.value.problems)
    assert f"rules.{RULE_ID}.{key}" in problems, caught.value.problems
    assert message in problems[f"rules.{RULE_ID}.{key}"]


def test_empty_service_area_is_refused(tmp_path: Path) -> None:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    start = text.index(f"[rules.{RULE_ID}]")
    steps_at = text.index(f"[rules.{RULE_ID}.steps]")
    section = text[start:steps_at]
    section = section.replace(
        'service_area_cities = ["Chicago", "Evanston", "Oak Park", "Skokie"]', ""
    )
    begin = section.index("service_area_postal_codes = [")
    section = section[:begin] + section[section.index("]", begin) + 1 :]
    path = tmp_path / "mapping.toml"
    path.write_text(text[:start] + section + text[steps_at:], encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path, rule_models())
    problems = dict(caught.value.problems)
    assert "the service area is empty" in problems[f"rules.{RULE_ID}.service_area_cities"]


def test_needs_names_the_mapped_fields(mapping: LoadedMapping) -> None:
    needs = settings_of(mapping).needs()
    assert {"Budget__c", "RecordType.DeveloperName", "DoNotCall"} <= needs["Lead"]
    assert {"Assessment_Date_Time__c", "Type", "Do_Not_Call__c"} <= needs["Opportunity"]
    assert "CompletedDateTime" in needs["Task"]


# -- what doctor checks --------------------------------------------------------------------


def test_doctor_declarations(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping)
    assert settings.writes() == {
        "Lead": {"Status", "Closed_Reason__c", "Closed_Date__c"},
        # Type and StageName are also set on a converted lead's new opportunity
        "Opportunity": {"StageName", "Loss_Reason__c", "CloseDate", "Type"},
    }
    assert settings.picklist_values() == {
        ("Lead", "Status"): {
            "New Lead",
            "Contact Attempted",
            "Contact Successful - Pending Qualification",
            "Qualified",
            "Closed - Not Converted",
        },
        ("Lead", "Closed_Reason__c"): {"Unable to Contact", "Financially Unqualified"},
        ("Opportunity", "StageName"): {"Assessment Pending", "Assessment Scheduled", "Closed Lost"},
        ("Opportunity", "Loss_Reason__c"): {
            "Going with Another Company",
            "Trying Family Care First",
            "Below Hourly Minimum",
            "No Assessment After Follow-Ups",
        },
        ("Opportunity", "Type"): {"Home Care"},
        ("Task", "TaskSubtype"): {"Call", "Email"},
    }
    # only picklists: RecordType.DeveloperName (scope), checkboxes and dates are not listed
    assert all(is_picklist(*key) for key in settings.picklist_values())


def test_converted_status_is_declared(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping, converted_status="Closed - Converted")
    assert "Closed - Converted" in settings.picklist_values()[("Lead", "Status")]


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    """Every field the rule updates is declared (and nothing more), and every picklist value
    it writes (the converted status too) is declared: they cannot drift from the behaviour."""
    settings = settings_of(mapping)
    seen = walk_demo(RULE_ID, mapping, days=60)
    assert seen.updates > 0
    assert seen.writes == settings.writes()
    assert ("Lead", "Status") in seen.values
    assert undeclared(seen, settings.picklist_values(), mapping) == {}


@pytest.mark.parametrize(
    ("phone", "shown"),
    [
        ("(312) 555-1037", "Call +1 312-555-1037 today"),
        ("call me", "Call no valid phone number on the lead (Phone='call me') today"),
        (None, "Call no phone number on the lead (Phone is empty) today"),
    ],
)
def test_call_tasks_give_the_number_to_dial(
    mapping: LoadedMapping, phone: str | None, shown: str
) -> None:
    result = evaluate(org_of(lead(Phone=phone)), d("2027-03-01"), mapping)
    (task,) = result.actions
    assert isinstance(task, CreateTask)
    assert shown in " ".join(task.description.split())
