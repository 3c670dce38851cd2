"""SOP 003, rejected homeowner payments: day-by-day walks over business days, content of
the call Tasks and comments, scope and errors, mapping validation, and the demo org."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.actions import Action, AddCaseComment, CloseRecord, CreateTask, Outcome
from worker.errors import MappingError
from worker.localorg import LocalOrg, apply_actions, iter_raw_records, read_manifest
from worker.mapping import OrgMapping, load_mapping
from worker.ports import ObjectQuery
from worker.records import Record, Snapshot
from worker.rules import rule_models
from worker.rules.base import Evaluation, Verdict, evaluate_rule
from worker.rules.rejected_payments import RULE, STEPS, RejectedPaymentsSettings

from .declared import is_picklist, undeclared, walk_demo

ROOT = Path(__file__).resolve().parents[2]
MAPPING_PATH = ROOT / "mappings" / "default.toml"
DEMO = ROOT / "fixtures" / "demo-org"
MAPPING = load_mapping(MAPPING_PATH, rule_models())
SETTINGS = MAPPING.rules["rejected_payments"]
assert isinstance(SETTINGS, RejectedPaymentsSettings)
ORG = MAPPING.common
KEY_FIELD = ORG.org.task_key_field

CASE_ID = "500DmR900000001AAA"
CONTACT_ID = "003DmR900000001AAA"
OWNER_ID = "005DmU000000009AAA"
D = dt.date
NO_ANSWER = "No Answer - Left Voicemail"
ANSWERED = "Answered - Transferred to Account Servicing"

Org = dict[str, dict[str, Any]]
Event = Callable[[Org, dt.date], None]
Step = tuple[str, str]


# -- helpers ---------------------------------------------------------------------------------
def make_case(created: str = "2026-11-20T15:00:00.000+0000", **fields: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "attributes": {"type": "Case", "url": f"/services/data/v66.0/sobjects/Case/{CASE_ID}"},
        "Id": CASE_ID,
        "CaseNumber": "00099001",
        "Subject": "Homeowner Payment – Maria Gonzalez",
        "Status": "New",
        "Request_Type__c": "Rejected Payments",
        "Rejection_Reason__c": "an incorrect date format on the check",
        "Homeowner_Responded__c": False,
        "OwnerId": OWNER_ID,
        "Owner": {"attributes": {"type": "User"}, "Name": "Aisha Khan"},
        "ContactId": CONTACT_ID,
        "Contact": {"attributes": {"type": "Contact"}, "Name": "Maria Gonzalez"},
        "ContactEmail": "maria.gonzalez@example.net",
        "CreatedDate": created,
        "SystemModstamp": created,
    }
    case.update(fields)
    return case


def new_org(**fields: Any) -> Org:
    case = make_case(**fields)
    return {case["Id"]: case}


def snapshot(org: Org) -> Snapshot:
    return Snapshot.build(Record.from_json(r) for r in org.values())


def evaluate(
    org: Org,
    day: dt.date,
    settings: RejectedPaymentsSettings = SETTINGS,
    common: OrgMapping = ORG,
) -> list[Evaluation]:
    return list(evaluate_rule(RULE, snapshot(org), day, settings, common))


def one(
    org: Org,
    day: dt.date,
    settings: RejectedPaymentsSettings = SETTINGS,
    common: OrgMapping = ORG,
) -> Evaluation:
    (evaluation,) = evaluate(org, day, settings, common)
    return evaluation


def step_of(action: Action) -> Step:
    return (action.key.split(":")[1], action.kind.value)


def apply(org: Org, actions: tuple[Action, ...], day: dt.date) -> None:
    now = dt.datetime(day.year, day.month, day.day, 14, 0, tzinfo=dt.UTC)
    results = apply_actions(org, actions, now, KEY_FIELD)
    assert all(r.outcome == Outcome.APPLIED for r in results), results


def worker_task(org: Org, step_key: str) -> dict[str, Any]:
    key = f"rejected_payments:{step_key}:{CASE_ID}"
    return next(r for r in org.values() if r.get(KEY_FIELD) == key)


def complete(n: int, outcome: str) -> Event:
    """The rep completes attempt n's Task with a call result."""

    def event(org: Org, day: dt.date) -> None:
        worker_task(org, f"attempt-{n}").update(
            Status="Completed", IsClosed=True, CallDisposition=outcome
        )

    return event


