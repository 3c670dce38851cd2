"""SOP 001 rule (collections): day-by-day walks for both segments, exits, episodes, catch-up,
reruns, malformed records, the mapping section and the demo org."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.actions import Action, CreateTask, SendEmail, UpdateRecord
from worker.errors import MappingError
from worker.keys import key_marker
from worker.localorg import apply_actions, iter_raw_records, read_manifest
from worker.mapping import LoadedMapping, OrgMapping, load_mapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule, rule_models
from worker.rules.collections import STEPS, CollectionsSettings

from .declared import is_picklist, undeclared, walk_demo

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "fixtures" / "demo-org"
RULE = next(r for r in ALL_RULES if r.id == "collections")
ACC = "001TstC000000001AAA"
CON = "003TstC000000001AAA"
CORE_CSM = "005DmU000000003AAA"  # Dana Whitfield, Core CSM
DIGITAL_CSM = "005DmU000000005AAA"  # Jennifer Simon, Digital CSM
NOT_A_CSM = "005DmU000000009AAA"  # Aisha Khan, Account Servicing Agent
DUE = dt.date(2026, 7, 26)  # day 120 is the demo as-of date, 2026-11-23
KEY_FIELD = "SOP_Worker_Key__c"
_KEY = re.compile(r"^collections:([a-z0-9_]+)-(\d{4}-\d{2}-\d{2}):")

Org = dict[str, dict[str, Any]]
Seen = set[tuple[str, str]]


def day(n: int, start: dt.date = DUE) -> dt.date:
    return start + dt.timedelta(days=n)


def users() -> Org:
    body = json.loads((DEMO / "records" / "users.json").read_text(encoding="utf-8"))
    return {u["Id"]: u for u in body["records"]}


def account(**fields: Any) -> dict[str, Any]:
    base = {
        "attributes": {"type": "Account"},
        "Id": ACC,
        "Name": "Acme Health",
        "OwnerId": CORE_CSM,
        "Primary_Contact__c": CON,
        "Oldest_Unpaid_Due_Date__c": DUE.isoformat(),
        "Days_Past_Due__c": None,
        "Overdue_Amount__c": 4200.5,
        "Customer_Segment__c": None,
        "Case_Notes__c": None,
        "Past_Due_Sequence__c": None,
        "Past_Due_Sequence_Date__c": None,
        "Collections_Status__c": None,
        "Lost_Revenue_Date__c": None,
        "SystemModstamp": "2026-07-01T10:00:00.000+0000",
    }
    return {**base, **fields}


def contact(**fields: Any) -> dict[str, Any]:
    base = {
        "attributes": {"type": "Contact"},
        "Id": CON,
        "FirstName": "Ada",
        "LastName": "Park",
        "Name": "Ada Park",
        "Email": "ada.park@acme.example.com",
        "AccountId": ACC,
        "SystemModstamp": "2026-07-01T10:00:00.000+0000",
    }
    return {**base, **fields}


def make_org(**fields: Any) -> Org:
    return {**users(), ACC: account(**fields), CON: contact()}


def reply_task(on: str, when: dt.date, task_type: str = "Customer Response") -> dict[str, Any]:
    return {
        "attributes": {"type": "Task"},
        "Id": f"00TTstR{when:%m%d}00001AAA",
        "WhatId": ACC if on == "account" else None,
        "WhoId": CON,
        "Type": task_type,
        "Subject": "Re: your account is past due",
        "Status": "Completed",
        "IsClosed": True,
        "ActivityDate": when.isoformat(),
        "CreatedDate": f"{when.isoformat()}T18:00:00.000+0000",
        "SystemModstamp": f"{when.isoformat()}T18:00:00.000+0000",
    }


def with_email(common: OrgMapping, enabled: bool = True) -> OrgMapping:
    return dataclasses.replace(
        common, org=common.org.model_copy(update={"email_action_enabled": enabled})
    )


def settings_of(mapping: LoadedMapping, **overrides: Any) -> CollectionsSettings:
    settings = mapping.rules["collections"]
    assert isinstance(settings, CollectionsSettings)
    return settings.model_copy(update=overrides)


def evaluate(
    org: Org, today: dt.date, settings: CollectionsSettings, common: OrgMapping
) -> Evaluation | None:
    snapshot = Snapshot.build(Record.from_json(r) for r in org.values())
    found = [
        e
        for e in evaluate_rule(RULE, snapshot, today, settings, common)
        if e.target.id == ACC or e.target.sobject == "Task"
    ]
    assert len(found) <= 1
    return found[0] if found else None


def evaluated(
    org: Org, today: dt.date, settings: CollectionsSettings, common: OrgMapping
) -> Evaluation:
    result = evaluate(org, today, settings, common)
    assert result is not None, "not a candidate"
    return result


def step_of(action: Action) -> str:
    match = _KEY.match(action.key)
    assert match, action.key
    return match.group(1)


def steps(actions: tuple[Action, ...]) -> Seen:
    return {(step_of(a), a.kind.value) for a in actions}


def walk(
    org: Org,
    days: range,
    settings: CollectionsSettings,
    common: OrgMapping,
    start: dt.date = DUE,
    before: Callable[[int, Org], None] | None = None,
) -> dict[int, Seen]:
    """Run the rule every day, applying what it plans; a rerun of each day plans nothing."""
    seen: dict[int, Seen] = {}
    for n in days:
        today = day(n, start)
        if before:
            before(n, org)
        result = evaluate(org, today, settings, common)
        actions = result.actions if result else ()
        assert result is None or result.verdict is not Verdict.ERROR, result.why
        updates = [a.target.id for a in actions if isinstance(a, UpdateRecord)]
        assert len(updates) == len(set(updates)), f"day {n}: two updates of one record"
        seen[n] = steps(actions)
        now = dt.datetime.combine(today, dt.time(12), dt.UTC)
        results = apply_actions(org, actions, now, KEY_FIELD)
        assert all(r.outcome.value == "applied" for r in results)
        rerun = evaluate(org, today, settings, common)
        assert rerun is None or rerun.actions == (), f"rerun of day {n}: {steps(rerun.actions)}"
    return seen


def expect(**by_day: Seen) -> Callable[[range], dict[int, Seen]]:
    def table(days: range) -> dict[int, Seen]:
        out: dict[int, Seen] = {n: set() for n in days}
        for name, value in by_day.items():
            n = int(name[1:])
            if n in out:
                out[n] = value
        return out

    return table


def notes(step: str) -> Seen:
    return {(step, "create_task"), ("case_notes", "update")}


def emailed(step: str) -> Seen:
    return {(step, "send_email"), ("case_notes", "update")}


CORE_TASKS = expect(
    d10=notes("first_reminder"),
    d40=notes("second_reminder"),
    d60=notes("email1"),
    d67=notes("email2"),
    d80=notes("winback"),
    d90=notes("final_notice"),
    d100=notes("suspension"),
    d120={("lost_revenue_task", "create_task"), ("lost_revenue", "update")},
)
CORE_EMAILS = expect(
    d10=notes("first_reminder"),
    d40=notes("second_reminder"),
    d60=emailed("email1"),
    d67=emailed("email2"),
    d80=emailed("winback"),
    d90=notes("final_notice"),
    d100=notes("suspension"),
    d120={("lost_revenue_task", "create_task"), ("lost_revenue", "update")},
)
DIGITAL_TASKS = expect(
    d10={("digital_enrollment", "update")},
    d60=notes("email1"),
    d67=notes("email2"),
    d80=notes("winback"),
    d120={("lost_revenue", "update")},
)
DIGITAL_EMAILS = expect(
    d10={("digital_enrollment", "update")},
    d60=emailed("email1"),
    d67=emailed("email2"),
    d80=emailed("winback"),
    d120={("lost_revenue", "update")},
)


# -- the cadence, one day at a time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "email_enabled", "table"),
    [
        (CORE_CSM, False, CORE_TASKS),
        (CORE_CSM, True, CORE_EMAILS),
        (DIGITAL_CSM, False, DIGITAL_TASKS),
        (DIGITAL_CSM, True, DIGITAL_EMAILS),
    ],
    ids=["core-email-tasks", "core-email-action", "digital-email-tasks", "digital-email-action"],
)
def test_walk_day_0_to_125(
    mapping: LoadedMapping,
    owner: str,
    email_enabled: bool,
    table: Callable[[range], dict[int, Seen]],
) -> None:
    org = make_org(OwnerId=owner)
    days = range(0, 126)
    seen = walk(org, days, settings_of(mapping), with_email(mapping.common, email_enabled))
    assert seen == table(days)


def test_walk_with_days_past_due_field(mapping: LoadedMapping) -> None:
    """The days-past-due source gives the same cadence, also when the figure lags a day."""
    settings = settings_of(mapping, overdue_source="days_field")
    org = make_org(Oldest_Unpaid_Due_Date__c=None, Days_Past_Due__c=0)

    def finance_sync(n: int, org: Org) -> None:
        # the sync misses a day now and then: the figure stays at yesterday's value
        if n % 7 != 3:
            org[ACC]["Days_Past_Due__c"] = n

    days = range(0, 126)
    seen = walk(org, days, settings, mapping.common, before=finance_sync)
    expected = CORE_TASKS(days)
    # a lagging figure shifts a step to the day after, and only that
    for n in (10, 40, 60, 67, 80, 90, 100, 120):
        if n % 7 == 3:
            expected[n + 1], expected[n] = expected[n], set()
    assert seen == expected
    keys = {
        t[KEY_FIELD] for t in org.values() if t["attributes"]["type"] == "Task" and t.get(KEY_FIELD)
    }
    assert {_KEY.match(k).group(2) for k in keys if _KEY.match(k)} == {DUE.isoformat()}  # type: ignore[union-attr]


def test_tasks_emails_and_notes_carry_the_mapping_texts(mapping: LoadedMapping) -> None:
    org = make_org()
    walk(org, range(0, 121), settings_of(mapping), with_email(mapping.common))
    tasks = {t[KEY_FIELD]: t for t in org.values() if t.get(KEY_FIELD)}
    first = tasks[f"collections:first_reminder-{DUE}:{ACC}"]
    assert (first["OwnerId"], first["WhatId"], first["WhoId"]) == (CORE_CSM, ACC, CON)
    assert (
        "Core/Strategic Accounts Campaign 1-Past Due/Delinquent Accounts Outreach"
        in (first["Description"])
    )
    assert "Team Lead" in first["Description"]
    assert tasks[f"collections:suspension-{DUE}:{ACC}"]["Priority"] == "High"
    emails = [
        t
        for t in org.values()
        if t["attributes"]["type"] == "Task" and "collections:winback" in str(t.get("Description"))
    ]
    (winback,) = emails
    assert winback["WhatId"] == ACC  # logged as activity on the account
    assert "To: ada.park@acme.example.com" in winback["Description"]
    assert "10% off" in winback["Description"]
    assert "$4,200.50" in winback["Description"]
    acc = org[ACC]
    assert acc["Collections_Status__c"] == "Lost Revenue"
    assert acc["Lost_Revenue_Date__c"] == day(120).isoformat()
    lines = acc["Case_Notes__c"].splitlines()
    assert [ln[:10] for ln in lines] == [
        day(n).isoformat() for n in (10, 40, 60, 67, 80, 90, 100, 120, 120)
    ]
    assert "Step 7: Mark as Lost Revenue (120 Days Overdue): Marked as lost revenue" in lines[-2]


def test_email_task_when_the_email_action_is_off(mapping: LoadedMapping) -> None:
    org = make_org(Oldest_Unpaid_Due_Date__c=day(-60).isoformat())
    result = evaluated(org, day(0), settings_of(mapping), with_email(mapping.common, False))
    task = next(a for a in result.actions if isinstance(a, CreateTask))
    assert task.subject.startswith("Send past-due email to Ada Park: Acme Health")
    assert "To: Ada Park <ada.park@acme.example.com>" in task.description
    assert "Hi Ada," in task.description
    assert task.fields["Type"] == "Email"
    assert task.owner_id == CORE_CSM


def test_send_email_action_fields(mapping: LoadedMapping) -> None:
    org = make_org(Oldest_Unpaid_Due_Date__c=day(-67).isoformat())
    result = evaluated(org, day(0), settings_of(mapping), with_email(mapping.common))
    email = next(a for a in result.actions if isinstance(a, SendEmail))
    assert email.to_address == "ada.park@acme.example.com"
    assert email.log_on_id == ACC
    assert email.subject == "Following up: Acme Health past-due balance"
    assert "67 days past due ($4,200.50)" in email.body
    # Signed by the CSM; the key at the end is what the org's log of the email keeps.
    assert email.body.endswith(f"Dana Whitfield\n\n{key_marker(email.key)}")


def logged_email(logged_as: str, key: str, when: dt.date) -> dict[str, Any]:
    """The record emailSimple's logEmailOnSend leaves on the account: a Task, or with
    Enhanced Email an EmailMessage (its Task then carries no body)."""
    body = f"Hi Ada,\n\nBest regards,\nDana Whitfield\n\n{key_marker(key)}"
    stamp = f"{when.isoformat()}T17:00:00.000+0000"
    if logged_as == "Task":
        return {
            "attributes": {"type": "Task"},
            "Id": "00TTstE000000001AAA",
            "WhatId": ACC,
            "Subject": "Email: Following up",
            "Description": f"Additional To: ada.park@acme.example.com\n\nBody:\n{body}",
            "Status": "Completed",
            "IsClosed": True,
            "TaskSubtype": "Email",
            "ActivityDate": when.isoformat(),
            "CreatedDate": stamp,
            "SystemModstamp": stamp,
        }
    return {
        "attributes": {"type": "EmailMessage"},
        "Id": "02sTstE000000001AAA",
        "RelatedToId": ACC,
        "Subject": "Following up",
        "TextBody": body,
        "CreatedDate": stamp,
        "SystemModstamp": stamp,
    }


@pytest.mark.parametrize("logged_as", ["Task", "EmailMessage"])
def test_an_email_the_org_logged_is_not_sent_again(mapping: LoadedMapping, logged_as: str) -> None:
    start = day(-67)
    org = make_org(Oldest_Unpaid_Due_Date__c=start.isoformat())
    sent = logged_email(logged_as, f"collections:email2-{start}:{ACC}", day(0))
    org[sent["Id"]] = sent
    result = evaluate(org, day(0), settings_of(mapping), with_email(mapping.common))
    assert result is not None
    assert (result.verdict, result.actions) == (Verdict.NOT_DUE, ())  # email #2 is done
    assert result.next_due == start + dt.timedelta(days=80)
    assert "Automated Email #3" in (result.next_step or "")


def test_not_due_says_when_and_what(mapping: LoadedMapping) -> None:
    org = make_org(Oldest_Unpaid_Due_Date__c=day(-5).isoformat())
    result = evaluated(org, day(0), settings_of(mapping), mapping.common)
    assert result.verdict is Verdict.NOT_DUE
    assert result.next_due == day(5)
    assert result.next_step == "Step 1: Initial Payment Reminder (10 Days Overdue) - Task #1"
    assert "day 5 overdue (oldest unpaid invoice due 2026-07-21)" in result.why


def test_done_after_the_last_step(mapping: LoadedMapping) -> None:
    org = make_org(OwnerId=DIGITAL_CSM)
    walk(org, range(0, 121), settings_of(mapping), mapping.common)
    result = evaluated(org, day(130), settings_of(mapping), mapping.common)
    assert result.verdict is Verdict.DONE
    assert "every step of the digital cadence is done" in result.why


def test_digital_enrollment_as_a_task(mapping: LoadedMapping) -> None:
    base = settings_of(mapping)
    enroll = base.cadence["digital_enrollment"].model_copy(
        update={
            "action": "task",
            "subject": "Add {account} to {sequence}",
            "body": "Add the POCs of {account} to {sequence}.",
        }
    )
    settings = settings_of(mapping, cadence={**base.cadence, "digital_enrollment": enroll})
    org = make_org(OwnerId=DIGITAL_CSM)
    seen = walk(org, range(0, 12), settings, mapping.common)
    assert seen[10] == notes("digital_enrollment")
    task = next(t for t in org.values() if t.get(KEY_FIELD, "").startswith("collections:"))
    assert task["Subject"] == "Add Acme Health to Digital Accounts Campaign 1- Past Due Accounts"


def test_rerun_from_a_cache_that_missed_the_new_task_notes_nothing_twice(
    mapping: LoadedMapping,
) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    first = evaluated(org, day(120), settings, common)
    now = dt.datetime.combine(day(120), dt.time(12), dt.UTC)
    apply_actions(org, first.actions, now, KEY_FIELD)
    without_tasks = {k: r for k, r in org.items() if r["attributes"]["type"] != "Task"}
    rerun = evaluated(without_tasks, day(120), settings, common)
    (task,) = rerun.actions  # the ledger knows this key; the notes are not appended again
    assert task.key == f"collections:lost_revenue_task-{DUE}:{ACC}"
    assert isinstance(task, CreateTask)


# -- exits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("on", ["contact", "account"])
def test_reply_stops_the_cadence_and_closes_open_tasks(mapping: LoadedMapping, on: str) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    walk(org, range(0, 45), settings, common)
    org["reply"] = reply_task(on, day(44))
    seen = walk(org, range(45, 126), settings, common)
    assert seen[45] == {("exit", "update")}
    assert all(not s for n, s in seen.items() if n != 45)
    cadence_tasks = [t for t in org.values() if t.get(KEY_FIELD)]
    assert len(cadence_tasks) == 2
    for task in cadence_tasks:
        assert task["Status"] == "Completed"
        assert task["Description"].endswith(
            "2026-09-09 Closed by the SOP worker: cadence stopped: main contact replied on "
            "2026-09-08 ('Re: your account is past due')."
        )
    assert "Main POC replied on 2026-09-08" in org[ACC]["Case_Notes__c"].splitlines()[-1]
    result = evaluated(org, day(50), settings, common)
    assert result.verdict is Verdict.DONE


def test_reply_of_an_earlier_episode_or_by_the_worker_does_not_count(
    mapping: LoadedMapping,
) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    org["old-reply"] = reply_task("contact", day(-30))
    own = reply_task("account", day(5))
    own["Id"], own[KEY_FIELD] = "00TTstW000000001AAA", f"collections:other-{DUE}:{ACC}"
    org[own["Id"]] = own
    seen = walk(org, range(0, 41), settings, common)
    assert (seen[10], seen[40]) == (notes("first_reminder"), notes("second_reminder"))


def test_reply_of_another_type_does_not_count(mapping: LoadedMapping) -> None:
    org = make_org()
    org["call"] = reply_task("contact", day(5), task_type="Call")
    seen = walk(org, range(0, 11), settings_of(mapping), mapping.common)
    assert seen[10] == notes("first_reminder")


def test_digital_reply_opts_out_of_the_sequence(mapping: LoadedMapping) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org(OwnerId=DIGITAL_CSM)
    walk(org, range(0, 30), settings, common)
    assert org[ACC]["Past_Due_Sequence__c"] == "Digital Accounts Campaign 1- Past Due Accounts"
    org["reply"] = reply_task("account", day(30), task_type="Inbound Email")
    seen = walk(org, range(30, 126), settings, common)
    assert seen[30] == {("exit", "update")}
    assert not any(s for n, s in seen.items() if n != 30)
    assert org[ACC]["Past_Due_Sequence__c"] is None


@pytest.mark.parametrize(
    ("paid", "afterwards"),
    [
        ({"Overdue_Amount__c": 0}, Verdict.DONE),
        # nothing overdue, nothing open: no longer a candidate at all
        ({"Oldest_Unpaid_Due_Date__c": None, "Overdue_Amount__c": 0}, None),
    ],
)
def test_account_current_closes_open_tasks(
    mapping: LoadedMapping, paid: dict[str, Any], afterwards: Verdict | None
) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    walk(org, range(0, 70), settings, common)
    org[ACC].update(paid)
    seen = walk(org, range(70, 126), settings, common)
    assert seen[70] == {("exit", "update")}
    assert not any(s for n, s in seen.items() if n != 70)
    open_tasks = [t for t in org.values() if t.get(KEY_FIELD) and t["Status"] != "Completed"]
    assert open_tasks == []
    assert org[ACC]["Case_Notes__c"].endswith(
        "Account is current again: cadence ended, 4 open cadence task(s) closed, sequence opt-out."
    )
    closed = next(t for t in org.values() if t.get(KEY_FIELD, "").startswith("collections:email1"))
    assert (
        "Closed by the SOP worker: account is current (Overdue_Amount__c=0)"
        in (closed["Description"])
    )
    result = evaluate(org, day(71), settings, common)
    assert (result.verdict if result else None) is afterwards


def test_current_account_without_history_is_excluded(mapping: LoadedMapping) -> None:
    org = make_org(Oldest_Unpaid_Due_Date__c=day(12).isoformat(), Overdue_Amount__c=0)
    result = evaluated(org, day(0), settings_of(mapping), mapping.common)
    assert result.verdict is Verdict.EXCLUDED
    assert result.why == "excluded because Overdue_Amount__c=0 (account is current)"


def test_healthy_account_is_not_a_candidate(mapping: LoadedMapping) -> None:
    org = make_org(Oldest_Unpaid_Due_Date__c=None, Overdue_Amount__c=0)
    assert evaluate(org, day(0), settings_of(mapping), mapping.common) is None


# -- episodes ------------------------------------------------------------------------------------


def test_second_episode_gets_fresh_keys(mapping: LoadedMapping) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    walk(org, range(0, 62), settings, common)
    org[ACC].update(Oldest_Unpaid_Due_Date__c=None, Overdue_Amount__c=0)
    walk(org, range(62, 64), settings, common)
    second = day(90)
    org[ACC].update(Oldest_Unpaid_Due_Date__c=second.isoformat(), Overdue_Amount__c=990)
    seen = walk(org, range(0, 126), settings, common, start=second)
    assert seen == CORE_TASKS(range(0, 126))
    episodes: dict[str, set[str]] = {}
    for task in org.values():
        match = _KEY.match(task.get(KEY_FIELD) or "")
        if match:
            episodes.setdefault(match.group(2), set()).add(match.group(1))
    assert episodes == {
        DUE.isoformat(): {"first_reminder", "second_reminder", "email1"},
        second.isoformat(): {
            "first_reminder",
            "second_reminder",
            "email1",
            "email2",
            "winback",
            "final_notice",
            "suspension",
            "lost_revenue_task",
        },
    }


def test_unseen_payment_between_episodes_closes_the_old_episode_tasks(
    mapping: LoadedMapping,
) -> None:
    """The account went current and overdue again between two runs."""
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    walk(org, range(0, 45), settings, common)
    second = day(60)
    org[ACC]["Oldest_Unpaid_Due_Date__c"] = second.isoformat()
    result = evaluated(org, day(10, second), settings, common)
    assert result.verdict is Verdict.ACT
    assert steps(result.actions) == {("exit", "update"), *notes("first_reminder")}
    closes = [a for a in result.actions if a.target.sobject == "Task"]
    assert {a.target.name for a in closes} == {
        "Past due 10 days: add Acme Health POCs to the past-due sequence (Task #1)",
        "Past due 40 days: confirm Finance's 2nd reminder to Acme Health (Task #3)",
    }
    task = next(a for a in result.actions if isinstance(a, CreateTask))
    assert task.key == f"collections:first_reminder-{second}:{ACC}"


def test_oldest_invoice_paid_while_newer_overdue_continues_the_episode(
    mapping: LoadedMapping,
) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    walk(org, range(0, 96), settings, common)
    # the oldest invoice is paid; the next one has been overdue for 35 days
    org[ACC]["Oldest_Unpaid_Due_Date__c"] = day(96 - 35).isoformat()
    seen = walk(org, range(96, 126), settings, common)
    assert not any(seen.values())
    result = evaluated(org, day(96), settings, common)
    assert result.verdict is Verdict.NOT_DUE
    assert f"episode started {DUE}" in result.why
    assert result.next_due == day(96 - 35 + 100)


# -- catch-up ------------------------------------------------------------------------------------


def test_first_seen_late_gets_only_the_step_due_now(mapping: LoadedMapping) -> None:
    settings, common = settings_of(mapping), mapping.common
    org = make_org()
    result = evaluated(org, day(95), settings, common)
    assert steps(result.actions) == notes("final_notice")
    assert [s.step for s in result.skipped] == [
        settings.step_label(n)
        for n in ("first_reminder", "second_reminder", "email1", "email2", "winback")
    ]
    assert result.skipped[0].due == day(10)
    assert result.skipped[0].key == f"collections:first_reminder-{DUE}:{ACC}"
    assert result.next_due == day(100)
    seen = walk(org, range(95, 126), settings, common)
    assert seen == expect(
        d95=notes("final_notice"),
        d100=notes("suspension"),
        d120={("lost_revenue_task", "create_task"), ("lost_revenue", "update")},
    )(range(95, 126))
    # skipped steps are never done later, not even on a rerun with catch_up=all
    later = evaluated(org, day(125), settings_of(mapping, catch_up="all"), common)
    assert later.actions == ()


def test_first_seen_after_day_120_gets_both_step_7_parts(mapping: LoadedMapping) -> None:
    result = evaluated(make_org(), day(125), settings_of(mapping), mapping.common)
    assert result is not None
    assert steps(result.actions) == {
        ("lost_revenue_task", "create_task"),
        ("lost_revenue", "update"),
    }
    assert len(result.skipped) == 7


def test_catch_up_all_does_every_missed_step_in_one_go(mapping: LoadedMapping) -> None:
    settings, common = settings_of(mapping, catch_up="all"), mapping.common
    org = make_org()
    seen = walk(org, range(95, 96), settings, common)
    assert seen[95] == {
        ("first_reminder", "create_task"),
        ("second_reminder", "create_task"),
        ("email1", "create_task"),
        ("email2", "create_task"),
        ("winback", "create_task"),
        ("final_notice", "create_task"),
        ("case_notes", "update"),
    }
    assert len(org[ACC]["Case_Notes__c"].splitlines()) == 6


def test_state_comes_from_the_org_not_from_memory(mapping: LoadedMapping) -> None:
    """A fresh snapshot of the org (cache lost) plans nothing that was already done."""
    settings, common = settings_of(mapping), mapping.common
    org = make_org(OwnerId=DIGITAL_CSM)
    walk(org, range(0, 85), settings, common)
    reloaded = json.loads(json.dumps(org))
    for policy in ("latest", "all"):
        result = evaluated(reloaded, day(85), settings_of(mapping, catch_up=policy), common)
        assert result.actions == ()
        assert (result.verdict, result.next_due) == (Verdict.NOT_DUE, day(120))


# -- malformed and out-of-scope records ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"Oldest_Unpaid_Due_Date__c": "2026-02-30"}, "not a date: '2026-02-30'"),
        ({"Oldest_Unpaid_Due_Date__c": None}, "Overdue_Amount__c=4200.5 but no days overdue"),
        ({"Overdue_Amount__c": "lots"}, "not a number: 'lots'"),
        ({"OwnerId": "005TstU000000404AAA"}, "CSM user '005TstU000000404AAA' is not in the cache"),
        ({"Primary_Contact__c": None}, "placeholder {contact_name} has no value"),
    ],
)
def test_malformed_records_are_errors(
    mapping: LoadedMapping, fields: dict[str, Any], why: str
) -> None:
    result = evaluated(make_org(**fields), day(40), settings_of(mapping), mapping.common)
    assert result.verdict is Verdict.ERROR
    assert why in result.why


def test_days_field_must_be_whole_days(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping, overdue_source="days_field")
    org = make_org(Days_Past_Due__c=12.5)
    result = evaluated(org, day(0), settings, mapping.common)
    assert result.verdict is Verdict.ERROR
    assert "expected whole days" in result.why


def test_email_action_needs_the_contact_email(mapping: LoadedMapping) -> None:
    org = make_org()
    org[CON]["Email"] = None
    result = evaluated(org, day(60), settings_of(mapping), with_email(mapping.common))
    assert result.verdict is Verdict.ERROR
    assert "the main point of contact has no email address" in result.why


def test_owner_without_a_csm_role_is_excluded(mapping: LoadedMapping) -> None:
    result = evaluated(make_org(OwnerId=NOT_A_CSM), day(40), settings_of(mapping), mapping.common)
    assert result.verdict is Verdict.EXCLUDED
    assert result.why.startswith(
        "excluded because UserRole.Name='Account Servicing Agent' (CSM Aisha Khan)"
    )


@pytest.mark.parametrize(
    ("segment", "expected"),
    [("Digital CSM", {("digital_enrollment", "update")}), ("Core CSM", notes("first_reminder"))],
)
def test_segment_from_an_account_field(
    mapping: LoadedMapping, segment: str, expected: Seen
) -> None:
    settings = settings_of(mapping, segment_source="account_field")
    org = make_org(OwnerId=NOT_A_CSM, Customer_Segment__c=segment)
    result = evaluated(org, day(10), settings, mapping.common)
    assert steps(result.actions) == expected


# -- the mapping section -------------------------------------------------------------------------


def _mapping_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (ROOT / "mappings" / "default.toml").read_text(encoding="utf-8")
    section = text.index("[rules.collections]")
    assert old in text[section:]
    path = tmp_path / "mapping.toml"
    path.write_text(text[:section] + text[section:].replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ('case_notes_field = "Case_Notes__c"\n', "", "rules.collections.case_notes_field", ""),
        ('catch_up = "latest"', "catch_up = 5", "rules.collections.catch_up", "got 5"),
        (
            'catch_up = "latest"',
            'catch_up = "oldest"',
            "rules.collections.catch_up",
            "'oldest'",
        ),
        ("day = 40\n", 'day = "forty"\n', "rules.collections.cadence.second_reminder.day", ""),
        (
            'steps = ["digital_enrollment", "email1"',
            'steps = ["digital_enrolment", "email1"',
            "rules.collections",
            "segments.digital.steps: unknown step(s) digital_enrolment",
        ),
        (
            'case_note_line = "{date} {label}: {text}"',
            'case_note_line = "{date} {lable}: {text}"',
            "rules.collections.case_note_line",
            "unknown placeholder(s) {lable}",
        ),
        (
            "note = \"Task for {csm_name}: confirm Finance's 2nd",
            "note = \"Task for {csm}: confirm Finance's 2nd",
            "rules.collections.cadence.second_reminder.note",
            "unknown placeholder(s) {csm}",
        ),
        (
            'overdue_source = "due_date_field"\noldest_due_date_field = "Oldest_Unpaid_Due_Date__c"',
            'overdue_source = "due_date_field"',
            "rules.collections",
            "overdue_source='due_date_field' needs oldest_due_date_field",
        ),
        (
            'values = ["Digital CSM"]',
            'values = ["Core CSM"]',
            "rules.collections",
            "'Core CSM' is also in segments.core",
        ),
    ],
)
def test_mapping_errors_name_the_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    with pytest.raises(MappingError) as info:
        load_mapping(_mapping_with(tmp_path, old, new), rule_models())
    problems = [(k, m) for k, m in info.value.problems if k == key]
    assert problems, info.value.problems
    assert any(message in m for _, m in problems)


def test_mapping_lists_every_step_and_reads_the_needed_fields(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping)
    assert set(settings.steps) == set(STEPS)
    needs = settings.needs()
    assert {"Oldest_Unpaid_Due_Date__c", "Past_Due_Sequence__c", "Case_Notes__c"} <= needs[
        "Account"
    ]
    assert needs["User"] == {"Name", "UserRole.Name"}
    assert "Email" in needs["Contact"]
    assert needs["Task"] == {"Type"}


# -- the demo org --------------------------------------------------------------------------------


def _demo() -> tuple[dt.date, list[Evaluation], Org]:
    mapping = load_mapping(ROOT / "mappings" / "default.toml", rule_models())
    raw = {r["Id"]: r for r in iter_raw_records(DEMO)}
    snapshot = Snapshot.build(Record.from_json(r) for r in raw.values())
    as_of = read_manifest(DEMO).as_of
    settings = mapping.rules["collections"]
    assert isinstance(settings, CollectionsSettings)
    return as_of, list(evaluate_rule(RULE, snapshot, as_of, settings, mapping.common)), raw


def test_demo_org_acts_on_every_step() -> None:
    _, evaluations, _ = _demo()
    acted = {step_of(a) for e in evaluations if e.verdict is Verdict.ACT for a in e.actions}
    assert acted == set(STEPS)


def test_demo_org_shows_every_branch() -> None:
    as_of, evaluations, raw = _demo()
    by_name = {e.target.name: e for e in evaluations}
    verdicts = {e.verdict for e in evaluations}
    assert verdicts == {Verdict.ACT, Verdict.NOT_DUE, Verdict.EXCLUDED, Verdict.DONE, Verdict.ERROR}
    assert by_name["Meadowbrook Home Health"].verdict is Verdict.NOT_DUE
    assert by_name["Stonebridge Oncology"].verdict is Verdict.DONE
    assert by_name["Valley Oak Neurology"].verdict is Verdict.EXCLUDED
    assert "not a date: '2026-09-31'" in by_name["Sunrise Women's Health"].why
    assert len(by_name["Ironwood Sports Medicine"].skipped) == 5
    assert "replied on 2026-11-22" in by_name["Redwood Anesthesia Partners"].why
    second = by_name["Clearwater Vision Center"]
    assert {a.key.split(":")[1] for a in second.actions} == {
        "first_reminder-2026-11-13",
        f"case_notes-{as_of}",
    }
    # the demo's earlier days are what the worker would have written: rerunning them is a no-op
    assert any(
        str(r.get(KEY_FIELD, "")).startswith("collections:first_reminder-2026-03-02")
        for r in raw.values()
    )


# -- what doctor checks --------------------------------------------------------------------------


def test_doctor_declarations(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping)
    assert settings.writes() == {
        "Account": {
            "Case_Notes__c",
            "Past_Due_Sequence__c",
            "Past_Due_Sequence_Date__c",
            "Collections_Status__c",
            "Lost_Revenue_Date__c",
        },
        # the cadence's own open Tasks are completed, with a note, on exit
        "Task": {"Status", "Description"},
    }
    values = settings.picklist_values()
    assert values[("Task", "Type")] == {"Customer Response", "Inbound Email"}
    assert values[("Account", "Collections_Status__c")] == {"Lost Revenue"}
    # the segment comes from the CSM's role: Customer_Segment__c is not compared
    assert ("Account", "Customer_Segment__c") not in values
    # a field step may name a text field; doctor checks values only on picklists
    assert {key for key in values if not is_picklist(*key)} == {("Account", "Past_Due_Sequence__c")}


def test_doctor_declarations_follow_the_mapping(mapping: LoadedMapping) -> None:
    settings = settings_of(mapping, segment_source="account_field")
    assert settings.picklist_values()[("Account", "Customer_Segment__c")] == {
        "Core CSM",
        "Strategic CSM",
        "Digital CSM",
    }
    # no segment runs the Digital enrollment: its field is only cleared on exit, undated
    core_only = {"core": settings.segments["core"]}
    settings = settings_of(mapping, segments=core_only)
    account = settings.writes()["Account"]
    assert "Past_Due_Sequence__c" in account
    assert "Past_Due_Sequence_Date__c" not in account


def test_declarations_match_what_the_rule_does_on_the_demo_org(mapping: LoadedMapping) -> None:
    """Every field the rule updates is declared (and nothing more), and every picklist value
    it writes is declared (Task status: the [tasks] section's): they cannot drift."""
    settings = settings_of(mapping)
    seen = walk_demo("collections", mapping, days=130)
    assert seen.updates > 0
    assert seen.writes == settings.writes()
    assert ("Account", "Collections_Status__c") in seen.values
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
