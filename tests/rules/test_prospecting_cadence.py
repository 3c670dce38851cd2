"""SOP 004 Stage 1 outreach sequence: one step per business day of the sequence, planned on
its day (never twice, whatever the reruns), only the latest after missed runs, and ended by
a reply, a meeting or a stage change, which closes the sequence's open Tasks."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from worker.actions import Action, CreateTask, SendEmail, UpdateRecord
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping, OrgMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule

from .declared import undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "prospecting_cadence")
OPP = "006Dm1639000001AAA"
CONTACT = "003Dm1639000001AAA"
REP = "005Dm1600000001000"
ENTERED = dt.date(2026, 11, 20)  # a Friday: a weekend and Thanksgiving (Nov 26) follow
KEY_FIELD = "SOP_Worker_Key__c"


def stamp(day: dt.date, hour: int = 15) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00.000+0000"


def new_org(**fields: Any) -> dict[str, dict[str, Any]]:
    return {
        OPP: {
            "attributes": {"type": "Opportunity"},
            "Id": OPP,
            "Name": "Kramerica - Oil bladder line",
            "Type": "New Business",
            "StageName": "Prospecting",
            "IsClosed": False,
            "Account": {"Name": "Kramerica"},
            "OwnerId": REP,
            "CreatedDate": stamp(ENTERED),
            "SystemModstamp": stamp(ENTERED),
            **fields,
        },
        CONTACT: {
            "attributes": {"type": "Contact"},
            "Id": CONTACT,
            "FirstName": "Cosmo",
            "Name": "Cosmo Kramer",
            "Email": "cosmo@kramerica.example.com",
            "Phone": "(212) 555-0142",
            "SystemModstamp": stamp(ENTERED),
        },
        "00KDm1639000001AAA": {
            "attributes": {"type": "OpportunityContactRole"},
            "Id": "00KDm1639000001AAA",
            "OpportunityId": OPP,
            "ContactId": CONTACT,
            "IsPrimary": True,
            "CreatedDate": stamp(ENTERED),
            "SystemModstamp": stamp(ENTERED),
        },
    }


def evaluate(
    org: dict[str, dict[str, Any]], day: dt.date, common: OrgMapping, m: LoadedMapping
) -> Evaluation:
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    found = list(evaluate_rule(RULE, snapshot, day, m.rules["prospecting_cadence"], common))
    assert len(found) <= 1
    return (
        found[0]
        if found
        else Evaluation(
            RULE.id, Record.from_json(org[OPP]).ref(), Verdict.EXCLUDED, "not a candidate"
        )
    )


def run(
    org: dict[str, dict[str, Any]], day: dt.date, m: LoadedMapping, common: OrgMapping | None = None
) -> Evaluation:
    """One cycle: evaluate, then apply what it planned as the org would."""
    result = evaluate(org, day, common or m.common, m)
    now = dt.datetime.combine(day, dt.time(16), dt.UTC)
    apply_actions(org, result.actions, now, KEY_FIELD)
    return result


def steps(actions: tuple[Action, ...]) -> set[str]:
    return {a.key.split(":")[1].rsplit("-", 3)[0] for a in actions}


def with_email(common: OrgMapping, enabled: bool) -> OrgMapping:
    return dataclasses.replace(
        common, org=common.org.model_copy(update={"email_action_enabled": enabled})
    )


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def test_day_by_day_table_over_a_weekend_and_a_holiday(mapping: LoadedMapping) -> None:
    org = new_org()
    table: dict[dt.date, set[str]] = {}
    keys: list[str] = []
    for day in days(ENTERED, dt.date(2026, 12, 3)):
        first = run(org, day, mapping)
        assert all(isinstance(a, CreateTask) and a.due == day for a in first.actions)
        table[day] = steps(first.actions)
        keys.extend(a.key for a in first.actions)
        rerun = run(org, day, mapping)  # a second run the same day plans nothing more
        assert rerun.actions == ()
    d = dt.date
    assert table == {
        d(2026, 11, 20): {"personal_email", "linkedin"},  # Day 1 (Friday)
        d(2026, 11, 21): set(),  # Saturday
        d(2026, 11, 22): set(),  # Sunday
        d(2026, 11, 23): {"call_1"},  # Day 2
        d(2026, 11, 24): {"followup_email"},  # Day 3
        d(2026, 11, 25): set(),  # Day 4
        d(2026, 11, 26): set(),  # Thanksgiving: no business day
        d(2026, 11, 27): {"call_2"},  # Day 5
        d(2026, 11, 28): set(),
        d(2026, 11, 29): set(),
        d(2026, 11, 30): set(),  # Day 6
        d(2026, 12, 1): {"breakup"},  # Day 7: a Task, the demo mapping's email action is off
        d(2026, 12, 2): set(),
        d(2026, 12, 3): set(),
    }
    assert len(keys) == len(set(keys)) == 6
    assert all(
        k.startswith("prospecting_cadence:") and k.endswith(f"-2026-11-20:{OPP}") for k in keys
    )
    tasks = {t[KEY_FIELD].split(":")[1]: t for t in org.values() if t.get(KEY_FIELD)}
    assert tasks["call_1-2026-11-20"]["Type"] == "Call"
    assert "+1 212-555-0142" in tasks["call_1-2026-11-20"]["Description"]
    assert tasks["personal_email-2026-11-20"]["Type"] == "Email"
    assert "Hi Cosmo," in tasks["personal_email-2026-11-20"]["Description"]
    assert tasks["linkedin-2026-11-20"]["WhoId"] == CONTACT
    assert tasks["breakup-2026-11-20"]["Subject"] == "Send: Should I close your file, Cosmo?"
    assert evaluate(org, dt.date(2026, 12, 3), mapping.common, mapping).verdict is Verdict.DONE


def test_missed_runs_plan_only_the_latest_step_due(mapping: LoadedMapping) -> None:
    org = new_org()
    late = run(org, dt.date(2026, 11, 25), mapping)  # first seen on Day 4
    assert steps(late.actions) == {"followup_email"}
    (task,) = late.actions
    assert isinstance(task, CreateTask)
    assert task.due == dt.date(2026, 11, 24)  # its own day
    assert {s.step.split(": ")[1] for s in late.skipped} == {
        "Day 1 personalized email",
        "Day 1 LinkedIn connection",
        "Day 2 phone call attempt #1",
    }
    assert (late.next_due, late.next_step) == (
        dt.date(2026, 11, 27),
        "Stage 1 Prospecting, outreach sequence: Day 5 phone call attempt #2",
    )
    assert steps(run(org, dt.date(2026, 11, 27), mapping).actions) == {"call_2"}
    # Seen again only long after Day 7 (2026-12-01): too late for the breakup email.
    stale = evaluate(org, dt.date(2026, 12, 8), mapping.common, mapping)
    assert (stale.verdict, stale.actions) == (Verdict.DONE, ())
    assert [s.step.split(": ")[1] for s in stale.skipped] == ["Day 7 breakup email"]
    assert "too late" in stale.skipped[0].reason


def closes(result: Evaluation) -> dict[str, str]:
    out = {}
    for action in result.actions:
        assert isinstance(action, UpdateRecord)
        values = action.values()
        assert values["Status"] == "Completed"
        out[action.target.id] = values["Description"]
    return out


def open_cadence_tasks(org: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(
        str(t[KEY_FIELD]).split(":")[1]
        for t in org.values()
        if str(t.get(KEY_FIELD) or "").startswith("prospecting_cadence:")
        and t["Status"] != "Completed"
    )


def test_a_reply_ends_the_cadence_and_closes_its_open_tasks(mapping: LoadedMapping) -> None:
    org = new_org()
    for day in days(ENTERED, dt.date(2026, 11, 23)):
        run(org, day, mapping)
    assert open_cadence_tasks(org) == [
        "call_1-2026-11-20",
        "linkedin-2026-11-20",
        "personal_email-2026-11-20",
    ]
    reply = {
        "attributes": {"type": "Task"},
        "Id": "00TDm1639000001AAA",
        "WhoId": CONTACT,  # logged on the contact, not the opportunity
        "Subject": "Re: oil bladders",
        "Type": "Inbound Email",
        "Status": "Completed",
        "IsClosed": True,
        "ActivityDate": "2026-11-23",
        "SystemModstamp": stamp(dt.date(2026, 11, 23), 20),
    }
    # A reply logged before the opportunity entered Prospecting is no reply to the sequence.
    org[reply["Id"]] = {**reply, "ActivityDate": "2026-11-19"}
    assert steps(evaluate(org, dt.date(2026, 11, 24), mapping.common, mapping).actions) == {
        "followup_email"
    }
    org[reply["Id"]] = reply
    ended = run(org, dt.date(2026, 11, 24), mapping)
    assert ended.verdict is Verdict.ACT  # closing the open Tasks
    assert "reply logged on 2026-11-23 ('Re: oil bladders')" in ended.why
    notes = closes(ended)
    assert len(notes) == 3
    assert all(
        "the prospecting sequence ended (reply logged on 2026-11-23" in n for n in notes.values()
    )
    assert open_cadence_tasks(org) == []
    for day in days(dt.date(2026, 11, 25), dt.date(2026, 12, 2)):
        assert run(org, day, mapping).actions == ()


def test_a_meeting_booked_ends_the_cadence(mapping: LoadedMapping) -> None:
    org = new_org()
    run(org, ENTERED, mapping)
    event = {
        "attributes": {"type": "Event"},
        "Id": "00UDm1639000001AAA",
        "WhatId": OPP,
        "Subject": "Discovery call",
        "CreatedDate": stamp(ENTERED, 12),  # before the opportunity entered Prospecting
        "SystemModstamp": stamp(ENTERED, 12),
    }
    org[event["Id"]] = event
    assert steps(evaluate(org, dt.date(2026, 11, 23), mapping.common, mapping).actions) == {
        "call_1"
    }
    org[event["Id"]] = {**event, "CreatedDate": stamp(ENTERED, 18)}
    ended = run(org, dt.date(2026, 11, 23), mapping)
    assert ended.verdict is Verdict.ACT  # closing the open Tasks
    assert "meeting booked on 2026-11-20 ('Discovery call')" in ended.why
    assert len(closes(ended)) == 2
    assert open_cadence_tasks(org) == []


def test_a_stage_change_ends_the_cadence_and_a_new_stay_starts_anew(mapping: LoadedMapping) -> None:
    org = new_org()
    run(org, ENTERED, mapping)
    run(org, dt.date(2026, 11, 23), mapping)
    org[OPP]["StageName"] = "Needs Analysis"
    ended = run(org, dt.date(2026, 11, 24), mapping)
    assert ended.verdict is Verdict.ACT  # closing the open Tasks
    notes = closes(ended)
    assert len(notes) == 3
    assert all("left Prospecting (StageName='Needs Analysis')" in n for n in notes.values())
    # Nothing open any more: not a candidate.
    assert evaluate(org, dt.date(2026, 11, 25), mapping.common, mapping).verdict is Verdict.EXCLUDED
    # Moved back to Prospecting on Dec 2: a new sequence from that day, by its history.
    org[OPP]["StageName"] = "Prospecting"
    for n, (stage, day) in enumerate(
        [
            ("Prospecting", ENTERED),
            ("Needs Analysis", dt.date(2026, 11, 24)),
            ("Prospecting", dt.date(2026, 12, 2)),
        ]
    ):
        row_id = f"008Dm163900000{n}AAA"
        org[row_id] = {
            "attributes": {"type": "OpportunityHistory"},
            "Id": row_id,
            "OpportunityId": OPP,
            "StageName": stage,
            "CreatedDate": stamp(day),
            "SystemModstamp": stamp(day),
        }
    again = run(org, dt.date(2026, 12, 2), mapping)
    assert {a.key.split(":")[1] for a in again.actions} == {
        "personal_email-2026-12-02",
        "linkedin-2026-12-02",
    }


def test_the_breakup_email_is_sent_when_the_email_action_is_on(mapping: LoadedMapping) -> None:
    on = with_email(mapping.common, True)
    org = new_org()
    for day in days(ENTERED, dt.date(2026, 11, 30)):
        run(org, day, mapping, on)
    breakup = run(org, dt.date(2026, 12, 1), mapping, on)
    (email,) = breakup.actions
    assert isinstance(email, SendEmail)
    assert email.to_address == "cosmo@kramerica.example.com"
    assert email.subject == "Should I close your file, Cosmo?"
    assert email.log_on_id == OPP
    assert email.key == f"prospecting_cadence:breakup-2026-11-20:{OPP}"
    # Logged on the opportunity, it is found again: never sent twice.
    assert run(org, dt.date(2026, 12, 1), mapping, on).actions == ()
    assert run(org, dt.date(2026, 12, 2), mapping, on).actions == ()
    # Off: a Task for the rep holding the email.
    off = new_org()
    for day in days(ENTERED, dt.date(2026, 11, 30)):
        run(off, day, mapping, with_email(mapping.common, False))
    (task,) = run(off, dt.date(2026, 12, 1), mapping, with_email(mapping.common, False)).actions
    assert isinstance(task, CreateTask)
    assert task.subject == "Send: Should I close your file, Cosmo?"
    assert task.description.startswith("To: cosmo@kramerica.example.com")
    assert "the email action is off" in task.reason


def test_an_opportunity_without_a_contact_is_said(mapping: LoadedMapping) -> None:
    org = new_org()
    del org["00KDm1639000001AAA"]
    result = evaluate(org, ENTERED, mapping.common, mapping)
    assert result.verdict is Verdict.ERROR
    assert "no contact to reach: add a contact role" in result.why


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    settings = mapping.rules["prospecting_cadence"]
    seen = walk_demo("prospecting_cadence", mapping, days=10)
    # Updates are the cadence's own Tasks, completed on exit: the standard fields declared.
    assert seen.writes == {"Task": {"Status", "Description"}}
    assert set(type(settings).updates["Task"]) == seen.writes["Task"]
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