def set_case(**fields: Any) -> Event:
    def event(org: Org, day: dt.date) -> None:
        org[CASE_ID].update(fields)

    return event


def customer_reply(org: Org, day: dt.date) -> None:
    """The homeowner's email reply, logged by a person as a Task of the response kind."""
    org["00TDmR900000099AAA"] = {
        "attributes": {"type": "Task"},
        "Id": "00TDmR900000099AAA",
        "Subject": "Email: RE: Your recent Everbright payment",
        "Type": "Customer Response",
        "Status": "Completed",
        "IsClosed": True,
        "ActivityDate": day.isoformat(),
        "WhatId": CASE_ID,
        "CreatedDate": f"{day.isoformat()}T19:00:00.000+0000",
        "SystemModstamp": f"{day.isoformat()}T19:00:00.000+0000",
    }


def a(n: int) -> Step:
    return (f"attempt-{n}", "create_task")


def log(n: int) -> Step:
    return (f"attempt-{n}-log", "case_comment")


EMAIL_TASK: Step = ("email-1", "create_task")
CLOSE: set[Step] = {("close-comment", "case_comment"), ("close", "close")}

# Created Friday 2026-11-20 = business day 0. Weekend 21-22, Thanksgiving 26 (a US holiday),
# weekend 28-29 and 5-6. Business days: 0 11-20, 1 11-23, 2 11-24, 3 11-25, 4 11-27,
# 5 11-30, 6 12-01, 7 12-02, 8 12-03, 9 12-04, 10 12-07, 11 12-08, 12 12-09.
LAST_DAY = D(2026, 12, 9)
NO_ANSWER_WALK: dict[dt.date, set[Step]] = {
    D(2026, 11, 20): {a(1), EMAIL_TASK},
    D(2026, 11, 24): {log(1), a(2)},
    D(2026, 11, 27): {log(2), a(3)},
    D(2026, 12, 1): {log(3), a(4)},
    D(2026, 12, 3): {log(4), a(5)},
    D(2026, 12, 7): {log(5)} | CLOSE,
}


@dataclasses.dataclass(frozen=True)
class Walk:
    first_day: dt.date
    expected: dict[dt.date, set[Step]]
    events: dict[dt.date, list[Event]] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    org: dict[str, Any] = dataclasses.field(default_factory=dict)


