"""SOP 004 lead scoring: the three point tables and their caps, the bands at their edges,
behaviour within the window, the breakdown written only when it changes, and the mapping's
validation of the tables."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from worker.actions import UpdateRecord
from worker.errors import MappingError
from worker.mapping import LoadedMapping, load_mapping
from worker.records import Record, Snapshot
from worker.rules import Verdict, evaluate_rule, rule_models
from worker.rules.lead_scoring import RULE, RULE_ID, LeadScoringSettings, score_lead

ROOT = Path(__file__).resolve().parents[2]
MAPPING_FILE = ROOT / "mappings" / "default.toml"
LEAD = "00QTstD15000000001"
DAY = dt.date(2026, 11, 23)


def lead(**fields: Any) -> Record:
    raw = {
        "Id": LEAD,
        "Name": "Avery Stone",
        "RecordType": {"DeveloperName": "Sales"},
        "IsConverted": False,
        "OwnerId": "00GDm1500000001MAA",
        "Title": None,
        "Email": None,
        "Phone": None,
        "LeadSource": None,
        "Industry": None,
        "NumberOfEmployees": None,
        "AnnualRevenue": None,
        "Lead_Score__c": None,
        "Lead_Score_Category__c": None,
        "Lead_Score_Breakdown__c": None,
        "CreatedDate": "2026-11-23T15:00:00.000+0000",
        "SystemModstamp": "2026-11-23T15:00:00.000+0000",
        **fields,
    }
    return Record("Lead", LEAD, raw)


def task(n: int, subject: str, day: str, **fields: Any) -> Record:
    rid = f"00TTstD150000000{n:02d}"
    return Record(
        "Task",
        rid,
        {
            "Id": rid,
            "WhoId": LEAD,
            "Subject": subject,
            "ActivityDate": day,
            "Status": "Completed",
            "Type": None,
            "CreatedDate": f"{day}T15:00:00.000+0000",
            **fields,
        },
    )


def response(n: int, kind: str, day: str, responded: bool = True) -> Record:
    rid = f"00vTstD150000000{n:02d}"
    return Record(
        "CampaignMember",
        rid,
        {
            "Id": rid,
            "LeadId": LEAD,
            "HasResponded": responded,
            "FirstRespondedDate": day,
            "Campaign": {"Type": kind},
            "CreatedDate": f"{day}T15:00:00.000+0000",
        },
    )


def settings(mapping: LoadedMapping) -> LeadScoringSettings:
    found = mapping.rules[RULE_ID]
    assert isinstance(found, LeadScoringSettings)
    return found


def scored(mapping: LoadedMapping, *records: Record, day: dt.date = DAY) -> Any:
    snapshot = Snapshot.build(records)
    subject = next(r for r in records if r.sobject == "Lead")
    return score_lead(subject, snapshot, day, settings(mapping), mapping.common)


# A VP with email and phone at a 1,000-person software company that asked for a demo.
VP = {
    "Title": "VP Engineering",
    "Email": "avery@example.com",
    "Phone": "+1 415 555 0100",
    "Industry": "Technology",
    "NumberOfEmployees": 1200,
}


def test_the_three_groups_and_the_breakdown(mapping: LoadedMapping) -> None:
    found = scored(mapping, lead(**VP), task(1, "Web form: demo request", "2026-11-20"))
    assert found.groups == (("D", 22), ("F", 22), ("B", 20))
    assert found.total == 64
    assert found.category == "Warm"
    assert found.breakdown(255) == (
        "D22 F22 B20: VP +12, email +5, phone +5, Technology +10, 1,000+ employees +12, "
        "demo request +20"
    )


def test_tiers_count_their_best_match_only(mapping: LoadedMapping) -> None:
    """1,200 employees is 1,000+, 200+ and 50+: only the 1,000+ row counts."""
    found = scored(mapping, lead(NumberOfEmployees=1200, Title="Chief Revenue Officer"))
    assert found.items == (("C-level", 15), ("1,000+ employees", 12))


@pytest.mark.parametrize(
    ("title", "label"),
    [("Director of IT", "Director"), ("CTO", "C-level"), ("svp, sales", "VP"), ("VPN admin", None)],
)
def test_titles_match_whole_words(mapping: LoadedMapping, title: str, label: str | None) -> None:
    """ "Director" holds the letters of "CTO"; "VPN" those of "VP": neither is a match."""
    found = scored(mapping, lead(Title=title))
    assert [name for name, _ in found.items] == ([label] if label else [])


def test_each_group_is_capped(mapping: LoadedMapping) -> None:
    behaviour = [
        task(1, "Demo request", "2026-11-20"),
        task(2, "Pricing question", "2026-11-21"),
        task(3, "Re: intro", "2026-11-22", Type="Inbound Email"),
        response(1, "Webinar", "2026-11-01"),
        response(2, "Trade Show", "2026-10-01"),
    ]
    found = scored(mapping, lead(), *behaviour)
    assert found.groups[2] == ("B", 40)  # 20 + 10 + 8 + 10 + 8 = 56, capped at 40
    assert found.capped == ("B",)
    assert found.total == 40


def test_behaviour_counts_within_the_window_only(mapping: LoadedMapping) -> None:
    window = settings(mapping).behaviour_window_days
    first = DAY - dt.timedelta(days=window)
    old = [
        task(1, "Demo request", (first - dt.timedelta(days=1)).isoformat()),
        response(1, "Webinar", (first - dt.timedelta(days=1)).isoformat()),
        response(2, "Trade Show", "2026-11-20", responded=False),  # sent, never answered
    ]
    assert scored(mapping, lead(), *old).groups[2] == ("B", 0)
    edge = [task(1, "Demo request", first.isoformat()), response(1, "Webinar", DAY.isoformat())]
    assert scored(mapping, lead(), *edge).groups[2] == ("B", 30)


def test_the_workers_own_tasks_are_not_behaviour(mapping: LoadedMapping) -> None:
    own = task(1, "Demo request follow-up", "2026-11-20", SOP_Worker_Key__c="x:y:" + LEAD)
    assert scored(mapping, lead(), own).groups[2] == ("B", 0)


# Scores built on each band's edge from the demo mapping's rows.
DEMO_REQUEST, PRICING = ("Demo request", None), ("Pricing question", None)
REPLY = ("Re: intro", "Inbound Email")
VP_CONTACT = {"Title": "VP Sales", "Email": "a@example.com", "Phone": "+1 415 555 0100"}  # D22


@pytest.mark.parametrize(
    ("fields", "tasks", "total", "category"),
    [
        pytest.param(
            {
                **VP_CONTACT,
                "Industry": "Technology",
                "NumberOfEmployees": 1200,
                "AnnualRevenue": 20_000_000,
            },  # F30
            [DEMO_REQUEST, REPLY],  # B28
            80,
            "Hot",
            id="80-is-hot",
        ),
        pytest.param(
            {
                **VP_CONTACT,
                "Title": "Director",
                "LeadSource": "Partner Referral",  # D23
                "Industry": "Banking",
                "NumberOfEmployees": 1200,
                "AnnualRevenue": 20_000_000,
            },
            [DEMO_REQUEST, REPLY],  # F28 B28
            79,
            "Warm",
            id="79-is-warm",
        ),
        pytest.param(
            {**VP_CONTACT, "Industry": "Technology", "NumberOfEmployees": 300},  # F18
            [DEMO_REQUEST],
            60,
            "Warm",
            id="60-is-warm",
        ),
        pytest.param(
            {**VP_CONTACT, "Industry": "Technology", "NumberOfEmployees": 1200},  # F22
            [PRICING, ("Re: pricing", "Inbound Email")],  # B18
            62,
            "Warm",
            id="62-is-warm",
        ),
        pytest.param(
            {**VP_CONTACT, "Industry": "Technology", "NumberOfEmployees": 300},
            [],
            40,
            "Qualified",
            id="40-is-qualified",
        ),
        pytest.param(
            {
                "Title": "VP",
                "Email": "a@example.com",
                "Industry": "Technology",
                "NumberOfEmployees": 1200,
            },  # D17 F22
            [],
            39,
            "Early",
            id="39-is-early",
        ),
        pytest.param({"Title": "CEO", "Email": "a@example.com"}, [], 20, "Early", id="20-is-early"),
        pytest.param({"Title": "CEO", "NumberOfEmployees": 60}, [], 19, "Cold", id="19-is-cold"),
    ],
)
def test_bands_at_their_edges(
    mapping: LoadedMapping,
    fields: dict[str, Any],
    tasks: list[tuple[str, str | None]],
    total: int,
    category: str,
) -> None:
    records = [task(i, subject, "2026-11-20", Type=kind) for i, (subject, kind) in enumerate(tasks)]
    found = scored(mapping, lead(**fields), *records)
    assert (found.total, found.category) == (total, category)


@pytest.mark.parametrize(
    ("total", "category"),
    [
        (100, "Hot"),
        (80, "Hot"),
        (79, "Warm"),
        (60, "Warm"),
        (59, "Qualified"),
        (40, "Qualified"),
        (39, "Early"),
        (20, "Early"),
        (19, "Cold"),
        (0, "Cold"),
    ],
)
def test_band_thresholds_are_settings(mapping: LoadedMapping, total: int, category: str) -> None:
    assert settings(mapping).category(total) == category


def test_a_copy_with_other_tables_scores_by_its_own(mapping: LoadedMapping) -> None:
    """The tables are made ready once per settings object; a copy given other bands or
    rows (``model_copy`` carries what the original made ready) is not scored by the
    original's."""
    s = settings(mapping)
    vp = lead(**VP)
    assert score_lead(vp, Snapshot.build([vp]), DAY, s, mapping.common).total == 44
    assert s.category(44) == "Qualified"
    strict = s.model_copy(update={"bands": {"Hot": 90, "Cold": 0}})
    assert strict.category(44) == "Cold"
    demographic = s.groups["demographic"]
    flat = demographic.model_copy(
        update={"rows": tuple(r for r in demographic.rows if r.label != "VP")}
    )
    fewer = s.model_copy(update={"groups": {**s.groups, "demographic": flat}})
    found = score_lead(vp, Snapshot.build([vp]), DAY, fewer, mapping.common)
    assert (found.total, found.groups[0]) == (32, ("D", 10))
    assert score_lead(vp, Snapshot.build([vp]), DAY, s, mapping.common).total == 44


