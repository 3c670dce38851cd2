"""SOP 004 duplicate check: email groups and their master, survivorship, contacts by email,
accounts by domain, name and fuzzy name with a supporting field, and idempotence."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.actions import CreateTask, MergeRecords, UpdateRecord
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule
from worker.rules.lead_dedupe import MergePlan, email_key, merge_plan

from .declared import walk_demo

RULE = next(r for r in ALL_RULES if r.id == "lead_dedupe")
DAY = dt.date(2026, 11, 23)
OWNER = "005TstD000000001AAA"


def lead(n: int, **fields: Any) -> dict[str, Any]:
    base = {
        "attributes": {"type": "Lead"},
        "Id": f"00QTstD00000000{n}AAA",
        "FirstName": "Jordan",
        "LastName": "Blake",
        "Name": "Jordan Blake",
        "Company": "Globex",
        "Email": f"person{n}@example{n}.org",
        "Phone": None,
        "Title": None,
        "Country": "US",
        "LeadSource": None,
        "HasOptedOutOfEmail": False,
        "DoNotCall": False,
        "RecordType": {"DeveloperName": "Sales"},
        "IsConverted": False,
        "OwnerId": OWNER,
        "Matched_Account__c": None,
        "Account_Match_Tier__c": None,
        "Account_Match_Evidence__c": None,
        "CreatedDate": f"2026-11-{10 + n:02d}T10:00:00.000+0000",
        "SystemModstamp": "2026-11-22T10:00:00.000+0000",
    }
    return {**base, **fields}


def account(n: int, name: str, website: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "attributes": {"type": "Account"},
        "Id": f"001TstD00000000{n}AAA",
        "Name": name,
        "Website": website,
        "Phone": None,
        "BillingCountry": None,
        **fields,
    }


def user(active: bool = True, uid: str = OWNER) -> dict[str, Any]:
    return {"attributes": {"type": "User"}, "Id": uid, "IsActive": active}


def run(
    mapping: LoadedMapping, *records: dict[str, Any], **overrides: Any
) -> dict[str, Evaluation]:
    settings = mapping.rules["lead_dedupe"].model_copy(update=overrides)
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    return {e.target.id: e for e in evaluate_rule(RULE, snapshot, DAY, settings, mapping.common)}


def plan_of(mapping: LoadedMapping, *records: dict[str, Any]) -> MergePlan:
    settings = mapping.rules["lead_dedupe"]
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    leads = [r for r in snapshot.of("Lead")]
    return merge_plan(leads, snapshot, settings)  # type: ignore[arg-type]


def updates(evaluation: Evaluation) -> dict[str, Any]:
    return {
        c.field: c.after
        for a in evaluation.actions
        if isinstance(a, UpdateRecord)
        for c in a.changes
    }


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Jo@Acme.com", " jo@acme.COM "),  # case and whitespace
        ("jo+news@acme.com", "jo@acme.com"),  # plus-addressing
        ("j.o.smith@gmail.com", "josmith@gmail.com"),  # dots on a dotless domain
        ("jo@bücher.de", "jo@xn--bcher-kva.de"),  # an IDN domain, Unicode or ASCII
    ],
)
def test_email_variants_share_a_key(mapping: LoadedMapping, a: str, b: str) -> None:
    settings = mapping.rules["lead_dedupe"]
    assert email_key(a, settings) == email_key(b, settings) is not None  # type: ignore[arg-type]


def test_dots_count_on_other_domains(mapping: LoadedMapping) -> None:
    settings = mapping.rules["lead_dedupe"]
    assert email_key("j.smith@acme.com", settings) != email_key("jsmith@acme.com", settings)  # type: ignore[arg-type]


def test_five_duplicates_one_master_two_merge_requests(mapping: LoadedMapping) -> None:
    group = [
        lead(1, Email="Jordan.Blake@Globex.com", Phone="+14155550100"),
        lead(2, Email="jordan.blake+events@globex.com", LeadSource="Trade Show"),
        lead(3, Email=" JORDAN.BLAKE@GLOBEX.COM ", HasOptedOutOfEmail=True),
        lead(4, Email="jordan.blake@globex.com", Title="CTO"),
        lead(5, Email="Jordan.Blake+webinar@globex.com"),
    ]
    tasks = [
        {"attributes": {"type": "Task"}, "Id": f"00TTstD00000000{i}AAA", "WhoId": group[3]["Id"]}
        for i in (1, 2)
    ]
    plan = plan_of(mapping, *group, *tasks, user())
    assert plan.master == group[3]["Id"]  # most activity
    assert len(plan.requests) == 2
    assert all(len(r) <= 3 and r[0] == plan.master for r in plan.requests)
    assert sorted(v for r in plan.requests for v in r[1:]) == sorted(
        g["Id"] for g in group if g["Id"] != plan.master
    )
    # fill empty, opt-outs OR-ed, earliest Lead Source (lead 1 is earliest but has none)
    assert plan.values == {
        "Phone": "+14155550100",
        "HasOptedOutOfEmail": True,
        "LeadSource": "Trade Show",
    }
    found = run(mapping, *group, *tasks, user())
    assert {e.batch for e in found.values()} == {"email:jordan.blake@globex.com"}
    assert "merged into " + plan.master in found[group[0]["Id"]].why
    assert "master;" in found[plan.master].why
    assert "2 merge request(s)" in found[plan.master].why


def test_without_activity_the_oldest_wins_then_an_active_owner(mapping: LoadedMapping) -> None:
    old = lead(1, Email="a@b.com")
    new = lead(2, Email="A@b.com")
    assert plan_of(mapping, old, new, user()).master == old["Id"]
    settings = mapping.rules["lead_dedupe"].model_copy(
        update={"master_policy": ("active_owner", "oldest")}
    )
    inactive = lead(1, Email="a@b.com", OwnerId="005TstD000000009AAA")
    snapshot = Snapshot.build(
        Record.from_json(r) for r in (inactive, new, user(), user(False, "005TstD000000009AAA"))
    )
    chosen = merge_plan(list(snapshot.of("Lead")), snapshot, settings)  # type: ignore[arg-type]
    assert chosen.master == new["Id"]
    assert "inactive owner" in chosen.describe(new["Id"])


def test_converted_leads_are_never_grouped(mapping: LoadedMapping) -> None:
    found = run(mapping, lead(1, Email="a@b.com"), lead(2, Email="a@b.com", IsConverted=True))
    assert list(found) == ["00QTstD000000001AAA"]
    assert "merge" not in found["00QTstD000000001AAA"].why


def test_account_by_email_domain_with_tier_and_evidence(mapping: LoadedMapping) -> None:
    found = run(
        mapping,
        lead(1, Email="jo@mail.globex.com", Company="Something Else"),
        account(1, "Globex Corporation", "https://www.globex.com/about"),
    )
    evaluation = found["00QTstD000000001AAA"]
    assert updates(evaluation) == {
        "Matched_Account__c": "001TstD000000001AAA",
        "Account_Match_Tier__c": "domain",
        "Account_Match_Evidence__c": "email domain globex.com = website",
    }


def test_a_generic_domain_never_links_an_account(mapping: LoadedMapping) -> None:
    found = run(
        mapping,
        lead(1, Email="jo@gmail.com", Company="Nobody"),
        account(1, "Google", "https://gmail.com"),
    )
    assert updates(found["00QTstD000000001AAA"]) == {}


def test_account_by_company_key(mapping: LoadedMapping) -> None:
    found = run(mapping, lead(1, Company="Acme, Inc. (EMEA)"), account(1, "ACME Inc"))
    assert updates(found["00QTstD000000001AAA"])["Account_Match_Tier__c"] == "name"


def test_fuzzy_company_needs_a_supporting_field(mapping: LoadedMapping) -> None:
    fuzzy_lead = lead(1, Company="Umbrella Pharmaceuticals", Country="US")
    with_support = run(
        mapping, fuzzy_lead, account(1, "Umbrella Pharmaceutical", BillingCountry="USA")
    )
    got = updates(with_support["00QTstD000000001AAA"])
    assert got["Account_Match_Tier__c"] == "fuzzy"
    assert "same country US" in got["Account_Match_Evidence__c"]
    without = run(mapping, fuzzy_lead, account(1, "Umbrella Pharmaceutical", BillingCountry="DE"))
    assert updates(without["00QTstD000000001AAA"]) == {}


def test_two_accounts_at_one_tier_link_to_none(mapping: LoadedMapping) -> None:
    found = run(mapping, lead(1, Company="Acme"), account(1, "Acme Inc"), account(2, "ACME LLC"))
    evaluation = found["00QTstD000000001AAA"]
    assert updates(evaluation) == {}
    assert "ambiguous: 2 accounts match by name" in evaluation.why


def test_a_contact_with_the_email_gets_one_task(mapping: LoadedMapping) -> None:
    contact = {
        "attributes": {"type": "Contact"},
        "Id": "003TstD000000001AAA",
        "Name": "Maria Lopez",
        "Email": "Maria.Lopez@initech.com",
        "AccountId": "001TstD000000001AAA",
        "Account": {"Name": "Initech"},
    }
    record = lead(1, Email="maria.lopez+web@Initech.com", Name="Maria L")
    found = run(mapping, record, contact)
    (task,) = [a for a in found[record["Id"]].actions if isinstance(a, CreateTask)]
    assert task.who_id == record["Id"]
    assert "Maria Lopez" in task.subject
    org = {r["Id"]: r for r in (record, contact)}
    apply_actions(
        org,
        found[record["Id"]].actions,
        dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC),
        "SOP_Worker_Key__c",
    )
    again = run(mapping, *org.values())
    assert again[record["Id"]].actions == ()


def test_possible_duplicates_are_listed_never_merged(mapping: LoadedMapping) -> None:
    a = lead(1, Email="jb@globex.com", Phone="+14155550100")
    b = lead(2, Email="jordan@other.com", Phone="(415) 555-0100", FirstName="Jordon")
    c = lead(3, Email="x@y.com", Phone="+14155550100", FirstName="Pat", LastName="Lee")
    found = run(mapping, a, b, c)
    assert "possible duplicate 00QTstD000000002AAA" in found[a["Id"]].why
    assert "00QTstD000000003AAA" not in found[a["Id"]].why
    assert all(not e.actions or "merge" not in e.why for e in found.values())


def test_a_second_run_plans_nothing(mapping: LoadedMapping) -> None:
    org = {
        r["Id"]: r
        for r in (
            lead(1, Email="jo@globex.com"),
            lead(2, Company="Acme"),
            account(1, "Globex", "globex.com"),
            account(2, "Acme Corp"),
        )
    }
    first = [a for e in run(mapping, *org.values()).values() for a in e.actions]
    assert len(first) == 2
    apply_actions(org, first, dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC), "SOP_Worker_Key__c")
    assert all(e.actions == () for e in run(mapping, *org.values()).values())
    assert all(e.verdict is Verdict.DONE for e in run(mapping, *org.values()).values())


def test_declared_writes_cover_what_the_rule_writes(mapping: LoadedMapping) -> None:
    settings = mapping.rules["lead_dedupe"]
    seen = walk_demo("lead_dedupe", mapping, days=2)
    assert seen.updates > 0
    for sobject, fields in seen.writes.items():
        assert fields <= settings.writes().get(sobject, set())


def _group(n: int, email: str, first: int) -> list[dict[str, Any]]:
    return [lead(first + i, Email=email) for i in range(n)]


def test_merges_are_off_by_default_a_plan_only(mapping: LoadedMapping) -> None:
    found = run(mapping, *_group(3, "jo@globex.com", 1))
    assert all(not isinstance(a, MergeRecords) for e in found.values() for a in e.actions)
    assert all("plan only (merge = false)" in e.why for e in found.values())


def test_with_merges_on_the_master_carries_one_merge_per_request(mapping: LoadedMapping) -> None:
    group = _group(5, "jo@globex.com", 1)
    found = run(mapping, *group, merge=True)
    merges = [a for e in found.values() for a in e.actions if isinstance(a, MergeRecords)]
    assert len(merges) == 2
    master = merges[0].target.id
    assert {m.target.id for m in merges} == {master}
    assert all(1 <= len(m.victim_ids) <= 2 for m in merges)
    assert all(
        m.victim_stamps == dict.fromkeys(m.victim_ids, group[0]["SystemModstamp"]) for m in merges
    )
    assert "Email" in merges[0].snapshot_fields
    victims = [e for rid, e in found.items() if rid != master]
    assert all(e.actions == () and "left to the master" in e.why for e in victims)


def test_the_merge_cap_holds_whole_groups_back(mapping: LoadedMapping) -> None:
    records = [*_group(3, "jo@globex.com", 1), *_group(3, "al@initech.com", 4)]
    found = run(mapping, *records, merge=True, merge_cap=1)
    merges = [a for e in found.values() for a in e.actions if isinstance(a, MergeRecords)]
    assert len(merges) == 1  # the first group (in group order); the other waits
    held = [e for e in found.values() if "held back: merge_cap 1 reached" in e.why]
    assert {e.batch for e in held} == {"email:jo@globex.com"}


def test_with_merges_on_doctor_checks_the_snapshot_object(mapping: LoadedMapping) -> None:
    settings = mapping.rules["lead_dedupe"]
    assert "SOP_Merge_Snapshot__c" not in settings.writes()
    on = settings.model_copy(update={"merge": True})
    assert on.writes()["SOP_Merge_Snapshot__c"] == {"Merge_Key__c", "Master_Id__c", "Body__c"}