WALKS = {
    "no answer, attempts on business days 0 2 4 6 8, closed on day 10": Walk(
        D(2026, 11, 20), NO_ANSWER_WALK
    ),
    "rep records no answer each time: logged the next day, weekends too": Walk(
        D(2026, 11, 20),
        {
            D(2026, 11, 20): {a(1), EMAIL_TASK},
            D(2026, 11, 21): {log(1)},
            D(2026, 11, 24): {a(2)},
            D(2026, 11, 25): {log(2)},
            D(2026, 11, 27): {a(3)},
            D(2026, 11, 28): {log(3)},
            D(2026, 12, 1): {a(4)},
            D(2026, 12, 2): {log(4)},
            D(2026, 12, 3): {a(5)},
            D(2026, 12, 4): {log(5)},
            D(2026, 12, 7): CLOSE,
        },
        events={
            D(2026, 11, 20): [complete(1, NO_ANSWER)],
            D(2026, 11, 24): [complete(2, NO_ANSWER)],
            D(2026, 11, 27): [complete(3, NO_ANSWER)],
            D(2026, 12, 1): [complete(4, NO_ANSWER)],
            D(2026, 12, 3): [complete(5, NO_ANSWER)],
        },
    ),
    "answered on attempt 3: logged, then nothing more": Walk(
        D(2026, 11, 20),
        {
            D(2026, 11, 20): {a(1), EMAIL_TASK},
            D(2026, 11, 24): {log(1), a(2)},
            D(2026, 11, 27): {log(2), a(3)},
            D(2026, 11, 28): {log(3)},
        },
        events={D(2026, 11, 27): [complete(3, ANSWERED)]},
    ),
    "case status marks a response on day 3": Walk(
        D(2026, 11, 20),
        {D(2026, 11, 20): {a(1), EMAIL_TASK}, D(2026, 11, 24): {log(1), a(2)}},
        events={D(2026, 11, 25): [set_case(Status="Homeowner Responded")]},
    ),
    "email reply logged as a response Task on day 7": Walk(
        D(2026, 11, 20),
        {k: v for k, v in NO_ANSWER_WALK.items() if k <= D(2026, 12, 1)},
        events={D(2026, 12, 2): [customer_reply]},
    ),
    "response checkbox ticked on day 8 after attempt 5 was made": Walk(
        D(2026, 11, 20),
        {k: v for k, v in NO_ANSWER_WALK.items() if k <= D(2026, 12, 3)},
        events={D(2026, 12, 3): [set_case(Homeowner_Responded__c=True)]},
    ),
    "no email step in the mapping": Walk(
        D(2026, 11, 20),
        NO_ANSWER_WALK | {D(2026, 11, 20): {a(1)}},
        settings={"email_with_attempts": ()},
    ),
    "email sent by the worker when the org allows it": Walk(
        D(2026, 11, 20),
        NO_ANSWER_WALK | {D(2026, 11, 20): {a(1), ("email-1", "send_email")}},
        org={"email_action_enabled": True},
    ),
    "email with attempts 1 and 5": Walk(
        D(2026, 11, 20),
        NO_ANSWER_WALK | {D(2026, 12, 3): {log(4), a(5), ("email-5", "create_task")}},
        settings={"email_with_attempts": (1, 5)},
    ),
    "denser schedule from the mapping: 5 attempts in 5 business days": Walk(
        D(2026, 11, 20),
        {
            D(2026, 11, 20): {a(1), EMAIL_TASK},
            D(2026, 11, 23): {log(1), a(2)},
            D(2026, 11, 24): {log(2), a(3)},
            D(2026, 11, 25): {log(3), a(4)},
            D(2026, 11, 27): {log(4), a(5)},
            D(2026, 11, 30): {log(5)} | CLOSE,
        },
        settings={"attempt_offsets": (0, 1, 2, 3, 4), "window_business_days": 5},
    ),
    "first seen on business day 6: only attempt 4, then the rest": Walk(
        D(2026, 12, 1),
        {
            D(2026, 12, 1): {a(4)},
            D(2026, 12, 3): {log(4), a(5)},
            D(2026, 12, 7): {log(5)} | CLOSE,
        },
    ),
    "first seen after the window: attempt 5, closed the next business day": Walk(
        D(2026, 12, 8),
        {D(2026, 12, 8): {a(5)}, D(2026, 12, 9): {log(5)} | CLOSE},
    ),
}


@pytest.mark.parametrize("walk", WALKS.values(), ids=WALKS.keys())
def test_day_by_day(walk: Walk) -> None:
    settings = SETTINGS.model_copy(update=walk.settings)
    common = dataclasses.replace(ORG, org=ORG.org.model_copy(update=walk.org))
    org = new_org()
    day = walk.first_day
    seen: dict[dt.date, set[Step]] = {}
    while day <= LAST_DAY:
        (evaluation,) = evaluate(org, day, settings, common)
        steps = {step_of(x) for x in evaluation.actions}
        if steps:
            seen[day] = steps
        quiet = (Verdict.NOT_DUE, Verdict.DONE)
        assert evaluation.verdict == Verdict.ACT if steps else evaluation.verdict in quiet, (
            evaluation.why
        )
        apply(org, evaluation.actions, day)
        again = evaluate(org, day, settings, common)
        assert [x.actions for x in again] == [()], f"rerun of {day} added actions"
        for event in walk.events.get(day, []):
            event(org, day)
        day += dt.timedelta(days=1)
    assert seen == walk.expected


def test_catch_up_records_the_missed_attempts() -> None:
    evaluation = one(new_org(), D(2026, 12, 1))
    assert {step_of(x) for x in evaluation.actions} == {a(4)}
    assert [(s.key, s.due) for s in evaluation.skipped] == [
        (f"rejected_payments:attempt-1:{CASE_ID}", D(2026, 11, 20)),
        (f"rejected_payments:attempt-2:{CASE_ID}", D(2026, 11, 24)),
        (f"rejected_payments:attempt-3:{CASE_ID}", D(2026, 11, 27)),
    ]
    assert evaluation.skipped[0].step == "Outbound Voice Script / Voicemail Script"
    assert evaluation.skipped[1].step == "Subsequent Calling (No Answer)"


