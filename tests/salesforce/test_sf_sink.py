"""SalesforceSink against the fake org: collections in composites, per-record results,
idempotent creates, lost answers and reconcile, guards, retries, budget, emails, leads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
import responses
import tenacity

from worker.actions import (
    Action,
    AddCaseComment,
    CloseRecord,
    ConvertLead,
    CreateTask,
    FieldChange,
    Outcome,
    SendEmail,
    UpdateRecord,
)
from worker.errors import ApiLimitError, AuthError, DryRunWriteError
from worker.keys import key_marker
from worker.records import RecordRef
from worker.salesforce.client import SalesforceClient
from worker.salesforce.sink import SalesforceSink

from .fakeorg import FakeOrg
from .sfhelpers import Sleeps, load_fixture, make_client, settings

KEY_FIELD = "SOP_Worker_Key__c"
META: dict[str, Any] = {
    "rule": "payment_followup",
    "sop": "000.txt",
    "step": "Step 2",
    "reason": "test",
}


def update(obj: str, rid: str, key: str, **values: Any) -> UpdateRecord:
    return UpdateRecord(
        **META,
        target=RecordRef(obj, rid),
        key=key,
        changes=tuple(FieldChange(k, None, v) for k, v in values.items()),
    )


def task(
    parent: str, key: str, *, who: str | None = None, subject: str = "Follow up", **fields: Any
) -> CreateTask:
    return CreateTask(
        **META,
        target=RecordRef("Opportunity", parent),
        key=key,
        subject=subject,
        description="Call the customer.",
        due=dt.date(2026, 11, 25),
        owner_id=None,
        what_id=parent,
        who_id=who,
        # As the rules' tasks carry it: TaskSubtype is createable but not updateable.
        fields={"Status": "Not Started", "Priority": "Normal", "TaskSubtype": "Task", **fields},
    )


def comment(case_id: str, key: str, body: str = "Customer was called.") -> AddCaseComment:
    return AddCaseComment(
        **META, target=RecordRef("Case", case_id), key=key, body=f"{body}\n\n{key_marker(key)}"
    )


def sink_for(
    org: FakeOrg, key_field: str = KEY_FIELD, sleeps: Sleeps | None = None, **overrides: Any
) -> SalesforceSink:
    return SalesforceSink(make_client(org, sleeps, **overrides), task_key_field=key_field)


def outcomes(results: list[Any]) -> list[tuple[str, str | None]]:
    return [(r.outcome.value, r.error_code) for r in results]


# -- batching -----------------------------------------------------------------------------------
def test_updates_upserts_and_comments_in_few_calls(org: FakeOrg) -> None:
    opps = [org.add("Opportunity", Name=f"O{i}", StageName="Prospecting") for i in range(3)]
    case = org.add("Case", Subject="Broken")
    actions: list[Action] = [
        update("Opportunity", opps[0], "k-u0", NextStep="Called"),
        task(opps[1], "k-t1"),
        CloseRecord(
            **META,
            target=RecordRef("Opportunity", opps[2]),
            key="k-c2",
            changes=(FieldChange("Payment_Status__c", "Open", "Closed"),),
        ),
        comment(case, "k-cc"),
    ]
    sink = sink_for(org)
    results = sink.write(actions)
    assert outcomes(results) == [("applied", None)] * 4
    assert [r.key for r in results] == ["k-u0", "k-t1", "k-c2", "k-cc"]
    assert org.get(opps[0])["NextStep"] == "Called"  # type: ignore[index]
    assert org.get(opps[2])["Payment_Status__c"] == "Closed"  # type: ignore[index]
    (new_task,) = org.of("Task")
    assert new_task[KEY_FIELD] == "k-t1"
    assert results[1].sf_id == new_task["Id"]
    assert new_task["ActivityDate"] == "2026-11-25"
    assert new_task["WhatId"] == opps[1]
    (new_comment,) = org.of("CaseComment")
    assert key_marker("k-cc") in new_comment["CommentBody"]
    # 1 composite for update+upsert collections, 1 for the marker lookup, 1 for the create
    assert org.calls_by_kind == {"composite": 3}
    assert sink.api_calls() == 3 == sink.estimate_write_calls(actions)


def test_the_plans_cost_is_what_applying_spends(org: FakeOrg) -> None:
    opps = [org.add("Opportunity", Name=f"O{i}") for i in range(450)]
    leads = [org.add("Lead", LastName=f"L{i}") for i in range(30)]
    cases = [org.add("Case", Subject=f"C{i}") for i in range(201)]
    actions: list[Action] = [
        update("Opportunity", rid, f"u{i}", NextStep="x") for i, rid in enumerate(opps)
    ]
    actions += [
        update("Lead", rid, f"l{i}", Status="Working - Contacted") for i, rid in enumerate(leads)
    ]
    # Tasks are re-checked on their target too: the Cases they were planned on.
    actions += [
        dataclasses.replace(task(rid, f"t{i}"), target=RecordRef("Case", rid))
        for i, rid in enumerate(cases)
    ]
    sink = sink_for(org)
    estimate = sink.estimate_calls([actions])
    sink.current_state([a.target for a in actions])
    sink.write(actions)
    # stamps: 1 + 1 + 1 id queries of up to 800 Ids, one composite; writes: 3 + 1 + 2
    # chunks, two composites
    assert estimate == org.call_count == 3


@pytest.mark.parametrize(
    ("n", "composites"), [(1, 1), (200, 1), (201, 1), (1000, 1), (1001, 2), (2400, 3)]
)
def test_collections_of_200_five_per_composite(org: FakeOrg, n: int, composites: int) -> None:
    ids = [org.add("Opportunity", Name=f"O{i}") for i in range(n)]
    actions = [update("Opportunity", rid, f"k{i}", NextStep="x") for i, rid in enumerate(ids)]
    sink = sink_for(org)
    assert sink.estimate_write_calls(actions) == composites
    results = sink.write(actions)
    assert all(r.outcome is Outcome.APPLIED for r in results)
    assert org.calls_by_kind == {"composite": composites}


def test_mixed_per_record_results_map_back_by_index() -> None:
    acme = "https://acme.my.salesforce.com"
    composite = f"{acme}/services/data/v66.0/composite"
    retry_ok = {
        "compositeResponse": [
            {
                "body": [{"id": "006000000000003AAA", "success": True, "errors": []}],
                "httpHeaders": {},
                "httpStatusCode": 200,
                "referenceId": "c0",
            }
        ]
    }
    with responses.RequestsMock() as mock:
        mock.post(composite, json=load_fixture("composite_collections_mixed.json"))
        mock.post(composite, json=retry_ok)
        client = SalesforceClient(
            settings(instance_url=acme, access_token="00D!x"), wait=tenacity.wait_none()
        )
        sink = SalesforceSink(client, task_key_field=KEY_FIELD)
        actions = [
            update("Opportunity", "006000000000001AAA", "a", NextStep="x"),
            update("Opportunity", "006000000000002AAA", "b", Payment_Status__c="Closed"),
            update("Opportunity", "006000000000003AAA", "c", NextStep="y"),
            task("006000000000001AAA", "d"),
            task("006000000000002AAA", "e", Status="Waiting"),
        ]
        results = sink.write(actions)
        first = json.loads(mock.calls[0].request.body or "")
        second = json.loads(mock.calls[1].request.body or "")
    assert [s["method"] for s in first["compositeRequest"]] == ["PATCH", "PATCH"]
    assert (
        first["compositeRequest"][1]["url"]
        == "/services/data/v66.0/composite/sobjects/Task/SOP_Worker_Key__c"
    )
    assert first["allOrNone"] is False
    assert all(s["body"]["allOrNone"] is False for s in first["compositeRequest"])
    # only the locked record went again
    assert [r["Id"] for r in second["compositeRequest"][0]["body"]["records"]] == [
        "006000000000003AAA"
    ]
    assert outcomes(results) == [
        ("applied", None),
        ("failed", "FIELD_CUSTOM_VALIDATION_EXCEPTION"),
        ("applied", None),
        ("applied", None),
        ("failed", "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
    ]
    assert results[1].message == (
        "Closed Reason is required when Payment Status is Closed (fields: Closed_Reason__c)"
    )
    assert results[3].sf_id == "00T000000000009AAA"


@pytest.mark.parametrize(
    "code",
    [
        "FIELD_CUSTOM_VALIDATION_EXCEPTION",
        "REQUIRED_FIELD_MISSING",
        "INVALID_FIELD",
        "STRING_TOO_LONG",
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
        "SOME_CODE_FROM_THE_FUTURE",
    ],
)
def test_a_permanent_record_error_fails_only_that_action(org: FakeOrg, code: str) -> None:
    a, b = org.add("Opportunity", Name="a"), org.add("Opportunity", Name="b")
    org.validate(lambda obj, rec: (code, "nope") if rec.get("Name") == "b" else None)
    results = sink_for(org).write(
        [update("Opportunity", a, "ka", NextStep="x"), update("Opportunity", b, "kb", NextStep="x")]
    )
    assert outcomes(results) == [("applied", None), ("failed", code)]
    assert org.calls_by_kind == {"composite": 1}  # never retried


def test_locked_rows_are_retried_under_the_retry_policy(org: FakeOrg) -> None:
    a, b = org.add("Opportunity", Name="a"), org.add("Opportunity", Name="b")
    org.lock(b, times=2)
    sink = sink_for(org)
    results = sink.write(
        [update("Opportunity", a, "ka", NextStep="1"), update("Opportunity", b, "kb", NextStep="2")]
    )
    assert outcomes(results) == [("applied", None), ("applied", None)]
    assert org.calls_by_kind == {"composite": 3}
    assert org.get(a)["NextStep"] == "1"  # type: ignore[index]


def test_locked_rows_fail_after_max_attempts(org: FakeOrg) -> None:
    a = org.add("Opportunity", Name="a")
    org.lock(a, times=99)
    results = sink_for(org, max_attempts=3).write([update("Opportunity", a, "ka", NextStep="1")])
    assert outcomes(results) == [("failed", "UNABLE_TO_LOCK_ROW")]
    assert org.calls_by_kind == {"composite": 3}


def test_a_whole_collection_refused_fails_its_actions(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    results = sink_for(org, key_field="Subject").write(
        [task(opp, "k1"), update("Opportunity", opp, "k2", NextStep="x")]
    )
    assert results[0].outcome is Outcome.FAILED
    assert results[0].error_code == "INVALID_FIELD"
    assert "not an External ID" in (results[0].message or "")
    assert results[1].outcome is Outcome.APPLIED


# -- idempotent creates and lost answers ------------------------------------------------------------
def test_task_upsert_twice_makes_one_task(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    sink = sink_for(org)
    first = sink.write([task(opp, "k1")])
    second = sink.write([task(opp, "k1")])
    assert len(org.of("Task")) == 1
    assert first[0].sf_id == second[0].sf_id


def test_an_upsert_that_finds_its_task_leaves_it_as_it_is(org: FakeOrg) -> None:
    """Two runs racing, or a database lost mid-write: the Task exists, a person has worked
    it since. Sending it again is a success that changes nothing, not a failure."""
    opp = org.add("Opportunity", Name="a")
    done = org.add(
        "Task",
        WhatId=opp,
        Subject="Follow up",
        Status="Completed",
        TaskSubtype="Call",
        **{KEY_FIELD: "k1"},
    )
    before = dict(org.get(done) or {})
    sink = sink_for(org)
    actions: list[Action] = [task(opp, "k1"), task(opp, "k2")]
    assert sink.estimate_write_calls(actions) == 1  # the common case spends no lookup
    results = sink.write(actions)
    assert outcomes(results) == [("applied", None), ("applied", None)]
    assert results[0].sf_id == done
    assert "already in Salesforce" in (results[0].message or "")
    assert org.get(done) == before  # the person's Status stays
    assert len(org.of("Task")) == 2
    assert org.calls_by_kind == {"composite": 2}  # the write, then one key lookup


def test_a_create_only_field_the_user_cannot_set_still_fails(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    fields = dict(org.schema["Task"])
    fields["TaskSubtype"] = dataclasses.replace(fields["TaskSubtype"], createable=False)
    org.schema["Task"] = fields  # field-level security: not even createable
    (result,) = sink_for(org).write([task(opp, "k1")])
    assert outcomes([result]) == [("failed", "INVALID_FIELD_FOR_INSERT_UPDATE")]
    assert "TaskSubtype" in (result.message or "")
    assert org.of("Task") == []


def test_lost_answer_to_an_upsert_is_replayed_without_duplicate(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    org.fail(kind="composite", drop=True)  # applied, then the answer is lost
    results = sink_for(org).write([task(opp, "k1")])
    assert outcomes(results) == [("applied", None)]
    assert len(org.of("Task")) == 1
    # the write, its replay (refused: the Task exists), the lookup finding it by its key
    assert org.calls_by_kind == {"composite": 3}


@pytest.mark.parametrize("kind", ["comment", "task"])
def test_lost_answer_to_a_plain_create_is_reconciled_not_duplicated(
    org: FakeOrg, kind: str
) -> None:
    parent = org.add("Case" if kind == "comment" else "Opportunity", Name="p")
    action: Action = comment(parent, "k-lost") if kind == "comment" else task(parent, "k-lost")
    sink = sink_for(org, key_field="")
    org.fail(kind="composite", skip=1, drop=True)  # the lookup passes, the create is lost
    (sent,) = sink.write([action])
    assert (sent.outcome, sent.error_code) == (Outcome.SENT, "UNKNOWN_OUTCOME")
    stored = org.of("CaseComment" if kind == "comment" else "Task")
    assert len(stored) == 1  # it did happen
    assert org.calls_by_kind == {"composite": 2}  # and was not resent

    (found,) = sink.reconcile([action])
    assert found is not None
    assert found.outcome is Outcome.APPLIED
    assert found.sf_id == stored[0]["Id"]

    (again,) = sink.write([action])  # a rerun that lost its ledger
    assert again.outcome is Outcome.APPLIED
    assert again.sf_id == stored[0]["Id"]
    assert len(org.of("CaseComment" if kind == "comment" else "Task")) == 1


def test_reconcile_answers(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    case = org.add("Case", Subject="c")
    lead = org.add("Lead", LastName="L", Company="Acme")
    actions: list[Action] = [
        task(opp, "t-upsert"),
        update("Opportunity", opp, "u", NextStep="x"),
        comment(case, "c-missing"),
        email("e", "a@b.c", opp),
        ConvertLead(
            **META, target=RecordRef("Lead", lead), key="cl", converted_status="Closed - Converted"
        ),
    ]
    # Nothing of these is in the org: each is safe to send again (the email was not logged,
    # so it was not sent).
    assert sink_for(org).reconcile(actions) == [None] * 5


def test_a_deleted_worker_comment_is_not_recreated(org: FakeOrg) -> None:
    case = org.add("Case", Subject="c")
    cid = org.add(
        "CaseComment", ParentId=case, CommentBody=f"old\n\n{key_marker('k1')}", IsPublished=False
    )
    org.delete(cid)
    (result,) = sink_for(org).write([comment(case, "k1")])
    assert result.outcome is Outcome.APPLIED
    assert result.sf_id == cid
    assert org.of("CaseComment") == []


# -- guards --------------------------------------------------------------------------------------------
def test_task_on_a_lead_drops_what_id(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    lead = org.add("Lead", LastName="L")
    (result,) = sink_for(org).write([task(opp, "k", who=lead)])
    assert result.outcome is Outcome.APPLIED
    assert "WhatId dropped" in (result.message or "")
    (stored,) = org.of("Task")
    assert stored["WhoId"] == lead
    assert not stored.get("WhatId")


def test_long_subject_and_next_step_are_truncated_and_noted(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    results = sink_for(org).write(
        [
            task(opp, "k1", subject="S" * 300),
            update("Opportunity", opp, "k2", NextStep="N" * 256),
        ]
    )
    assert outcomes(results) == [("applied", None), ("applied", None)]
    assert "Subject truncated from 300 to 255" in (results[0].message or "")
    assert "NextStep truncated" in (results[1].message or "")
    assert len(org.of("Task")[0]["Subject"]) == 255
    assert len(org.get(opp)["NextStep"]) == 255  # type: ignore[index]


def test_comment_body_is_cut_to_4000_bytes_keeping_the_marker(org: FakeOrg) -> None:
    case = org.add("Case", Subject="c")
    (result,) = sink_for(org).write([comment(case, "k1", body="é" * 3000)])  # 6,000 bytes
    assert result.outcome is Outcome.APPLIED
    assert "truncated" in (result.message or "")
    body = org.of("CaseComment")[0]["CommentBody"]
    assert len(body.encode()) <= 4000
    assert body.endswith(key_marker("k1"))


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (dt.datetime(2026, 11, 25, 23, 0, tzinfo=dt.UTC), "2026-11-25"),
        ("2026-11-26T00:00:00.000+0000", "2026-11-26"),
        (dt.date(2026, 12, 1), "2026-12-01"),
    ],
)
def test_activity_date_is_written_as_a_date(org: FakeOrg, value: Any, stored: str) -> None:
    opp = org.add("Opportunity", Name="a")
    (result,) = sink_for(org).write([task(opp, "k", ActivityDate=value)])
    assert result.outcome is Outcome.APPLIED
    assert org.of("Task")[0]["ActivityDate"] == stored


def test_a_bad_activity_date_fails_without_a_call(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    (result,) = sink_for(org).write([task(opp, "k", ActivityDate="next tuesday")])
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "INVALID_ACTIVITY_DATE")
    assert org.call_count == 0


def test_a_converted_lead_is_never_updated(org: FakeOrg) -> None:
    lead = org.add("Lead", LastName="L", Company="Acme")
    org.edit(lead, IsConverted=True)
    sink = sink_for(org)
    state = sink.current_state([RecordRef("Lead", lead)])
    assert state[lead].stamp == org.get(lead)["SystemModstamp"]  # type: ignore[index]
    assert state[lead].converted
    calls = org.call_count
    (result,) = sink.write([update("Lead", lead, "k", Status="Working - Contacted")])
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "CANNOT_UPDATE_CONVERTED_LEAD")
    assert org.call_count == calls


def test_a_converted_lead_unknown_to_the_sink_fails_from_salesforce(org: FakeOrg) -> None:
    lead = org.add("Lead", LastName="L")
    org.edit(lead, IsConverted=True)
    sink = sink_for(org)
    (result,) = sink.write([update("Lead", lead, "k1", Status="Working - Contacted")])
    assert result.error_code == "CANNOT_UPDATE_CONVERTED_LEAD"
    calls = org.call_count
    sink.write([update("Lead", lead, "k2", Status="Working - Contacted")])
    assert org.call_count == calls  # remembered


# -- conflicts ---------------------------------------------------------------------------------------------
def test_current_state_in_one_call(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a", StageName="Prospecting")
    won = org.add("Opportunity", Name="b", StageName="Closed Won")
    lead = org.add("Lead", LastName="L")
    case = org.add("Case", Subject="c", Status="New")
    closed = org.add("Case", Subject="e", Status="Closed")
    gone = org.add("Case", Subject="d")
    org.delete(gone)
    refs = [RecordRef("Opportunity", r) for r in (opp, won)] + [RecordRef("Lead", lead)]
    refs += [RecordRef("Case", r) for r in (case, closed, gone, "500000000000404AAA")]
    sink = sink_for(org)
    before = sink.current_state(refs)
    assert before[opp].stamp == org.get(opp)["SystemModstamp"]  # type: ignore[index]
    assert (before[opp].closed, before[won].closed) == (False, True)
    assert (before[case].closed, before[closed].closed) == (False, True)
    assert not before[lead].converted
    assert gone not in before
    assert "500000000000404AAA" not in before
    assert org.calls_by_kind == {"composite": 1}
    org.edit(opp, NextStep="a person typed this")
    org.edit(case, Status="Closed")  # IsClosed follows the status, as in Salesforce
    after = sink.current_state(refs[:1] + refs[3:4])
    assert after[opp].stamp != before[opp].stamp
    assert after[case].closed


# -- budget --------------------------------------------------------------------------------------------
def test_budget_reached_before_anything_was_sent_raises(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    org.daily_limit, org.used = 100, 90
    sink = sink_for(org)
    sink.current_state([RecordRef("Opportunity", opp)])  # learns usage: 91/100
    with pytest.raises(ApiLimitError):
        sink.write([update("Opportunity", opp, "k", NextStep="x")])
    assert org.calls_by_kind == {"composite": 1}


def test_budget_reached_mid_write_leaves_the_rest_planned(org: FakeOrg) -> None:
    ids = [org.add("Opportunity", Name=f"O{i}") for i in range(1200)]  # 2 composites
    org.daily_limit, org.used = 100, 79  # after the first composite: 20 left = the reserve
    sink = sink_for(org)
    results = sink.write(
        [update("Opportunity", rid, f"k{i}", NextStep="x") for i, rid in enumerate(ids)]
    )
    assert {r.outcome for r in results[:1000]} == {Outcome.APPLIED}
    assert {(r.outcome, r.error_code) for r in results[1000:]} == {(Outcome.PLANNED, "API_LIMIT")}
    with pytest.raises(ApiLimitError):
        sink.write([update("Opportunity", ids[-1], "again", NextStep="x")])
    assert org.calls_by_kind == {"composite": 1}


def test_daily_limit_exceeded_stops_the_write(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    org.fail(
        kind="composite",
        status=403,
        error_code="REQUEST_LIMIT_EXCEEDED",
        message="TotalRequests Limit exceeded.",
    )
    with pytest.raises(ApiLimitError):
        sink_for(org).write([update("Opportunity", opp, "k", NextStep="x")])
    assert org.call_count == 1


# -- email and lead conversion -------------------------------------------------------------------------
def email(key: str, to: str, log_on: str | None) -> SendEmail:
    return SendEmail(
        **META,
        target=RecordRef("Account", log_on or "001x"),
        key=key,
        to_address=to,
        subject="Your invoice",
        body="Hello",
        log_on_id=log_on,
        sender_type="CurrentUser",
    )


def test_emails_are_sent_in_one_call_logged_on_their_record(org: FakeOrg) -> None:
    acc = org.add("Account", Name="Acme")
    results = sink_for(org).write(
        [email("e1", "ann@example.com", acc), email("e2", "not-an-address", acc)]
    )
    assert outcomes(results) == [("applied", None), ("failed", "INVALID_EMAIL_ADDRESS")]
    # one lookup of what the org already logged, then one emailSimple call
    assert org.calls_by_kind == {"composite": 1, "email": 1}
    assert org.emails_sent == [
        {
            "emailAddresses": "ann@example.com",
            "emailSubject": "Your invoice",
            "emailBody": "Hello\n\n[sop-worker e1]",
            "logEmailOnSend": True,
            "relatedRecordId": acc,
            "senderType": "CurrentUser",
        }
    ]
    (logged,) = org.of("Task")
    assert (logged["WhatId"], logged["Subject"], logged["TaskSubtype"]) == (
        acc,
        "Email: Your invoice",
        "Email",
    )
    assert "[sop-worker e1]" in logged["Description"]


@pytest.mark.parametrize("enhanced_email", [False, True], ids=["task-logged", "enhanced-email"])
def test_a_lost_email_answer_is_settled_by_the_logged_email(
    org: FakeOrg, enhanced_email: bool
) -> None:
    org.enhanced_email = enhanced_email
    acc = org.add("Account", Name="Acme")
    org.fail(kind="email", drop=True)
    sink = sink_for(org)
    (result,) = sink.write([email("e1", "ann@example.com", acc)])
    assert (result.outcome, result.error_code) == (Outcome.SENT, "UNKNOWN_OUTCOME")
    assert len(org.emails_sent) == 1
    (rec,) = sink.reconcile([email("e1", "ann@example.com", acc)])
    assert rec is not None
    assert rec.outcome is Outcome.APPLIED
    logged = org.of("EmailMessage") if enhanced_email else org.of("Task")
    assert rec.sf_id == logged[0]["Id"]
    assert len(org.emails_sent) == 1


def test_an_email_salesforce_did_not_log_was_not_sent(org: FakeOrg) -> None:
    acc = org.add("Account", Name="Acme")
    org.fail(kind="email", status=502, error_code=None)  # a gateway error: outcome unknown
    sink = sink_for(org)
    (result,) = sink.write([email("e1", "ann@example.com", acc)])
    assert result.outcome is Outcome.SENT
    assert org.emails_sent == []
    assert sink.reconcile([email("e1", "ann@example.com", acc)]) == [None]  # safe to send


def test_an_email_the_org_logged_is_not_sent_again(org: FakeOrg) -> None:
    acc = org.add("Account", Name="Acme")
    org.enhanced_email = True
    sink_for(org).write([email("e1", "ann@example.com", acc)])
    # a run that lost its database plans the same email again
    (again,) = sink_for(org).write([email("e1", "ann@example.com", acc)])
    assert again.outcome is Outcome.APPLIED
    assert again.sf_id == org.of("EmailMessage")[0]["Id"]
    assert len(org.emails_sent) == 1


def test_an_email_with_no_record_to_log_it_on_is_not_sent(org: FakeOrg) -> None:
    (result,) = sink_for(org).write([email("e1", "ann@example.com", None)])
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "EMAIL_NOT_LOGGED")
    assert org.call_count == 0
    # one left "sent" by an older version, which did not log emails: never sent twice
    (rec,) = sink_for(org).reconcile([email("e1", "ann@example.com", None)])
    assert rec is not None
    assert rec.outcome is Outcome.SKIPPED


def convert(
    lead: str, key: str, status: str = "Closed - Converted", name: str | None = "Acme <&> Co"
) -> ConvertLead:
    return ConvertLead(
        **META,
        target=RecordRef("Lead", lead),
        key=key,
        converted_status=status,
        opportunity_name=name,
    )


def test_leads_are_converted_over_soap(org: FakeOrg) -> None:
    good = org.add("Lead", LastName="Good", Company="Acme")
    bad = org.add("Lead", LastName="Bad", Company="Globex")
    sink = sink_for(org)
    results = sink.write([convert(good, "c1"), convert(bad, "c2", status="Working - Contacted")])
    assert outcomes(results) == [("applied", None), ("failed", "INVALID_STATUS")]
    lead = org.get(good)
    assert lead is not None
    assert lead["IsConverted"] is True
    assert results[0].sf_id == lead["ConvertedOpportunityId"]
    assert org.get(lead["ConvertedOpportunityId"])["Name"] == "Acme <&> Co"  # type: ignore[index]
    assert org.calls_by_kind == {"soap": 1}
    assert sink.usage() is not None
    (after,) = sink.write([update("Lead", good, "u", Status="Working - Contacted")])
    assert after.error_code == "CANNOT_UPDATE_CONVERTED_LEAD"
    assert org.calls_by_kind == {"soap": 1}


def test_a_lost_conversion_is_reconciled_from_the_lead(org: FakeOrg) -> None:
    lead = org.add("Lead", LastName="L", Company="Acme")
    org.fail(kind="soap", drop=True)
    sink = sink_for(org)
    (sent,) = sink.write([convert(lead, "c1")])
    assert sent.outcome is Outcome.SENT
    (found,) = sink.reconcile([convert(lead, "c1")])
    assert found is not None
    assert found.outcome is Outcome.APPLIED
    assert found.sf_id == org.get(lead)["ConvertedOpportunityId"]  # type: ignore[index]


HOME_CARE = {"Type": "Home Care", "StageName": "Assessment Pending"}


def test_a_new_opportunity_gets_the_mapped_values_in_one_more_call(org: FakeOrg) -> None:
    leads = [org.add("Lead", LastName=f"L{i}", Company=f"Co {i}") for i in range(3)]
    org.validate(
        lambda obj, rec: (
            ("FIELD_CUSTOM_VALIDATION_EXCEPTION", "no home care for Co 2")
            if obj == "Opportunity" and rec.get("Name") == "Co 2" and rec.get("Type")
            else None
        )
    )
    sink = sink_for(org)
    actions = [
        dataclasses.replace(convert(lead, f"c{i}", name=f"Co {i}"), opportunity_values=HOME_CARE)
        for i, lead in enumerate(leads)
    ]
    assert sink.estimate_write_calls(actions) == 2  # the conversion call, then one update composite
    results = sink.write(actions)
    assert org.calls_by_kind == {"soap": 1, "composite": 1}
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 3  # the conversions stand
    for lead in leads[:2]:
        opp = org.get(org.get(lead)["ConvertedOpportunityId"])  # type: ignore[index]
        assert opp is not None
        assert (opp["Type"], opp["StageName"]) == ("Home Care", "Assessment Pending")
    assert results[0].message is None
    assert "FIELD_CUSTOM_VALIDATION_EXCEPTION" in (results[2].message or "")


def test_a_lost_conversion_gets_its_values_at_reconcile_unless_someone_edited_it(
    org: FakeOrg,
) -> None:
    first, second = (org.add("Lead", LastName=n, Company=n) for n in ("A", "B"))
    org.fail(kind="soap", drop=True, times=2)
    sink = sink_for(org)
    actions = [
        dataclasses.replace(convert(lead, f"c{lead}", name=lead), opportunity_values=HOME_CARE)
        for lead in (first, second)
    ]
    for action in actions:
        (sent,) = sink.write([action])
        assert sent.outcome is Outcome.SENT
    edited = org.get(second)["ConvertedOpportunityId"]  # type: ignore[index]
    org.edit(edited, StageName="Assessment Scheduled")  # a person moved it on meanwhile
    found = sink.reconcile(actions)
    assert [r.outcome for r in found if r] == [Outcome.APPLIED, Outcome.APPLIED]
    fresh = org.get(org.get(first)["ConvertedOpportunityId"])  # type: ignore[index]
    assert fresh is not None
    assert fresh["Type"] == "Home Care"
    assert org.get(edited)["StageName"] == "Assessment Scheduled"  # type: ignore[index]
    assert "not set" in (found[1].message or "")  # type: ignore[union-attr]


# -- assignment rules ----------------------------------------------------------------------------------
QUEUE = "00G000000000009AAA"
REP = "005000000000000777"


def sent_bodies(org: FakeOrg) -> list[tuple[dict[str, str], Any]]:
    """(headers, body) of every request the org received."""
    assert org._mock is not None
    return [(dict(c.request.headers), c.request.body) for c in org._mock.calls]


def test_no_write_lets_an_assignment_rule_move_a_record(org: FakeOrg) -> None:
    org.assign("Lead", QUEUE)
    org.assign("Case", QUEUE)
    org.default_case_owner = QUEUE
    org.task_trigger_updates_case = True
    lead, to_convert = (org.add("Lead", LastName=n, Company=n, OwnerId=REP) for n in ("A", "B"))
    case = org.add("Case", Subject="Rejected payment", Status="New", OwnerId=REP)
    account = org.add("Account", Name="Acme", OwnerId=REP)
    actions: list[Action] = [
        update("Lead", lead, "u-lead", Status="Working - Contacted"),
        comment(case, "c-case"),
        dataclasses.replace(task(case, "t-case"), target=RecordRef("Case", case)),
        CloseRecord(
            **META,
            target=RecordRef("Case", case),
            key="close-case",
            changes=(FieldChange("Status", "New", "Closed"),),
        ),
        convert(to_convert, "convert"),
        email("e", "a@example.com", account),
    ]
    results = sink_for(org).write(actions)
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    assert org.reassigned == []
    assert {org.get(rid)["OwnerId"] for rid in (lead, case, to_convert, account)} == {REP}  # type: ignore[index]
    # Every write carried the header where Salesforce reads it: the request, or for a
    # Composite, each subrequest that writes; SOAP in its AssignmentRuleHeader.
    for headers, body in sent_bodies(org):
        text = body.decode() if isinstance(body, bytes) else str(body or "")
        if "convertLead" in text:
            assert "<urn:useDefaultRule>false</urn:useDefaultRule>" in text
        elif '"compositeRequest"' in text:
            for sub in json.loads(text)["compositeRequest"]:
                expected = {} if sub["method"] == "GET" else {"Sforce-Auto-Assign": "FALSE"}
                assert sub.get("httpHeaders", {}) == expected
        elif text:
            assert headers.get("Sforce-Auto-Assign") == "FALSE"


def test_a_step_that_opts_in_lets_the_assignment_rule_run(org: FakeOrg) -> None:
    org.assign("Case", QUEUE)
    kept, returned = (org.add("Case", Subject=n, OwnerId=REP) for n in ("kept", "returned"))
    to_queue = dataclasses.replace(update("Case", returned, "back", Status="New"), auto_assign=True)
    actions: list[Action] = [update("Case", kept, "stay", Status="Working"), to_queue]
    sink = sink_for(org)
    assert sink.estimate_write_calls(actions) == 1  # two collections, one composite
    results = sink.write(actions)
    assert {r.outcome for r in results} == {Outcome.APPLIED}
    assert org.get(kept)["OwnerId"] == REP  # type: ignore[index]
    assert org.get(returned)["OwnerId"] == QUEUE  # type: ignore[index]
    assert org.calls_by_kind == {"composite": 1}


# -- dry run ---------------------------------------------------------------------------------------------
def test_a_read_only_sink_cannot_write(org: FakeOrg) -> None:
    opp = org.add("Opportunity", Name="a")
    sink = sink_for(org, read_only=True)
    assert opp in sink.current_state([RecordRef("Opportunity", opp)])  # reads still work
    with pytest.raises(DryRunWriteError):
        sink.write([update("Opportunity", opp, "k", NextStep="x")])
    assert org.writes() == []


def test_estimate_counts_lookups_emails_and_conversions(org: FakeOrg) -> None:
    sink = sink_for(org, key_field="")
    actions: list[Action] = [comment(f"500{i:012d}AAA", f"c{i}") for i in range(250)]
    actions += [email(f"e{i}", "a@b.c", "001000000000001AAA") for i in range(101)]
    actions += [convert(f"00Q{i:012d}AAA", f"l{i}") for i in range(3)]
    # 2 comment chunks -> 1 create composite; 250 parents -> 2 lookup queries, plus the
    # emails' Task and EmailMessage lookups -> 1 composite; 101 emails -> 2 calls;
    # 3 conversions -> 1 call
    assert sink.estimate_write_calls(actions) == 5


def test_session_lost_mid_write_keeps_what_was_done(org: FakeOrg) -> None:
    ids = [org.add("Opportunity", Name=f"O{i}") for i in range(1200)]  # 2 composites
    org.fail(
        kind="composite",
        skip=1,
        status=401,
        error_code="INVALID_SESSION_ID",
        message="Session expired or invalid",
    )
    sink = sink_for(org)
    results = sink.write(
        [update("Opportunity", rid, f"k{i}", NextStep="x") for i, rid in enumerate(ids)]
    )
    assert {r.outcome for r in results[:1000]} == {Outcome.APPLIED}
    assert {(r.outcome, r.error_code) for r in results[1000:]} == {
        (Outcome.PLANNED, "AUTH_STOPPED")
    }
    calls = org.call_count
    with pytest.raises(AuthError):
        sink.write([update("Opportunity", ids[0], "again", NextStep="y")])
    assert org.call_count == calls
