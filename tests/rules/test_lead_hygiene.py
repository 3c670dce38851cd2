"""SOP 004 lead hygiene: each bad input of the SOP's data standards, idempotence, the daily
incomplete-leads Task per owner, and the research Task for generic domains."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.actions import Action, CreateTask, UpdateRecord
from worker.localorg import apply_actions
from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, Verdict, evaluate_rule

from .declared import undeclared, walk_demo

RULE = next(r for r in ALL_RULES if r.id == "lead_hygiene")
LEAD = "00QTstH000000001AAA"
OWNER = "005TstH000000001AAA"
DAY = dt.date(2026, 11, 23)  # a Monday
SATURDAY = dt.date(2026, 11, 28)


def lead(lead_id: str = LEAD, **fields: Any) -> dict[str, Any]:
    base = {
        "attributes": {"type": "Lead"},
        "Id": lead_id,
        "FirstName": "Jo",
        "LastName": "Smith",
        "Name": "Jo Smith",
        "Company": "Acme Widgets",
        "Title": "CEO",
        "Email": "jo@acme.com",
        "Phone": "+14155551234",
        "MobilePhone": None,
        "Phone_Extension__c": None,
        "Country": "US",
        "State": "CA",
        "RecordType": {"DeveloperName": "Sales"},
        "IsConverted": False,
        "OwnerId": OWNER,
        "LeadSource": "Web",
        "Generic_Email_Domain__c": False,
        "Standard_Title__c": "Chief Executive Officer",
        "Job_Level__c": "C-Level",
        "Job_Function__c": "Executive",
        "Company_Match_Key__c": "acme widgets",
        "Missing_Required_Fields__c": None,
        "Data_Quality_Issues__c": None,
        "SystemModstamp": "2026-11-20T10:00:00.000+0000",
    }
    return {**base, **fields}


def run(
    mapping: LoadedMapping, *records: dict[str, Any], day: dt.date = DAY, **overrides: Any
) -> list[Evaluation]:
    settings = mapping.rules["lead_hygiene"].model_copy(update=overrides)
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    return list(evaluate_rule(RULE, snapshot, day, settings, mapping.common))


def one(mapping: LoadedMapping, record: dict[str, Any], **overrides: Any) -> Evaluation:
    (evaluation,) = [e for e in run(mapping, record, **overrides) if e.target.id == record["Id"]]
    return evaluation


def changes(evaluation: Evaluation) -> dict[str, Any]:
    updates = [a for a in evaluation.actions if isinstance(a, UpdateRecord)]
    return {c.field: c.after for u in updates for c in u.changes}


def tasks(evaluations: list[Evaluation]) -> list[CreateTask]:
    return [a for e in evaluations for a in e.actions if isinstance(a, CreateTask)]


def issues(evaluation: Evaluation) -> str:
    return str(changes(evaluation).get("Data_Quality_Issues__c") or "")


def test_a_clean_lead_plans_nothing(mapping: LoadedMapping) -> None:
    evaluation = one(mapping, lead())
    assert evaluation.verdict is Verdict.DONE
    assert evaluation.actions == ()


def test_home_care_and_converted_leads_are_left_alone(mapping: LoadedMapping) -> None:
    home = lead("00QTstH000000002AAA", RecordType={"DeveloperName": "Home_Care"}, Phone="x")
    converted = lead("00QTstH000000003AAA", IsConverted=True, Phone="(415) 555-1234")
    found = {e.target.id: e for e in run(mapping, home, converted)}
    assert "00QTstH000000002AAA" not in found
    assert found["00QTstH000000003AAA"].verdict is Verdict.EXCLUDED


# -- phones -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "country", "e164", "extension"),
    [
        ("(415) 555-1234", "US", "+14155551234", None),
        ("+1 (415) 555-1234 x9", "US", "+14155551234", "9"),
        ("415.555.1234 ext. 12", "US", "+14155551234", "12"),
        ("0044 20 7946 0958", "US", "+442079460958", None),  # 00-prefixed international
        ("020 7946 0958", "GB", "+442079460958", None),  # national number, the lead's country
        ("+44 20 7946 0958", None, "+442079460958", None),
    ],
)
def test_phones_become_e164_with_the_extension_apart(
    mapping: LoadedMapping, raw: str, country: str | None, e164: str, extension: str | None
) -> None:
    got = changes(one(mapping, lead(Phone=raw, Country=country, State=None)))
    assert got.get("Phone", raw) == e164
    assert got.get("Phone_Extension__c") == extension
    assert "Data_Quality_Issues__c" not in got


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("ext. 12", "US"),  # an extension and no number
        ("020 7946 0958", None),  # a UK number on a lead without a country: read as US
        ("555-12", "US"),
    ],
)
def test_an_invalid_phone_is_flagged_never_overwritten(
    mapping: LoadedMapping, raw: str, country: str | None
) -> None:
    evaluation = one(mapping, lead(Phone=raw, Country=country, State=None))
    got = changes(evaluation)
    assert "Phone" not in got
    assert f"Phone: {raw!r} is not a valid phone number" in issues(evaluation)


def test_an_extension_without_a_field_to_hold_it_is_flagged(mapping: LoadedMapping) -> None:
    evaluation = one(mapping, lead(MobilePhone="+1 415 555 1234 x9"))
    assert "MobilePhone" not in changes(evaluation)
    assert "MobilePhone: '+1 415 555 1234 x9' has an extension" in issues(evaluation)


# -- country and state ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "state", "expected"),
    [
        ("USA", "California", {"Country": "US", "State": "CA"}),
        ("U.S.", "ny", {"Country": "US", "State": "NY"}),
        ("United Kingdom", "England", {"Country": "GB", "State": "ENG"}),
        ("England", None, {"Country": "GB"}),
        ("Côte d'Ivoire", None, {"Country": "CI"}),
        ("cote d'ivoire", None, {"Country": "CI"}),
        (None, "Illinois", {"Country": "US", "State": "IL"}),  # read in default_country
        ("Georgia", None, {"Country": "GE"}),  # the country, named as such
    ],
)
def test_country_and_state_become_iso_codes(
    mapping: LoadedMapping, country: str | None, state: str | None, expected: dict[str, str]
) -> None:
    evaluation = one(mapping, lead(Country=country, State=state, Phone="+442079460958"))
    got = changes(evaluation)
    assert {k: got[k] for k in expected} == expected
    assert "Data_Quality_Issues__c" not in got


@pytest.mark.parametrize(
    ("country", "state", "problem"),
    [
        (None, "Georgia", "ambiguous: 'Georgia' without a country is a country too"),
        ("Korea", None, "ambiguous country 'Korea': KP or KR"),
        ("Atlantis", None, "unknown country 'Atlantis'"),
        ("US", "Bavaria", "'Bavaria' is no subdivision of US"),
    ],
)
def test_an_unreadable_place_is_flagged_never_overwritten(
    mapping: LoadedMapping, country: str | None, state: str | None, problem: str
) -> None:
    evaluation = one(mapping, lead(Country=country, State=state))
    got = changes(evaluation)
    assert "State" not in got
    assert problem in issues(evaluation)


def test_a_state_without_a_country_and_no_default_is_flagged(mapping: LoadedMapping) -> None:
    evaluation = one(mapping, lead(Country=None, State="CA"), default_country="")
    assert "Country" not in changes(evaluation)
    assert "state 'CA' without a country" in issues(evaluation)


def test_codes_go_to_the_picklist_fields_when_the_org_has_them(mapping: LoadedMapping) -> None:
    got = changes(
        one(
            mapping,
            lead(Country="USA", State="California"),
            country_code_field="CountryCode",
            state_code_field="StateCode",
        )
    )
    assert got["CountryCode"] == "US"
    assert got["StateCode"] == "CA"
    assert "Country" not in got
    assert "State" not in got


# -- email ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("  Jo@ACME.Com ", "Jo@acme.com"),  # case and whitespace: local part kept as written
        ("Jo.Smith+newsletter@Acme.COM", "Jo.Smith+newsletter@acme.com"),  # plus-addressing
        ("jo@BÜCHER.de", "jo@bücher.de"),  # an IDN domain, lower-cased, not punycoded
    ],
)
def test_email_domains_are_lower_cased(mapping: LoadedMapping, raw: str, cleaned: str) -> None:
    assert changes(one(mapping, lead(Email=raw)))["Email"] == cleaned


@pytest.mark.parametrize("raw", ["jo@@acme.com", "jo at acme.com", "jo@acme"])
def test_a_malformed_email_is_flagged_never_overwritten(mapping: LoadedMapping, raw: str) -> None:
    evaluation = one(mapping, lead(Email=raw))
    assert "Email" not in changes(evaluation)
    assert f"Email: {raw!r}" in issues(evaluation)


def test_generic_domain_flag_and_one_research_task(mapping: LoadedMapping) -> None:
    record = lead(Email="jo.smith@Gmail.com")
    evaluation = one(mapping, record)
    assert changes(evaluation)["Generic_Email_Domain__c"] is True
    (task,) = tasks([evaluation])
    assert task.owner_id == mapping.rules["lead_hygiene"].research_assignee  # type: ignore[attr-defined]
    assert task.subject == "Research lead Jo Smith: generic email domain gmail.com"
    org = {LEAD: record}
    apply_actions(
        org, evaluation.actions, dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC), "SOP_Worker_Key__c"
    )
    again = run(mapping, *org.values(), day=DAY + dt.timedelta(days=1))
    assert [e.actions for e in again] == [()]


def test_research_for_a_queue_goes_to_an_active_member(mapping: LoadedMapping) -> None:
    queue = "00GTstH000000001AAA"
    members = [
        {
            "attributes": {"type": "GroupMember"},
            "Id": f"011TstH00000000{i}AAA",
            "GroupId": queue,
            "UserOrGroupId": f"005TstH00000000{i}AAB",
        }
        for i in (1, 2)
    ]
    users = [
        {"attributes": {"type": "User"}, "Id": "005TstH000000001AAB", "IsActive": False},
        {"attributes": {"type": "User"}, "Id": "005TstH000000002AAB", "IsActive": True},
    ]
    found = run(mapping, lead(Email="jo@yahoo.com"), *members, *users, research_assignee=queue)
    assert [t.owner_id for t in tasks(found)] == ["005TstH000000002AAB"]


# -- titles, companies ------------------------------------------------------------------------


def test_titles_map_to_standard_fields_and_title_is_kept(mapping: LoadedMapping) -> None:
    got = changes(one(mapping, lead(Title="Sr. VP, Global Sales")))
    assert got == {
        "Standard_Title__c": "VP of Sales",
        "Job_Level__c": "VP",
        "Job_Function__c": "Sales",
    }


def test_an_unknown_title_clears_the_standard_fields_and_is_flagged(
    mapping: LoadedMapping,
) -> None:
    evaluation = one(mapping, lead(Title="Chief Happiness Officer"))
    got = changes(evaluation)
    assert got["Standard_Title__c"] is None
    assert "Title" not in got
    assert "no standard title matches 'Chief Happiness Officer'" in issues(evaluation)


@pytest.mark.parametrize(
    ("company", "key"),
    [
        ("Acme, Inc. (EMEA)", "acme"),
        ("ACME Inc", "acme"),
        ("COOP", "coop"),
        ("Co", "co"),
        ("Müller & Söhne GmbH", "muller and sohne"),
        ("Smith & Co., LLC", "smith and"),
    ],
)
def test_company_match_key_and_company_left_alone(
    mapping: LoadedMapping, company: str, key: str
) -> None:
    got = changes(one(mapping, lead(Company=company)))
    assert got["Company_Match_Key__c"] == key
    assert "Company" not in got


def test_a_company_that_is_the_email_domain_is_keyed_and_flagged(mapping: LoadedMapping) -> None:
    evaluation = one(mapping, lead(Company="acme.com", Email="jo@acme.com"))
    assert changes(evaluation)["Company_Match_Key__c"] == "acme"
    assert "Company: 'acme.com' is a web domain" in issues(evaluation)


# -- required fields --------------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", ["N/A", "none", "-", "  ", None])
def test_placeholders_count_as_missing(mapping: LoadedMapping, placeholder: str | None) -> None:
    evaluation = one(mapping, lead(Title=placeholder, Company=placeholder))
    got = changes(evaluation)
    assert got["Missing_Required_Fields__c"] == "Company, Title"
    assert got["Company_Match_Key__c"] is None


def test_one_task_per_owner_per_day_listing_incomplete_leads(mapping: LoadedMapping) -> None:
    a = lead("00QTstH000000001AAA", Title="N/A", Name="Ann A")
    b = lead("00QTstH000000002AAA", Email=None, Name="Bob B")
    c = lead("00QTstH000000003AAA", Name="Cy C")  # complete
    other = lead("00QTstH000000004AAA", OwnerId="005TstH000000009AAA", Company="-", Name="Di D")
    found = run(mapping, a, b, c, other)
    digests = [t for t in tasks(found) if ":incomplete-" in t.key]
    assert sorted((t.owner_id, t.who_id) for t in digests) == [
        (OWNER, "00QTstH000000001AAA"),
        ("005TstH000000009AAA", "00QTstH000000004AAA"),
    ]
    mine = next(t for t in digests if t.owner_id == OWNER)
    assert mine.subject == "2 lead(s) miss required fields (2026-11-23)"
    assert "- Ann A (00QTstH000000001AAA): Title" in mine.description
    assert "- Bob B (00QTstH000000002AAA): Email" in mine.description
    assert "Cy C" not in mine.description


def test_the_daily_task_is_made_once_a_day_on_business_days(mapping: LoadedMapping) -> None:
    org = {r["Id"]: r for r in (lead(Title="N/A"), lead("00QTstH000000002AAA", Email=None))}
    now = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
    apply_actions(
        org, [a for e in run(mapping, *org.values()) for a in e.actions], now, "SOP_Worker_Key__c"
    )
    assert [e.actions for e in run(mapping, *org.values())] == [(), ()]
    # the first lead is completed: the next day's list rides on the other one
    org[LEAD]["Title"] = "CEO"
    next_day = [
        a for e in run(mapping, *org.values(), day=DAY + dt.timedelta(days=1)) for a in e.actions
    ]
    digests = [a for a in next_day if isinstance(a, CreateTask)]
    assert [(t.who_id, t.key) for t in digests] == [
        ("00QTstH000000002AAA", "lead_hygiene:incomplete-2026-11-24:00QTstH000000002AAA")
    ]
    assert tasks(run(mapping, *org.values(), day=SATURDAY)) == []


# -- idempotence, declarations ----------------------------------------------------------------


def test_a_second_run_plans_nothing(mapping: LoadedMapping) -> None:
    dirty = lead(
        Phone="+1 (415) 555-1234 x9",
        Email=" Jo@ACME.com",
        Country="USA",
        State="California",
        Title="vp sales",
        Company="Acme, Inc. (EMEA)",
        Standard_Title__c=None,
        Company_Match_Key__c=None,
    )
    org = {LEAD: dirty}
    first: list[Action] = [a for e in run(mapping, dirty) for a in e.actions]
    assert first
    apply_actions(org, first, dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC), "SOP_Worker_Key__c")
    assert [e.actions for e in run(mapping, *org.values())] == [()]
    # an edit later is cleaned afresh under a new key
    org[LEAD]["Phone"] = "(312) 555-1037"
    (again,) = [a for e in run(mapping, *org.values()) for a in e.actions]
    assert again.key != first[0].key
    assert changes(run(mapping, *org.values())[0]) == {"Phone": "+13125551037"}


def test_declared_writes_cover_what_the_rule_writes(mapping: LoadedMapping) -> None:
    settings = mapping.rules["lead_hygiene"]
    seen = walk_demo("lead_hygiene", mapping, days=3)
    assert seen.updates > 0
    for sobject, fields in seen.writes.items():
        assert fields <= settings.writes().get(sobject, set())
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