def test_weekend_and_holiday_are_not_due() -> None:
    org = new_org()
    apply(org, one(org, D(2026, 11, 20)).actions, D(2026, 11, 20))
    apply(org, one(org, D(2026, 11, 24)).actions, D(2026, 11, 24))
    holiday = one(org, D(2026, 11, 26))
    assert holiday.verdict == Verdict.NOT_DUE
    assert "2026-11-26 is not a business day" in holiday.why
    assert holiday.next_due == D(2026, 11, 27)
    assert holiday.next_step == "Subsequent Calling (No Answer)"
    wednesday = one(org, D(2026, 11, 25))
    assert wednesday.verdict == Verdict.NOT_DUE
    assert wednesday.why.startswith("business day 3 since the case was created 2026-11-20")
    assert wednesday.next_due == D(2026, 11, 27)


@pytest.mark.parametrize(
    ("created", "first_call"),
    [
        ("2026-11-21T18:00:00.000+0000", D(2026, 11, 23)),  # Saturday: Monday is day 0
        ("2026-11-26T16:00:00.000+0000", D(2026, 11, 27)),  # Thanksgiving: Friday is day 0
        ("2026-11-25T16:00:00.000+0000", D(2026, 11, 25)),
    ],
)
def test_business_day_zero(created: str, first_call: dt.date) -> None:
    org = new_org(created=created)
    before = one(org, first_call - dt.timedelta(days=1))
    assert before.actions == ()
    assert one(org, first_call).actions[0].key == f"rejected_payments:attempt-1:{CASE_ID}"


# -- what the actions say --------------------------------------------------------------------
def test_call_task_carries_the_scripts_and_the_commitment() -> None:
    org = new_org()
    apply(org, one(org, D(2026, 11, 20)).actions, D(2026, 11, 20))
    complete(1, NO_ANSWER)(org, D(2026, 11, 20))
    evaluation = one(org, D(2026, 11, 24))
    task = next(x for x in evaluation.actions if isinstance(x, CreateTask))
    assert task.subject == ("Call attempt 2/5: Maria Gonzalez - case 00099001 (rejected payment)")
    assert task.step == "Subsequent Calling (No Answer)"
    assert task.sop == "003_3323a0ffa1d52f70.txt"
    assert "Attempts completed before this call: 1 of 5." in task.description
    assert "closed on 2026-12-07" in task.description
    assert "Hello Maria Gonzalez,\nMy name is Aisha Khan with Everbright" in task.description
    assert "unable to process it due to an incorrect date format on the check." in (
        task.description
    )
    assert "VOICEMAIL SCRIPT" in task.description
    assert "{" not in task.description
    assert (task.owner_id, task.what_id, task.who_id) == (OWNER_ID, CASE_ID, CONTACT_ID)
    assert task.fields["Type"] == "Call"
    assert task.due == D(2026, 11, 24)
    assert "business day 2 since the case was created 2026-11-20" in task.reason


def test_attempt_comment_is_internal_and_carries_the_outcome() -> None:
    org = new_org()
    apply(org, one(org, D(2026, 11, 20)).actions, D(2026, 11, 20))
    complete(1, NO_ANSWER)(org, D(2026, 11, 20))
    evaluation = one(org, D(2026, 11, 23))
    (comment,) = evaluation.actions
    assert isinstance(comment, AddCaseComment)
    assert comment.published is False
    assert comment.body.startswith(
        "Call attempt 1/5 on 2026-11-20 to Maria Gonzalez: No Answer - Left Voicemail"
    )
    assert evaluation.verdict == Verdict.ACT
    assert evaluation.next_due == D(2026, 11, 24)


def test_open_attempt_is_logged_without_outcome_when_the_next_falls_due() -> None:
    org = new_org()
    apply(org, one(org, D(2026, 11, 20)).actions, D(2026, 11, 20))
    comment = next(x for x in one(org, D(2026, 11, 24)).actions if isinstance(x, AddCaseComment))
    assert comment.body.startswith(
        "Call attempt 1/5 on 2026-11-20 to Maria Gonzalez: no outcome recorded"
    )