def test_writes_score_category_and_breakdown_once(mapping: LoadedMapping) -> None:
    records = [lead(**VP), task(1, "Demo request", "2026-11-20")]
    (first,) = evaluate_rule(RULE, Snapshot.build(records), DAY, settings(mapping), mapping.common)
    assert first.verdict is Verdict.ACT
    (update,) = first.actions
    assert isinstance(update, UpdateRecord)
    assert update.values() == {
        "Lead_Score__c": 64,
        "Lead_Score_Category__c": "Warm",
        "Lead_Score_Breakdown__c": "D22 F22 B20: VP +12, email +5, phone +5, Technology +10, "
        "1,000+ employees +12, demo request +20",
    }
    # Salesforce hands a Number(3, 0) back as 64.0: the same score, nothing to write.
    written = lead(**VP, **{**update.values(), "Lead_Score__c": 64.0})
    (again,) = evaluate_rule(
        RULE, Snapshot.build([written, records[1]]), DAY, settings(mapping), mapping.common
    )
    assert again.verdict is Verdict.DONE
    assert again.actions == ()
    # The demo request leaves the window: a new score, a new key.
    later = DAY + dt.timedelta(days=100)
    (aged,) = evaluate_rule(
        RULE, Snapshot.build([written, records[1]]), later, settings(mapping), mapping.common
    )
    assert aged.actions[0].values()["Lead_Score__c"] == 44
    assert aged.actions[0].key != update.key


