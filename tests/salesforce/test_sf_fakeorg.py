"""The fake org keeps Salesforce's rules, so tests against it mean something."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from worker.mapping import load_mapping
from worker.rules import rule_models
from worker.salesforce.soql import incremental_select

from .fakeorg import INSTANCE, FakeOrg

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "default.toml"

V = "/services/data/v66.0"


def call(org: FakeOrg, method: str, path: str, **kw: Any) -> requests.Response:
    token = org.issue_token()
    return requests.request(
        method, INSTANCE + path, headers={"Authorization": f"Bearer {token}"}, timeout=5, **kw
    )


def test_composite_limits(org: FakeOrg) -> None:
    q = {"method": "GET", "url": f"{V}/query/?q=SELECT+Id+FROM+Lead", "referenceId": "q"}
    six = call(
        org,
        "POST",
        f"{V}/composite",
        json={"compositeRequest": [dict(q, referenceId=f"q{i}") for i in range(6)]},
    )
    assert six.status_code == 400
    assert six.json()[0]["errorCode"] == "LIMIT_EXCEEDED"
    many = [{"method": "GET", "url": f"{V}/limits", "referenceId": f"l{i}"} for i in range(26)]
    assert call(org, "POST", f"{V}/composite", json={"compositeRequest": many}).status_code == 400


def test_long_text_cannot_be_filtered(org: FakeOrg) -> None:
    r = call(
        org, "GET", f"{V}/query/", params={"q": "SELECT Id FROM Task WHERE Description LIKE '%x%'"}
    )
    assert r.status_code == 400
    assert r.json()[0]["errorCode"] == "INVALID_FIELD"


def test_malformed_soql(org: FakeOrg) -> None:
    r = call(org, "GET", f"{V}/query/", params={"q": "SELECT Id FROM Lead WHERE Name = 'x"})
    assert r.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_all_or_none_true_rolls_everything_back(org: FakeOrg) -> None:
    a = org.add("Opportunity", Name="a")
    b = org.add("Opportunity", Name="b")
    body = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Opportunity"}, "Id": a, "NextStep": "x"},
            {"attributes": {"type": "Opportunity"}, "Id": b, "Bogus__c": 1},
        ],
    }
    results = call(org, "PATCH", f"{V}/composite/sobjects", json=body).json()
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert org.get(a).get("NextStep") is None  # type: ignore[union-attr]


def test_an_id_twice_in_one_collection_is_refused_each_time(org: FakeOrg) -> None:
    a = org.add("Opportunity", Name="a")
    b = org.add("Opportunity", Name="b")
    body = {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Opportunity"}, "Id": a, "NextStep": "x"},
            {"attributes": {"type": "Opportunity"}, "Id": b, "NextStep": "y"},
            {"attributes": {"type": "Opportunity"}, "Id": a, "Name": "z"},
        ],
    }
    results = call(org, "PATCH", f"{V}/composite/sobjects", json=body).json()
    assert [r["success"] for r in results] == [False, True, False]
    assert results[0]["errors"][0] == {
        "statusCode": "INVALID_FIELD",
        "message": f"duplicate id in list: {a}",
        "fields": [],
    }
    assert org.get(a).get("NextStep") is None  # type: ignore[union-attr]
    assert org.get(b)["NextStep"] == "y"  # type: ignore[index]


def test_limit_header_and_daily_limit(org: FakeOrg) -> None:
    org.daily_limit, org.used = 3, 1
    r = call(org, "GET", f"{V}/limits")
    assert r.headers["Sforce-Limit-Info"] == "api-usage=2/3"
    call(org, "GET", f"{V}/limits")
    r = call(org, "GET", f"{V}/limits")
    assert r.status_code == 403
    assert r.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"


def test_faults_skip_then_fire(org: FakeOrg) -> None:
    org.fail(kind="limits", skip=1, times=1, status=500, error_code="UNKNOWN_EXCEPTION")
    assert [call(org, "GET", f"{V}/limits").status_code for _ in range(3)] == [200, 500, 200]
    org.fail(kind="limits", exception=requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        call(org, "GET", f"{V}/limits")


def test_unauthorised_calls_get_invalid_session(org: FakeOrg) -> None:
    r = requests.get(INSTANCE + f"{V}/limits", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert r.status_code == 401
    assert r.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]


def test_synthetic_records_are_made_on_demand(org: FakeOrg) -> None:
    org.add_synthetic(
        "Lead",
        5,
        lambda i, rid: {"LastName": f"S{i}", "SystemModstamp": "2026-11-01T00:00:00.000+0000"},
    )
    rid = org.synthetic_id("Lead", 3)
    assert org.get(rid)["LastName"] == "S3"  # type: ignore[index]
    org.edit(rid, LastName="edited")
    assert [r["LastName"] for r in org.of("Lead")] == ["S0", "S1", "S2", "edited", "S4"]


def test_a_query_naming_ids_reads_only_those_rows_and_answers_as_a_scan_would(
    org: FakeOrg,
) -> None:
    made: list[int] = []

    def make(i: int, rid: str) -> dict[str, Any]:
        made.append(i)
        return {"LastName": f"S{i % 3}", "SystemModstamp": "2026-11-01T00:00:00.000+0000"}

    org.add_synthetic("Lead", 1000, make)
    ids = [org.synthetic_id("Lead", i) for i in (7, 8, 9, 500)]
    org.edit(ids[0], IsDeleted=True)
    listed = ", ".join(f"'{i}'" for i in [*ids, "00Q000000000000ZZZ"])

    def names(where: str, resource: str = "query") -> list[str]:
        soql = f"SELECT Id, LastName FROM Lead WHERE {where} ORDER BY Id"  # noqa: S608
        body = call(org, "GET", f"{V}/{resource}/", params={"q": soql}).json()
        return [r["Id"] for r in body["records"]]

    made.clear()
    # Looked up by Id (the deleted one only through queryAll), the other terms still apply.
    assert names(f"Id IN ({listed}) AND LastName = 'S2'") == [ids[1], ids[3]]
    assert names(f"Id IN ({listed})", "queryAll") == ids
    assert names(f"Id = '{ids[3]}' OR (Id IN ({listed}) AND LastName != 'S2')") == ids[2:]
    assert len(made) < 30  # the rows named (each made again to be answered), not a thousand
    # An OR with a term on another field can match any row: every row is tested.
    assert names(f"Id IN ({listed}) OR LastName = 'S1'")[:2] == [
        org.synthetic_id("Lead", 1),
        org.synthetic_id("Lead", 4),
    ]
    assert len(made) > 1000


@pytest.mark.parametrize("enhanced_email", [False, True], ids=["task-logged", "enhanced-email"])
def test_emailsimple_logs_only_what_is_asked_to_be_logged(
    org: FakeOrg, enhanced_email: bool
) -> None:
    org.enhanced_email = enhanced_email
    acc = org.add("Account", Name="Acme")
    email = {"emailAddresses": "a@b.c", "emailSubject": "Hi", "emailBody": "Body [k]"}
    inputs = [email, {**email, "logEmailOnSend": True, "relatedRecordId": acc}]
    r = call(org, "POST", f"{V}/actions/standard/emailSimple", json={"inputs": inputs})
    assert [i["isSuccess"] for i in r.json()] == [True, True]
    (task,) = org.of("Task")  # the unlogged email left no trace
    assert (task["WhatId"], task["Subject"], task["TaskSubtype"], task["Status"]) == (
        acc,
        "Email: Hi",
        "Email",
        "Completed",
    )
    if enhanced_email:
        (message,) = org.of("EmailMessage")
        assert (message["RelatedToId"], message["TextBody"], message["ActivityId"]) == (
            acc,
            "Body [k]",
            task["Id"],
        )
        assert task.get("Description") is None  # the body is in the EmailMessage only
    else:
        assert org.of("EmailMessage") == []
        assert task["Description"].endswith("Body:\nBody [k]")


QUEUE = "00G000000000009AAA"
PERSON = "005000000000000777"


def _lead_update(rid: str) -> dict[str, Any]:
    return {"records": [{"attributes": {"type": "Lead"}, "Id": rid, "City": "Reno"}]}


def test_assignment_rules_run_unless_the_request_says_false(org: FakeOrg) -> None:
    org.assign("Lead", QUEUE)
    lead = org.add("Lead", LastName="L", OwnerId=PERSON)
    plain = call(org, "PATCH", f"{V}/composite/sobjects", json=_lead_update(lead))
    assert plain.json()[0]["success"] is True
    assert org.get(lead)["OwnerId"] == QUEUE  # type: ignore[index]  # absent means TRUE
    org.edit(lead, OwnerId=PERSON)
    token = org.issue_token()
    kept = requests.patch(
        INSTANCE + f"{V}/composite/sobjects",
        headers={"Authorization": f"Bearer {token}", "Sforce-Auto-Assign": "false"},
        json=_lead_update(lead),
        timeout=5,
    )
    assert kept.json()[0]["success"] is True
    assert org.get(lead)["OwnerId"] == PERSON  # type: ignore[index]
    assert org.reassigned == [(lead, PERSON, QUEUE)]


def test_a_case_goes_to_the_default_case_owner_without_an_active_rule(org: FakeOrg) -> None:
    org.default_case_owner = QUEUE
    case = org.add("Case", Subject="s", OwnerId=PERSON)
    body = {"records": [{"attributes": {"type": "Case"}, "Id": case, "Status": "Working"}]}
    call(org, "PATCH", f"{V}/composite/sobjects", json=body)
    assert org.get(case)["OwnerId"] == QUEUE  # type: ignore[index]


def test_subrequests_follow_their_own_headers_not_the_composite_calls(org: FakeOrg) -> None:
    org.assign("Lead", QUEUE)
    org.task_trigger_updates_case = True
    org.default_case_owner = QUEUE
    lead = org.add("Lead", LastName="L", OwnerId=PERSON)
    case = org.add("Case", Subject="s", OwnerId=PERSON)
    task = {"attributes": {"type": "Task"}, "Subject": "x", "WhatId": case, "Status": "Completed"}

    def sub(ref: str, method: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        out = {"method": method, "url": f"{V}/composite/sobjects", "referenceId": ref}
        return {**out, "body": body, "httpHeaders": headers} if headers else {**out, "body": body}

    token = org.issue_token()
    answer = requests.post(
        INSTANCE + f"{V}/composite",
        headers={"Authorization": f"Bearer {token}", "Sforce-Auto-Assign": "FALSE"},
        json={
            "compositeRequest": [
                sub("lead", "PATCH", _lead_update(lead)),  # the call's header is not inherited
                sub("task", "POST", {"records": [task]}, **{"Sforce-Auto-Assign": "FALSE"}),
            ]
        },
        timeout=5,
    )
    assert [r["httpStatusCode"] for r in answer.json()["compositeResponse"]] == [200, 200]
    assert org.get(lead)["OwnerId"] == QUEUE  # type: ignore[index]
    assert org.get(case)["OwnerId"] == PERSON  # type: ignore[index]  # the trigger kept FALSE
    untouched = dict(task, Subject="y")
    call(org, "POST", f"{V}/composite/sobjects", json={"records": [untouched]})
    assert org.get(case)["OwnerId"] == QUEUE  # type: ignore[index]  # the trigger ran it
    refused = call(
        org,
        "POST",
        f"{V}/composite",
        json={"compositeRequest": [sub("t", "POST", {"records": [task]}, Accept="text/xml")]},
    )
    assert refused.status_code == 400


def test_replication_probes_ignore_seconds_and_keep_their_reach(org: FakeOrg) -> None:
    kept = org.add("Lead", LastName="Kept")  # stamped 10:00:01
    gone = org.add("Lead", LastName="Gone")
    org.delete(gone)

    def probe(kind: str, start: str, end: str) -> requests.Response:
        return call(org, "GET", f"{V}/sobjects/Lead/{kind}/", params={"start": start, "end": end})

    # 10:00:59 is read as 10:00:00: both rows are in [10:00, 10:01)
    updated = probe("updated", "2026-11-23T10:00:59+00:00", "2026-11-23T10:01:30+00:00")
    assert updated.json()["ids"] == [kept]
    deleted = probe("deleted", "2026-11-23T10:00:00+00:00", "2026-11-23T10:01:00+00:00")
    assert [r["id"] for r in deleted.json()["deletedRecords"]] == [gone]
    assert (
        probe("updated", "2026-11-23T10:01:00+00:00", "2026-11-23T10:02:00+00:00").json()["ids"]
        == []
    )
    for kind, start, end in (
        ("updated", "2026-11-23T10:00:10+00:00", "2026-11-23T10:00:50+00:00"),  # one minute
        ("updated", "2026-10-20T10:00:00+00:00", "2026-11-23T10:01:00+00:00"),  # > 30 days
        ("deleted", "2026-11-05T10:00:00+00:00", "2026-11-23T10:01:00+00:00"),  # > 15 days
    ):
        refused = probe(kind, start, end)
        assert refused.status_code == 400
        assert refused.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"


@pytest.mark.parametrize("out_of_office", ["OutOfOffice", "events"])
def test_every_field_the_default_mapping_reads_is_in_the_fake_orgs_schema(
    org: FakeOrg, tmp_path: Path, out_of_office: str
) -> None:
    """The pull's query of each object, with every field the mapping names, is accepted
    as a real org accepts it (Event has Type and ShowAs there); a field missing from the
    fake org's schema would fail a bench or a test run with INVALID_FIELD."""
    text = MAPPING.read_text(encoding="utf-8")
    mapping_file = tmp_path / "m.toml"
    mapping_file.write_text(
        text.replace('out_of_office = "OutOfOffice"', f'out_of_office = "{out_of_office}"'),
        encoding="utf-8",
    )
    mapping = load_mapping(mapping_file, rule_models())
    for sobject, names in mapping.object_fields().items():
        replication = mapping.common.replication(sobject)
        soql = incremental_select(sobject, names, {}, None, None, replication=replication)
        answer = call(org, "GET", f"{V}/queryAll/", params={"q": soql})
        assert answer.status_code == 200, (sobject, answer.text)
    if out_of_office == "events":
        assert "ShowAs" in mapping.object_fields()["Event"]
