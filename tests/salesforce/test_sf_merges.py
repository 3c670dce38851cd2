"""Merges through the sink against the fake org (SOAP merge(), its snapshot first, lost
answers reconciled from queryAll), the fake org's own strictness, and undo-merge from the
snapshot (undelete(), the master's values, the children re-pointed) with its refusals."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from worker.actions import MergeRecords, Outcome
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, evaluate_rule
from worker.salesforce.client import SalesforceClient
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.soap import MergeRequest, merge_envelope, soap_path
from worker.salesforce.undo_merge import UndoRefused, apply_undo, plan_undo

from .fakeorg import FakeOrg
from .sfhelpers import make_client

RULE = next(r for r in ALL_RULES if r.id == "lead_dedupe")
KEY_FIELD = "SOP_Worker_Key__c"
SALES = {"DeveloperName": "Sales"}
EMAILS = (
    "Jordan.Blake@Globex.com",
    "jordan.blake+events@globex.com",
    " JORDAN.BLAKE@GLOBEX.COM ",
    "jordan.blake@globex.com",
    "Jordan.Blake+webinar@globex.com",
)


def add_lead(org: FakeOrg, email: str, **fields: Any) -> str:
    values = {
        "FirstName": "Jordan",
        "LastName": "Blake",
        "Company": "Globex",
        "Email": email,
        "RecordType": SALES,
        "HasOptedOutOfEmail": False,
        "DoNotCall": False,
        **fields,
    }
    return org.add("Lead", **values)


def five(org: FakeOrg) -> list[str]:
    """A group of five duplicates: the fourth has the most activity (the master)."""
    ids = [
        add_lead(org, EMAILS[0], Phone="+14155550100"),
        add_lead(org, EMAILS[1], LeadSource="Trade Show"),
        add_lead(org, EMAILS[2], HasOptedOutOfEmail=True),
        add_lead(org, EMAILS[3], Title="CTO"),
        add_lead(org, EMAILS[4]),
    ]
    for _ in range(2):
        org.add("Task", Subject="Call", WhoId=ids[3], Status="Completed")
    return ids


def merges(org: FakeOrg, mapping: LoadedMapping, **overrides: Any) -> list[MergeRecords]:
    """The rule's merge actions over the org's leads and tasks as a pull would cache them."""
    rows = [
        {"attributes": {"type": sobject}, **record}
        for sobject in ("Lead", "Task", "User")
        for record in org.of(sobject)
    ]
    settings = mapping.rules["lead_dedupe"].model_copy(update={"merge": True, **overrides})
    snapshot = Snapshot.build(Record.from_json(r) for r in rows)
    found = evaluate_rule(RULE, snapshot, dt.date(2026, 11, 23), settings, mapping.common)
    return [a for e in found for a in e.actions if isinstance(a, MergeRecords)]


def sink_for(org: FakeOrg) -> tuple[SalesforceSink, SalesforceClient]:
    client = make_client(org)
    return SalesforceSink(client, task_key_field=KEY_FIELD), client


def soap_bodies(org: FakeOrg) -> list[str]:
    assert org._mock is not None
    return [
        c.request.body.decode() if isinstance(c.request.body, bytes) else str(c.request.body)
        for c in org._mock.calls
        if "/services/Soap/" in (c.request.url or "")
    ]


def test_a_group_of_five_is_two_merge_requests_into_one_master(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    ids = five(org)
    campaign = org.add("Campaign", Name="Webinar")
    member = org.add("CampaignMember", CampaignId=campaign, LeadId=ids[0], Status="Sent")
    actions = merges(org, mapping)
    assert len(actions) == 2
    assert {a.target.id for a in actions} == {ids[3]}  # one master
    assert sorted(v for a in actions for v in a.victim_ids) == sorted(ids[:3] + ids[4:])
    assert all(len(a.victim_ids) <= 2 for a in actions)

    sink, _ = sink_for(org)
    before = org.call_count
    results = sink.write(actions)
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 2, results
    # the leads, the children (one composite each), the snapshots, one merge() call
    assert org.call_count - before == sink.estimate_write_calls(actions) == 4
    assert "undo with: sop-worker undo-merge" in (results[0].message or "")
    assert org.calls_by_kind["soap"] == 1  # both requests in one merge() call
    assert org.merges_received == 2
    body = soap_bodies(org)[0]
    assert "<urn:useDefaultRule>false</urn:useDefaultRule>" in body  # no assignment rule
    for victim in ids[:3] + ids[4:]:
        record = org.get(victim) or {}
        assert record["IsDeleted"] is True
        assert record["MasterRecordId"] == ids[3]
    master = org.get(ids[3]) or {}
    assert master["Phone"] == "+14155550100"  # filled from a victim
    assert master["HasOptedOutOfEmail"] is True  # an unsubscribe is never lost
    assert master["LeadSource"] == "Trade Show"
    assert org.get(member)["LeadId"] == ids[3]  # type: ignore[index]
    snapshots = org.of("SOP_Merge_Snapshot__c")
    assert sorted(s["Merge_Key__c"] for s in snapshots) == sorted(a.key for a in actions)
    first = json.loads(next(s for s in snapshots if ids[0] in s["Merge_Key__c"])["Body__c"])
    assert first["master"]["values"]["Phone"] is None  # the master as it was
    assert {c["Id"] for c in first["children"]} == {member}
    # a rerun (a lost database) finds the merges done: nothing is sent again
    again = sink.write(actions)
    assert [r.outcome for r in again] == [Outcome.APPLIED] * 2
    assert org.merges_received == 2


def test_a_victim_converted_after_planning_is_not_merged(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    a, b = add_lead(org, "sam@initech.com"), add_lead(org, "Sam@Initech.com")
    (action,) = merges(org, mapping)
    victim = action.victim_ids[0]
    org.edit(victim, IsConverted=True, Status="Closed - Converted")
    sink, _ = sink_for(org)
    (result,) = sink.write([action])
    assert result.outcome is Outcome.CONFLICT
    assert result.error_code == "LEAD_CONVERTED"
    assert victim in (result.message or "")
    assert "converted" in (result.message or "")
    assert org.merges_received == 0
    assert not (org.get(a) or {}).get("IsDeleted")
    assert not (org.get(b) or {}).get("IsDeleted")


def test_the_fake_org_refuses_what_salesforce_refuses(org: FakeOrg) -> None:
    leads = [add_lead(org, f"x{i}@initech.com") for i in range(4)]
    converted = add_lead(org, "c@initech.com", IsConverted=True)
    client = make_client(org)

    def merge(master: str, *victims: str) -> str:
        def envelope(session_id: str) -> str:
            body = merge_envelope(session_id, [MergeRequest("Lead", master, victims[:2])])
            extra = "".join(
                f"<urn:recordToMergeIds>{v}</urn:recordToMergeIds>" for v in victims[2:]
            )
            return body.replace("</urn:request>", extra + "</urn:request>")

        response = client.request(
            "POST",
            soap_path(client.api_version),
            kind="soap",
            body_factory=envelope,
            headers={"Content-Type": "text/xml", "SOAPAction": "merge"},
            idempotent=False,
        )
        return response.text

    assert "LIMIT_EXCEEDED" in merge(leads[0], *leads[1:])  # four records in one request
    assert "CANNOT_UPDATE_CONVERTED_LEAD" in merge(leads[0], converted)
    assert org.of("Lead", deleted=True) == org.of("Lead")  # nothing merged
    with pytest.raises(ValueError, match="1 or 2 records"):
        merge_envelope("x", [MergeRequest("Lead", leads[0], tuple(leads[1:]))])


def test_a_lost_merge_answer_is_reconciled_from_queryall_never_resent(
    org: FakeOrg, mapping: LoadedMapping
) -> None:
    add_lead(org, "sam@initech.com")
    add_lead(org, "Sam@Initech.com")
    (action,) = merges(org, mapping)
    org.fail(kind="soap", drop=True, times=1)  # merged, then the answer is lost
    sink, _ = sink_for(org)
    (result,) = sink.write([action])
    assert result.outcome is Outcome.SENT
    assert org.merges_received == 1
    (found,) = sink.reconcile([action])
    assert found is not None
    assert found.outcome is Outcome.APPLIED
    assert "queryAll" in (found.message or "")
    assert org.merges_received == 1  # never sent again


def test_duplicates_detected_fails_that_merge_alone(org: FakeOrg, mapping: LoadedMapping) -> None:
    add_lead(org, "sam@initech.com", Phone="+14155550111")
    add_lead(org, "Sam@Initech.com")
    add_lead(org, "kim@initech.com", Phone="+14155550122")
    add_lead(org, "KIM@initech.com")

    def duplicate_rule(sobject: str, record: Any) -> tuple[str, str] | None:
        if sobject == "Lead" and record.get("Phone") == "+14155550111":
            return "DUPLICATES_DETECTED", "Use one of these records?"
        return None

    org.validate(duplicate_rule)
    actions = merges(org, mapping, fill_empty_fields=("Phone",))
    sink, _ = sink_for(org)
    results = {r.key: r for r in sink.write(actions)}
    by_email = {a.reason.split()[2].rstrip(":"): results[a.key] for a in actions}
    assert by_email["sam@initech.com"].outcome is Outcome.FAILED
    assert by_email["sam@initech.com"].error_code == "DUPLICATES_DETECTED"
    assert by_email["kim@initech.com"].outcome is Outcome.APPLIED


def test_undo_merge_round_trip(org: FakeOrg, mapping: LoadedMapping) -> None:
    master_id = add_lead(org, "sam@initech.com", Title="CFO")
    victim = add_lead(org, "Sam@Initech.com", Phone="+14155550133", HasOptedOutOfEmail=True)
    org.add("Task", Subject="Call", WhoId=master_id, Status="Completed")  # the master wins
    task = org.add("Task", Subject="Intro", WhoId=victim, Status="Completed")
    event = org.add("Event", Subject="Demo", WhoId=victim)
    campaign = org.add("Campaign", Name="Webinar")
    member = org.add("CampaignMember", CampaignId=campaign, LeadId=victim, Status="Responded")
    (action,) = merges(org, mapping, fill_empty_fields=("Phone",))
    assert action.target.id == master_id
    sink, client = sink_for(org)
    assert sink.write([action])[0].outcome is Outcome.APPLIED
    assert (org.get(master_id) or {})["Phone"] == "+14155550133"
    assert (org.get(task) or {})["WhoId"] == master_id

    plan = plan_undo(client, action.key, org.now)
    writes_before = len(org.writes())
    steps = plan.lines()  # what --dry-run shows
    assert steps[0] == f"undelete Lead {victim}"
    assert f"master {master_id}: Phone '+14155550133' -> None" in steps
    assert f"master {master_id}: HasOptedOutOfEmail True -> False" in steps
    assert f"Task {task}: WhoId {master_id} -> {victim}" in steps
    assert f"Event {event}: WhoId {master_id} -> {victim}" in steps
    assert len(org.writes()) == writes_before  # planning writes nothing

    apply_undo(client, plan)
    assert (org.get(victim) or {})["IsDeleted"] is False
    back = org.get(master_id) or {}
    assert back["Phone"] is None
    assert back["HasOptedOutOfEmail"] is False
    assert (org.get(task) or {})["WhoId"] == victim
    assert (org.get(event) or {})["WhoId"] == victim
    members = [m for m in org.of("CampaignMember") if m["CampaignId"] == campaign]
    assert [(m["LeadId"], m["Status"]) for m in members] == [(victim, "Responded")]
    assert (org.get(member) or {})["IsDeleted"] is True  # the one moved to the master
    with pytest.raises(UndoRefused, match="not deleted"):
        plan_undo(client, action.key, org.now)  # undone already


def test_undo_merge_refuses_past_the_recycle_window(org: FakeOrg, mapping: LoadedMapping) -> None:
    add_lead(org, "sam@initech.com")
    add_lead(org, "Sam@Initech.com")
    (action,) = merges(org, mapping)
    sink, client = sink_for(org)
    sink.write([action])
    with pytest.raises(UndoRefused, match="15-day recycle window"):
        plan_undo(client, action.key, org.now + dt.timedelta(days=16))
    org.now += dt.timedelta(days=16)
    org.empty_recycle_bin()
    with pytest.raises(UndoRefused, match="no longer in the recycle bin"):
        plan_undo(client, action.key, org.now)


def test_undo_merge_refuses_once_the_master_changed(org: FakeOrg, mapping: LoadedMapping) -> None:
    add_lead(org, "sam@initech.com")
    add_lead(org, "Sam@Initech.com")
    (action,) = merges(org, mapping)
    sink, client = sink_for(org)
    sink.write([action])
    org.now += dt.timedelta(hours=1)
    org.edit(action.target.id, Title="VP Finance")
    with pytest.raises(UndoRefused, match="changed since the merge"):
        plan_undo(client, action.key, org.now)
    assert org.of("Lead", deleted=True) != org.of("Lead")  # the victim stays merged