def test_out_of_scope_leads_are_not_scored(mapping: LoadedMapping) -> None:
    home_care = lead(RecordType={"DeveloperName": "Home_Care"})
    converted = Record(
        "Lead",
        "00QTstD15000000002",
        {**lead().fields, "Id": "00QTstD15000000002", "IsConverted": True},
    )
    found = list(
        evaluate_rule(
            RULE, Snapshot.build([home_care, converted]), DAY, settings(mapping), mapping.common
        )
    )
    assert found == []


def test_a_malformed_number_is_that_leads_error(mapping: LoadedMapping) -> None:
    (found,) = evaluate_rule(
        RULE,
        Snapshot.build([lead(NumberOfEmployees="lots")]),
        DAY,
        settings(mapping),
        mapping.common,
    )
    assert found.verdict is Verdict.ERROR
    assert "NumberOfEmployees" in found.why


# -- the mapping ----------------------------------------------------------------------------
def _section_with(tmp_path: Path, old: str, new: str) -> Path:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    start = text.index(f"[rules.{RULE_ID}]")
    assert text.count(old, start) >= 1, old
    path = tmp_path / "mapping.toml"
    path.write_text(text[:start] + text[start:].replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        pytest.param(
            'letter = "F"\ncap = 30',
            'letter = "F"\ncap = 35',
            "",
            "the caps add up to 105 (demographic 30, firmographic 35, behavioural 40), not 100",
            id="caps-over-100",
        ),
        pytest.param(
            'letter = "B"\ncap = 40',
            'letter = "B"\ncap = 30',
            "",
            "the caps add up to 90",
            id="caps-under-100",
        ),
        pytest.param(
            'contains = ["VP", "SVP", "EVP", "Vice President"], points = 12',
            'contains = ["VP", "SVP", "EVP", "Vice President"], points = -12',
            ".groups.demographic.rows.1.points",
            "greater than or equal to 0",
            id="negative-points",
        ),
        pytest.param(
            'letter = "D"\ncap = 30',
            'letter = "D"\ncap = -30',
            ".groups.demographic.cap",
            "greater than or equal to 0",
            id="negative-cap",
        ),
        pytest.param("Cold = 0", "Cold = 5", "", "no band starts at 0", id="no-band-at-zero"),
        pytest.param(
            'equals = ["Partner Referral"], points = 5',
            'equals = ["Partner Referral"], is_set = true, points = 5',
            ".groups.demographic.rows.6",
            "(got equals, is_set)",
            id="row-with-two-tests",
        ),
        pytest.param(
            "at_least = 1000, points = 12",
            "points = 12",
            ".groups.firmographic.rows.2",
            "give exactly one of equals, contains, at_least, is_set",
            id="row-without-a-test",
        ),
    ],
)
def test_bad_tables_are_mapping_errors(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(_section_with(tmp_path, old, new), rule_models())
    problems = dict(caught.value.problems)
    assert f"rules.{RULE_ID}{key}" in problems, caught.value.problems
    assert message in problems[f"rules.{RULE_ID}{key}"]


def test_needs_and_writes_name_the_tables_fields(mapping: LoadedMapping) -> None:
    s = settings(mapping)
    needs = s.needs()
    assert {"Title", "NumberOfEmployees", "Lead_Score__c", "RecordType.DeveloperName"} <= needs[
        "Lead"
    ]
    assert {"Subject", "Type"} <= needs["Task"]
    assert {"Campaign.Type", "HasResponded", "FirstRespondedDate", "LeadId"} <= needs[
        "CampaignMember"
    ]
    assert s.writes() == {
        "Lead": {"Lead_Score__c", "Lead_Score_Category__c", "Lead_Score_Breakdown__c"}
    }
    assert s.picklist_values()[("Lead", "Lead_Score_Category__c")] == {
        "Hot",
        "Warm",
        "Qualified",
        "Early",
        "Cold",
    }