def test_close_sets_the_mapped_values_and_says_attempt_5_of_5() -> None:
    org = new_org()
    for day in sorted(NO_ANSWER_WALK)[:-1]:
        apply(org, one(org, day).actions, day)
    evaluation = one(org, D(2026, 12, 7))
    close = next(x for x in evaluation.actions if isinstance(x, CloseRecord))
    assert close.values() == {
        "Status": "Closed",
        "Resolution__c": "Done",
        "Resolution_Type__c": "Account Management",
        "Platform_Area__c": "Account Management",
    }
    assert close.step == "When Closing the ticket"
    comments = [x for x in evaluation.actions if isinstance(x, AddCaseComment)]
    assert [c.published for c in comments] == [False, False]
    assert comments[-1].body.startswith("Call attempt 5/5 made: no phone call or email response")
    apply(org, evaluation.actions, D(2026, 12, 7))
    after = one(org, D(2026, 12, 8))
    assert (after.verdict, after.why) == (Verdict.DONE, "case is closed (Status='Closed')")


def test_not_closed_before_the_day_after_the_last_attempt() -> None:
    org = new_org()
    evaluation = one(org, D(2026, 12, 8))
    apply(org, evaluation.actions, D(2026, 12, 8))
    again = one(org, D(2026, 12, 8))
    assert again.verdict == Verdict.NOT_DUE
    assert (again.next_due, again.next_step) == (D(2026, 12, 9), "When Closing the ticket")


def test_email_without_an_address_is_skipped_not_an_error() -> None:
    evaluation = one(new_org(ContactEmail=None), D(2026, 11, 20))
    assert {step_of(x) for x in evaluation.actions} == {a(1)}
    (skip,) = evaluation.skipped
    assert skip.step == "Email to Homeowner"
    assert "no ContactEmail" in skip.reason


# -- scope and errors --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "verdict", "why"),
    [
        (
            {"Request_Type__c": "Billing Inquiry"},
            Verdict.EXCLUDED,
            "excluded because Request_Type__c='Billing Inquiry'",
        ),
        ({"Status": "Closed"}, Verdict.DONE, "case is closed (Status='Closed')"),
        (
            {"Status": "Homeowner Responded"},
            Verdict.DONE,
            "cadence stopped: homeowner responded (Status='Homeowner Responded')",
        ),
        (
            {"Homeowner_Responded__c": True},
            Verdict.DONE,
            "cadence stopped: homeowner responded (Homeowner_Responded__c is checked)",
        ),
        (
            {"Rejection_Reason__c": None},
            Verdict.ERROR,
            "template 'rules.rejected_payments.templates.voice_script': placeholder {reason} "
            f"has no value for record {CASE_ID}",
        ),
        (
            {"Contact": None},
            Verdict.ERROR,
            "template 'rules.rejected_payments.templates.voice_script': placeholder "
            f"{{homeowner}} has no value for record {CASE_ID}",
        ),
        (
            {"Homeowner_Responded__c": "Yes"},
            Verdict.ERROR,
            f"record {CASE_ID}: field Homeowner_Responded__c: expected a checkbox "
            "(true/false), got 'Yes'",
        ),
        (
            {"OwnerId": "00GDmR000000001AAA"},
            Verdict.ERROR,
            f"record {CASE_ID}: field OwnerId: owner '00GDmR000000001AAA' is not a user",
        ),
        (
            {"CreatedDate": "2026-11-31T10:00:00.000+0000"},
            Verdict.ERROR,
            f"record {CASE_ID}: field CreatedDate: not a date: '2026-11-31T10:00:00.000+0000'",
        ),
    ],
)
def test_scope_and_errors(fields: dict[str, Any], verdict: Verdict, why: str) -> None:
    evaluation = one(new_org(**fields), D(2026, 11, 24))
    assert (evaluation.verdict, evaluation.why) == (verdict, why)
    assert evaluation.actions == ()


def test_cases_without_a_request_type_are_not_candidates() -> None:
    assert evaluate(new_org(Request_Type__c=None), D(2026, 11, 24)) == []


def test_response_before_the_case_does_not_count() -> None:
    org = new_org()
    customer_reply(org, D(2026, 11, 2))
    assert {step_of(x) for x in one(org, D(2026, 11, 20)).actions} == {a(1), EMAIL_TASK}


# -- mapping -----------------------------------------------------------------------------------
SECTION = "[rules.rejected_payments]"


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("max_attempts = 5", 'max_attempts = "five"', "max_attempts", "integer"),
        ('reason_field = "Rejection_Reason__c"\n', "", "reason_field", "required key"),
        ("max_attempts = 5", "max_attempts = 5\ncolour = 1", "colour", "unknown key"),
        ("attempt_offsets = [0, 2, 4, 6, 8]", "attempt_offsets = [0, 2, 4, 6, 10]", "", "0..9"),
        ("attempt_offsets = [0, 2, 4, 6, 8]", "attempt_offsets = [0, 2, 4, 6]", "", "4 entries"),
        ("attempt_offsets = [0, 2, 4, 6, 8]", "attempt_offsets = [0, 4, 2, 6, 8]", "", "ascending"),
        ("email_with_attempts = [1]", "email_with_attempts = [6]", "", "email_with_attempts"),
        ('closed_status = "Closed"', 'closed_status = "Solved"', "", "closed_statuses"),
        (
            'log_comment = "Call attempt {attempt}',
            'log_comment = "Call attempt {attempt_no}',
            "templates.log_comment",
            "unknown placeholder(s) {attempt_no}",
        ),
        (
            'email_subject = "Your recent',
            'email_subject = "{attempt} Your recent',
            "templates.email_subject",
            "unknown placeholder(s) {attempt}",
        ),
        ('close = "When Closing the ticket"\n', "", "", "no label for step(s) close"),
    ],
)
def test_mapping_validation(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    text = MAPPING_PATH.read_text(encoding="utf-8")
    head, tail = text.split(SECTION)
    assert tail.count(old) == 1
    path = tmp_path / "mapping.toml"
    path.write_text(head + SECTION + tail.replace(old, new), encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path, rule_models())
    want = "rules.rejected_payments" + (f".{key}" if key else "")
    assert any(k == want and fragment in msg for k, msg in caught.value.problems), (
        caught.value.problems
    )


# -- the demo org ------------------------------------------------------------------------------
DEMO_EXPECTED: dict[str, tuple[Verdict, set[Step]]] = {
    "500DmR000000001AAA": (Verdict.ACT, {a(1), EMAIL_TASK}),  # new today
    "500DmR000000002AAA": (Verdict.ACT, {a(1)}),  # new today, no email address
    "500DmR000000003AAA": (Verdict.ACT, {a(1), EMAIL_TASK}),  # created Saturday
    "500DmR000000004AAA": (Verdict.ACT, {a(1), EMAIL_TASK}),
    "500DmR000000005AAA": (Verdict.NOT_DUE, set()),  # day 1
    "500DmR000000006AAA": (Verdict.ACT, {log(1)}),  # day 1, attempt 1 completed this morning
    "500DmR000000007AAA": (Verdict.ACT, {a(2)}),
    "500DmR000000008AAA": (Verdict.ACT, {log(1), a(2)}),
    "500DmR000000009AAA": (Verdict.NOT_DUE, set()),  # day 3
    "500DmR000000010AAA": (Verdict.ACT, {a(3)}),
    "500DmR000000011AAA": (Verdict.ACT, {a(3)}),
    "500DmR000000012AAA": (Verdict.NOT_DUE, set()),  # day 5
    "500DmR000000013AAA": (Verdict.ACT, {a(4)}),
    "500DmR000000014AAA": (Verdict.ACT, {log(1), a(4)}),  # catch-up, 2 and 3 skipped
    "500DmR000000015AAA": (Verdict.ACT, {a(5)}),  # day 8 (Veterans Day skipped)
    "500DmR000000016AAA": (Verdict.NOT_DUE, set()),  # day 9
    "500DmR000000017AAA": (Verdict.ACT, {log(5)} | CLOSE),  # day 10
    "500DmR000000018AAA": (Verdict.ACT, CLOSE),  # day 11, every attempt logged
    "500DmR000000019AAA": (Verdict.DONE, set()),  # status response
    "500DmR000000020AAA": (Verdict.DONE, set()),  # answered, logged
    "500DmR000000021AAA": (Verdict.ACT, {log(2)}),  # answered this morning
    "500DmR000000022AAA": (Verdict.DONE, set()),  # email reply Task
    "500DmR000000023AAA": (Verdict.DONE, set()),  # checkbox
    "500DmR000000024AAA": (Verdict.DONE, set()),  # closed by the worker
    "500DmR000000025AAA": (Verdict.DONE, set()),  # closed by a rep
    "500DmR000000026AAA": (Verdict.EXCLUDED, set()),
    "500DmR000000027AAA": (Verdict.EXCLUDED, set()),
    "500DmR000000028AAA": (Verdict.EXCLUDED, set()),
    "500DmR000000029AAA": (Verdict.ERROR, set()),  # checkbox holds 'Yes'
    "500DmR000000030AAA": (Verdict.ERROR, set()),  # no rejection reason
    "500DmR000000031AAA": (Verdict.ERROR, set()),  # owned by a queue
    "500DmR000000032AAA": (Verdict.ERROR, set()),  # no contact
}


def demo_snapshot(tmp_path: Path) -> Snapshot:
    """The demo org read as the pipeline reads it: only the fields the mapping asks for."""
    fields = MAPPING.object_fields()
    local = LocalOrg(DEMO, tmp_path, KEY_FIELD)
    pages = local.fetch([ObjectQuery(sobject, names) for sobject, names in fields.items()])
    return Snapshot.build(Record.from_json(raw) for page in pages for raw in page.records)


def test_demo_org_shows_every_stage(tmp_path: Path) -> None:
    as_of = read_manifest(DEMO).as_of
    evaluations = list(evaluate_rule(RULE, demo_snapshot(tmp_path), as_of, SETTINGS, ORG))
    got = {e.target.id: (e.verdict, {step_of(x) for x in e.actions}) for e in evaluations}
    assert got == DEMO_EXPECTED
    steps = {x.step for e in evaluations for x in e.actions}
    assert steps == {SETTINGS.step_label(s) for s in STEPS}
    catch_up = next(e for e in evaluations if e.target.id == "500DmR000000014AAA")
    assert [s.key.split(":")[1] for s in catch_up.skipped] == ["attempt-2", "attempt-3"]


def test_demo_org_rerun_after_applying_adds_nothing() -> None:
    as_of = read_manifest(DEMO).as_of
    org = {str(r["Id"]): copy.deepcopy(r) for r in iter_raw_records(DEMO)}
    first = [x for e in evaluate(org, as_of) for x in e.actions]
    assert first
    apply(org, tuple(first), as_of)
    assert [x for e in evaluate(org, as_of) for x in e.actions] == []


# -- what doctor checks ----------------------------------------------------------------------
def test_doctor_declarations() -> None:
    assert SETTINGS.writes() == {
        "Case": {"Status", "Resolution__c", "Resolution_Type__c", "Platform_Area__c"}
    }
    assert SETTINGS.picklist_values() == {
        ("Case", "Request_Type__c"): {"Rejected Payments"},
        ("Case", "Status"): {"Closed", "Homeowner Responded"},
        ("Case", "Resolution__c"): {"Done"},
        ("Case", "Resolution_Type__c"): {"Account Management"},
        ("Case", "Platform_Area__c"): {"Account Management"},
        ("Task", "Type"): {"Customer Response"},
    }
    # only picklists: the call result (CallDisposition) is a text field
    assert all(is_picklist(*key) for key in SETTINGS.picklist_values())


def test_declarations_match_what_the_rule_does_on_the_demo_org() -> None:
    """Every field the rule updates is declared (and nothing more), and every picklist value
    it writes is declared: the declarations cannot drift from the behaviour."""
    seen = walk_demo("rejected_payments", MAPPING, days=30)
    assert seen.updates > 0
    assert seen.writes == SETTINGS.writes()
    assert seen.values
    assert undeclared(seen, SETTINGS.picklist_values(), MAPPING) == {}


# -- the number to call ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("phone", "shown"),
    [
        ("(951) 555-1207", "call Maria Gonzalez at +1 951-555-1207 about case"),
        ("951.555.1207 ext. 3", "at +1 951-555-1207 ext. 3 about"),
        ("+44 20 7946 0958", "at +44 20 7946 0958 about"),  # a UK number stays a UK number
        ("555-12", "at no valid phone number on the case (ContactPhone='555-12') about"),
        (None, "at no phone number on the case (ContactPhone is empty) about"),
    ],
)
def test_call_tasks_carry_a_dialable_number(phone: str | None, shown: str) -> None:
    (evaluation,) = evaluate(new_org(ContactPhone=phone), D(2026, 11, 20))
    call = next(a for a in evaluation.actions if isinstance(a, CreateTask))
    assert shown in " ".join(call.description.split())  # the call is still due either way
