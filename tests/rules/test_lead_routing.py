"""SOP 004 lead routing: named accounts, territories, the weighted round robin over eligible
members (out of office, hours, caps, no catch-up), queues by band, the exception path, the
alerts, one update per lead, the turn rebuilt from the org, and fairness over 1,000 leads."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from worker.actions import UpdateRecord
from worker.errors import MappingError
from worker.mapping import LoadedMapping, load_mapping
from worker.plan import resolve_precedence
from worker.records import Record, Snapshot, format_sf_datetime
from worker.rules import Verdict, evaluate_rule, rule_models
from worker.rules.lead_routing import Directory, LeadRoutingSettings, fairness, weighted_rotation
from worker.rules.lead_scoring import RULE as SCORING

from .routing_org import (
    AVA,
    BEN,
    CARA,
    FINN,
    GIA,
    GROUPS,
    HANA,
    IVAN,
    JULES,
    KIM,
    LEO,
    NIA,
    SAM,
    at,
    band_lead,
    emails,
    groups,
    lead,
    out_of_office,
    owner_updates,
    route,
    settings_of,
    tasks,
    users,
    write_back,
)

ROOT = Path(__file__).resolve().parents[2]
MAPPING_FILE = ROOT / "mappings" / "default.toml"
MONDAY = dt.date(2026, 11, 23)
NOW = at(MONDAY, 10)
QUEUE = {name: gid for name, (gid, _) in GROUPS.items()}


def org(*extra: dict[str, Any], **user_changes: dict[str, Any]) -> list[dict[str, Any]]:
    return [*users(**user_changes), *groups(), *extra]


def owner_of(evaluation: Any) -> str:
    (update,) = owner_updates(evaluation.actions)
    return str(update.values()["OwnerId"])


# -- by band ----------------------------------------------------------------------------------
def test_a_hot_lead_goes_to_the_senior_pool_with_an_immediate_alert(
    mapping: LoadedMapping,
) -> None:
    records = band_lead("Hot", NOW.instant - dt.timedelta(minutes=2))
    found = route(mapping, org(*records), NOW)[records[0]["Id"]]
    assert found.verdict is Verdict.ACT
    (update,) = owner_updates(found.actions)
    # One update: the score, the owner and the routing stamps together.
    assert update.values() == {
        "Lead_Score__c": 82,
        "Lead_Score_Category__c": "Hot",
        "Lead_Score_Breakdown__c": "D22 F30 B30: VP +12, email +5, phone +5, Technology +10, "
        "1,000+ employees +12, revenue $10M+ +8, demo request +20, pricing inquiry +10",
        "OwnerId": NIA,
        "Routed_At__c": "2026-11-23T16:00:00.000+0000",
        "Routed_Band__c": "Hot",
        "Routed_Territory__c": "West",
        "Routed_Pool__c": "Senior_West",
        "Routed_Slot__c": 0,
    }
    assert not update.auto_assign  # Sforce-Auto-Assign: FALSE
    (alert,) = tasks(found.actions)
    assert alert.owner_id == NIA
    assert alert.fields["Priority"] == "High"
    assert alert.due_at == dt.datetime(2026, 11, 23, 10, 5, tzinfo=NOW.instant.tzinfo)
    assert alert.subject.startswith("HOT lead: call Lead")
    assert "respond by 2026-11-23T10:05-06:00 (5 business minutes)" in found.why


def test_hot_and_warm_alerts_are_emails_where_the_org_sends_them(
    mapping: LoadedMapping,
) -> None:
    common = mapping.common
    sending = type(mapping)(
        mapping.path,
        type(common)(
            common.org.model_copy(update={"email_action_enabled": True}),
            common.tasks,
            common.objects,
            common.calendar,
        ),
        mapping.retention,
        mapping.precedence,
        mapping.rules,
    )
    hot = band_lead("Hot", NOW.instant)
    warm = band_lead("Warm", NOW.instant)
    found = route(sending, org(*hot, *warm), NOW)
    hot_eval, warm_eval = found[hot[0]["Id"]], found[warm[0]["Id"]]
    assert [e.to_address for e in emails(hot_eval.actions)] == ["nia.brooks@example.com"]
    assert len(tasks(hot_eval.actions)) == 1  # and the high-priority Task
    assert [e.to_address for e in emails(warm_eval.actions)] == ["ava.chen@example.com"]
    assert tasks(warm_eval.actions) == []
    assert all(e.log_on_id in (hot[0]["Id"], warm[0]["Id"]) for e in emails(warm_eval.actions))


def test_qualified_goes_to_the_sdr_queue_with_a_queue_task(mapping: LoadedMapping) -> None:
    (raw,) = band_lead("Qualified", NOW.instant)
    found = route(mapping, org(raw), NOW)[raw["Id"]]
    assert owner_of(found) == QUEUE["SDR_Queue"]
    (alert,) = tasks(found.actions)
    assert alert.owner_id == HANA
    assert alert.due_at == dt.datetime(2026, 11, 24, 10, 0, tzinfo=NOW.instant.tzinfo)  # 24 h


@pytest.mark.parametrize("band", ["Early", "Cold"])
def test_below_40_goes_to_marketing_nurture_without_a_sales_owner(
    mapping: LoadedMapping, band: str
) -> None:
    (raw,) = band_lead(band, NOW.instant)
    found = route(mapping, org(raw), NOW)[raw["Id"]]
    assert owner_of(found) == QUEUE["Marketing_Nurture"]
    assert tasks(found.actions) == []
    assert "marketing nurture" in found.why


def test_a_nurture_lead_whose_score_rises_is_routed_again(mapping: LoadedMapping) -> None:
    raw, *behaviour = band_lead("Warm", NOW.instant, owner=QUEUE["Marketing_Nurture"])
    found = route(mapping, org(raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == AVA
    assert "in nurture, and the score rose to 60 (Warm)" in found.why
    # Still below 40: it stays in nurture.
    (cold,) = band_lead("Cold", NOW.instant, owner=QUEUE["Marketing_Nurture"])
    assert route(mapping, org(cold), NOW)[cold["Id"]].verdict is Verdict.DONE


# -- who is routed ----------------------------------------------------------------------------
def test_a_lead_a_person_owns_is_not_rerouted(mapping: LoadedMapping) -> None:
    raw, *behaviour = band_lead("Hot", NOW.instant, owner=BEN)
    found = route(mapping, org(raw, *behaviour), NOW)[raw["Id"]]
    assert found.verdict is Verdict.DONE
    assert found.actions == ()
    assert found.why == "owned by Ben Diaz: a lead a person owns is not re-routed"


def test_a_lead_owned_by_an_inactive_user_is_routed(mapping: LoadedMapping) -> None:
    raw, *behaviour = band_lead("Warm", NOW.instant, owner=IVAN)
    found = route(mapping, org(raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == AVA
    assert found.why.startswith("owner Ivan Petrov is inactive")


def test_a_named_account_goes_to_its_owner(mapping: LoadedMapping) -> None:
    account = {
        "attributes": {"type": "Account"},
        "Id": "001Dm1500000001IAA",
        "Name": "Globex Corporation",
        "OwnerId": JULES,
        "Named_Account__c": True,
        "SystemModstamp": "2026-01-05T09:00:00.000+0000",
    }
    raw, *behaviour = band_lead("Hot", NOW.instant, Company="GLOBEX Corporation ")
    found = route(mapping, org(raw, *behaviour, account), NOW)[raw["Id"]]
    assert owner_of(found) == JULES
    assert "named account Globex Corporation" in found.why
    # The owner away: the lead takes the territory's path, and says why.
    away = out_of_office(JULES, "2026-11-20T00:00:00.000+0000", "2026-11-30T00:00:00.000+0000")
    found = route(mapping, org(raw, *behaviour, account, away), NOW)[raw["Id"]]
    assert owner_of(found) == NIA
    assert "owner Jules Moreau skipped (out of office to 2026-11-29)" in found.why


# -- territories --------------------------------------------------------------------------------
def test_the_first_matching_territory_row_wins_and_each_row_tried_is_shown(
    mapping: LoadedMapping,
) -> None:
    # A 2,000-person bank in California: the Financial Services row comes before West.
    raw, *behaviour = band_lead(
        "Warm", NOW.instant, Industry="Banking", NumberOfEmployees=2000, state="CA"
    )
    found = route(mapping, org(raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) in (FINN, GIA)
    assert "territory rows: Financial Services Enterprise matched" in found.why
    small, *behaviour = band_lead(
        "Warm", NOW.instant, Industry="Banking", NumberOfEmployees=300, AnnualRevenue=20_000_000
    )
    found = route(mapping, org(small, *behaviour), NOW)[small["Id"]]
    assert (
        "territory rows: Financial Services Enterprise (NumberOfEmployees 300 < 1000), "
        "West matched" in found.why
    )


def test_no_territory_is_escalated_to_the_sales_manager(mapping: LoadedMapping) -> None:
    raw, *behaviour = band_lead("Warm", NOW.instant, state="TX")
    found = route(mapping, org(raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == QUEUE["Sales_Fallback"]
    assert "West (State='TX'), East (State='TX')" in found.why
    (task,) = tasks(found.actions)
    assert task.owner_id == KIM  # exception_manager
    assert task.subject.startswith("Routing exception:")
    assert "no territory matched" in task.description


# -- the round robin ----------------------------------------------------------------------------
def test_weighted_rotation_interleaves() -> None:
    assert weighted_rotation([AVA, BEN, CARA], {AVA: 2}) == [AVA, BEN, CARA, AVA]
    assert weighted_rotation([AVA, BEN], {AVA: 0}) == [BEN]
    assert weighted_rotation([], {}) == []


def test_warm_leads_are_dealt_2_1_1_through_nested_groups(mapping: LoadedMapping) -> None:
    records = [
        r for i in range(8) for r in band_lead("Warm", NOW.instant - dt.timedelta(minutes=30 - i))
    ]
    found = route(mapping, org(*records), NOW)
    owners = [owner_of(found[r["Id"]]) for r in records if r["Id"].startswith("00Q")]
    assert owners == [AVA, BEN, CARA, AVA] * 2
    slots = [
        owner_updates(found[r["Id"]].actions)[0].values()["Routed_Slot__c"]
        for r in records
        if r["Id"].startswith("00Q")
    ]
    assert slots == [0, 1, 2, 3] * 2


def test_the_turn_is_rebuilt_from_the_org_after_a_lost_database(
    mapping: LoadedMapping,
) -> None:
    first = band_lead("Warm", NOW.instant - dt.timedelta(minutes=5))
    state = {r["Id"]: r for r in org(*first)}
    write_back(state, route(mapping, state.values(), NOW).values(), NOW, mapping)
    assert state[first[0]["Id"]]["OwnerId"] == AVA
    # A new run (nothing kept but the org): the next lead is Ben's.
    later = at(MONDAY, 11)
    second = band_lead("Warm", later.instant)
    state.update({r["Id"]: r for r in second})
    found = route(mapping, state.values(), later)
    assert owner_of(found[second[0]["Id"]]) == BEN
    assert "pool Reps_West position 1 -> 2" in found[second[0]["Id"]].why
    assert found[first[0]["Id"]].verdict is Verdict.DONE


def test_out_of_office_members_are_skipped_and_get_no_catch_up(
    mapping: LoadedMapping,
) -> None:
    away = out_of_office(BEN, "2026-11-23T00:00:00.000+0000", "2026-11-24T00:00:00.000+0000")
    state = {r["Id"]: r for r in org(away)}
    owners, whys = [], []
    for hour in (10, 11, 12, 13):
        when = at(MONDAY, hour)
        raw = band_lead("Warm", when.instant)
        state.update({r["Id"]: r for r in raw})
        found = route(mapping, state.values(), when)
        owners.append(owner_of(found[raw[0]["Id"]]))
        whys.append(found[raw[0]["Id"]].why)
        write_back(state, found.values(), when, mapping)
    assert owners == [AVA, CARA, AVA, AVA]  # Ben's turns passed over
    assert "skipped Ben Diaz (out of office to 2026-11-23)" in whys[1]
    assert "pool Reps_West position 1 -> 3" in whys[1]
    # Back on Wednesday: Ben takes his own turn in the rotation, not the turns he missed.
    owners = []
    for hour in (10, 11, 12, 13, 14):
        when = at(MONDAY + dt.timedelta(days=2), hour)
        raw = band_lead("Warm", when.instant)
        state.update({r["Id"]: r for r in raw})
        found = route(mapping, state.values(), when)
        owners.append(owner_of(found[raw[0]["Id"]]))
        write_back(state, found.values(), when, mapping)
    assert owners == [BEN, CARA, AVA, AVA, BEN]


def test_the_skip_reason_names_the_member_and_the_end_date(mapping: LoadedMapping) -> None:
    away = out_of_office(AVA, "2026-11-20T00:00:00.000+0000", "2026-11-25T00:00:00.000+0000")
    raw, *behaviour = band_lead("Warm", NOW.instant)
    found = route(mapping, org(away, raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == BEN
    assert "skipped Ava Chen (out of office to 2026-11-24)" in found.why


def test_an_out_of_office_row_without_an_end_keeps_the_member_out(
    mapping: LoadedMapping,
) -> None:
    away = out_of_office(NIA, "2026-11-01T00:00:00.000+0000", None)
    raw, *behaviour = band_lead("Hot", NOW.instant)
    found = route(mapping, org(away, raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == LEO
    assert "skipped Nia Brooks (out of office, no end date)" in found.why


def test_a_pool_whose_members_are_all_out_goes_to_the_fallback_queue(
    mapping: LoadedMapping,
) -> None:
    away = [
        out_of_office(NIA, "2026-11-20T00:00:00.000+0000", "2026-11-30T00:00:00.000+0000", 1),
        out_of_office(LEO, "2026-11-20T00:00:00.000+0000", None, 2),
    ]
    raw, *behaviour = band_lead("Hot", NOW.instant)
    found = route(mapping, org(*away, raw, *behaviour), NOW)[raw["Id"]]
    assert owner_of(found) == QUEUE["Sales_Fallback"]
    (task,) = tasks(found.actions)
    assert task.owner_id == SAM  # the West territory's manager
    assert task.fields["Priority"] == "High"
    assert "pool Senior_West: no eligible member" in task.description
    assert "skipped Leo Park (out of office, no end date)" in found.why


def test_inactive_members_and_daily_caps_are_skipped(mapping: LoadedMapping) -> None:
    # Ava has taken 25 West leads today (the cap); Cara is deactivated.
    taken = [
        lead(
            NOW.instant - dt.timedelta(hours=3),
            owner=AVA,
            Routed_At__c="2026-11-23T13:00:00.000+0000",
            Routed_Pool__c="Reps_West",
            Routed_Slot__c=0,
        )
        for _ in range(25)
    ]
    raw, *behaviour = band_lead("Warm", NOW.instant)
    found = route(mapping, org(*taken, raw, *behaviour, **{CARA: {"IsActive": False}}), NOW)
    evaluation = found[raw["Id"]]
    assert owner_of(evaluation) == BEN
    # The turn after slot 0 is Ben's anyway; the next lead would skip Cara and Ava.
    second, *more = band_lead("Warm", NOW.instant + dt.timedelta(minutes=1))
    found = route(
        mapping, org(*taken, raw, *behaviour, second, *more, **{CARA: {"IsActive": False}}), NOW
    )
    assert owner_of(found[second["Id"]]) == BEN
    assert "skipped Cara Singh (inactive), skipped Ava Chen (daily cap 25 reached)" in (
        found[second["Id"]].why.replace("; skipped", ", skipped")
    )


def test_member_hours_and_a_lead_after_closing(mapping: LoadedMapping) -> None:
    """Finn works 09:00-13:00. A Warm bank lead at 14:00 skips him; one arriving Friday at
    17:59 is dealt for Monday 09:00, when Finn is in, and its alert is due Monday 10:00."""
    bank = {"Industry": "Banking", "NumberOfEmployees": 2000}
    afternoon = at(MONDAY, 14)
    raw, *behaviour = band_lead("Warm", afternoon.instant, **bank)
    found = route(mapping, org(raw, *behaviour), afternoon)[raw["Id"]]
    assert owner_of(found) == GIA
    assert "skipped Finn Walsh (outside hours 09:00-13:00)" in found.why
    friday = at(dt.date(2026, 11, 20), 17, 59)
    raw, *behaviour = band_lead("Warm", friday.instant, **bank)
    found = route(mapping, org(raw, *behaviour), friday)[raw["Id"]]
    assert owner_of(found) == FINN
    (alert,) = tasks(found.actions)
    assert alert.due_at == dt.datetime(2026, 11, 23, 10, 0, tzinfo=friday.instant.tzinfo)


def test_a_loop_of_nested_groups_is_read_once(mapping: LoadedMapping) -> None:
    loop = {
        "attributes": {"type": "GroupMember"},
        "Id": "011Dm1500000099IAA",
        "GroupId": QUEUE["Reps_West_Core"],
        "UserOrGroupId": QUEUE["Reps_West"],
        "SystemModstamp": "2026-01-05T09:00:00.000+0000",
    }
    records = [
        r for i in range(4) for r in band_lead("Warm", NOW.instant - dt.timedelta(minutes=i))
    ]
    found = route(mapping, org(loop, *records), NOW)
    owners = [owner_of(e) for e in found.values() if e.actions]
    assert Counter(owners) == {AVA: 2, BEN: 1, CARA: 1}


def test_a_queue_missing_from_the_org_is_that_leads_error(mapping: LoadedMapping) -> None:
    records = [r for r in org() if r.get("DeveloperName") != "SDR_Queue"]
    (raw,) = band_lead("Qualified", NOW.instant)
    warm = band_lead("Warm", NOW.instant)
    found = route(mapping, [*records, raw, *warm], NOW)
    assert found[raw["Id"]].verdict is Verdict.ERROR
    assert "no queue or group 'SDR_Queue' in the org" in found[raw["Id"]].why
    assert found[warm[0]["Id"]].verdict is Verdict.ACT  # the others are routed


# -- one update per lead ------------------------------------------------------------------------
def test_a_routed_lead_gets_one_update_not_two(mapping: LoadedMapping) -> None:
    records = band_lead("Hot", NOW.instant)
    snapshot = Snapshot.build(Record.from_json(r) for r in org(*records))
    scoring = mapping.rules["lead_scoring"]
    routed = route(mapping, org(*records), NOW).values()
    scored = evaluate_rule(SCORING, snapshot, NOW, scoring, mapping.common)  # type: ignore[arg-type]
    proposed = [a for e in [*routed, *scored] for a in e.actions]
    rank = {rule: i for i, rule in enumerate(mapping.precedence)}
    kept, dropped = resolve_precedence(proposed, rank)
    lead_updates = [a for a in kept if isinstance(a, UpdateRecord)]
    assert [a.rule for a in lead_updates] == ["lead_routing"]
    assert [s.why for s in dropped] == ["superseded: rule lead_routing sets Lead_Score__c"]


# -- fairness -------------------------------------------------------------------------------------
def test_fairness_over_1000_leads_with_a_member_out_for_two_days(
    mapping: LoadedMapping,
) -> None:
    """1,000 Warm West leads over five days (200 a day, a run every 45 minutes),
    pool weights Ava 2, Ben 1, Cara 1, no daily cap; Cara is out Tuesday and Wednesday.
    Over the days each member was available, each got their weighted share of the leads
    dealt while they were, within one lead."""
    settings = settings_of(mapping)
    no_cap = settings.model_copy(
        update={
            "pools": {
                "Reps_West": settings.pools["Reps_West"].model_copy(update={"daily_cap": None})
            }
        }
    )
    no_cap.link(mapping.rules)
    relaxed = type(mapping)(
        mapping.path,
        mapping.common,
        mapping.retention,
        mapping.precedence,
        {**mapping.rules, "lead_routing": no_cap},
    )
    away = out_of_office(CARA, "2026-11-24T06:00:00.000+0000", "2026-11-25T06:00:00.000+0000")
    state = {r["Id"]: r for r in org(away)}
    days = [MONDAY + dt.timedelta(days=d) for d in range(5)]
    weights = {AVA: 2, BEN: 1, CARA: 1}
    expected: Counter[str] = Counter()
    got: Counter[str] = Counter()
    per_day: dict[dt.date, Counter[str]] = {}
    for day in days:
        available = [m for m in weights if not (m == CARA and day in days[1:3])]
        per_day[day] = Counter()
        for run in range(10):  # every 45 minutes from 09:00, twenty leads a run
            when = at(day, 9).instant + dt.timedelta(minutes=45 * run)
            batch = [
                lead(
                    when - dt.timedelta(seconds=10 * i),
                    **{
                        "Title": "VP",
                        "Email": "x@example.com",
                        "Phone": "+1 415 555 0100",
                        "Industry": "Technology",
                        "NumberOfEmployees": 300,
                        "Lead_Score__c": None,
                    },
                )
                for i in range(20)
            ]
            for raw in batch:
                task = {
                    "attributes": {"type": "Task"},
                    "Id": "00T" + raw["Id"][3:],
                    "WhoId": raw["Id"],
                    "Subject": "demo request",
                    "ActivityDate": day.isoformat(),
                    "Status": "Completed",
                    "IsClosed": True,
                    "CreatedDate": raw["CreatedDate"],
                    "SystemModstamp": raw["CreatedDate"],
                }
                state[raw["Id"]] = raw
                state[task["Id"]] = task
            moment = type(NOW)(when)
            found = route(relaxed, state.values(), moment)
            write_back(state, found.values(), moment, relaxed)
            for raw in batch:
                owner = state[raw["Id"]]["OwnerId"]
                got[owner] += 1
                per_day[day][owner] += 1
                share = sum(weights[m] for m in available)
                for m in available:
                    expected[m] += weights[m] / share
    assert sum(got.values()) == 1000
    for member in weights:
        assert abs(got[member] - expected[member]) <= 1, (member, got, expected)
    # `sop-worker report` replays the same leads from their stamps and the cached rows.
    snapshot = Snapshot.build(Record.from_json(raw) for raw in state.values())
    settings_now = relaxed.rules["lead_routing"]
    assert isinstance(settings_now, LeadRoutingSettings)
    figures = {f.id: f for f in fairness(snapshot, settings_now, mapping.common, days[0], days[-1])}
    west = figures["lead_routing.fairness.Reps_West"]
    assert west.value == pytest.approx(max(abs(got[m] - expected[m]) for m in weights))
    assert west.value is not None
    assert west.value <= 1
    print(
        "fairness, pool Reps_West (weights 2:1:1, Cara out Tue-Wed):",
        {k: (got[k], round(expected[k], 1)) for k in weights},
        "per day:",
        {d.isoformat(): dict(c) for d, c in per_day.items()},
    )


def test_fairness_counts_a_member_given_more_than_their_share(mapping: LoadedMapping) -> None:
    """Leads handed to one member while the others were in: the report shows the gap."""
    settings = settings_of(mapping)
    members = Directory(Snapshot.build(Record.from_json(r) for r in org()), settings).members(
        "Reps_West"
    )
    stamped = [
        lead(
            NOW.instant - dt.timedelta(minutes=i),
            OwnerId=members[0],
            Routed_At__c=format_sf_datetime(NOW.instant - dt.timedelta(minutes=i)),
            Routed_Pool__c="Reps_West",
            Routed_Slot__c=i,
        )
        for i in range(12)
    ]
    snapshot = Snapshot.build(Record.from_json(r) for r in org(*stamped))
    figures = {f.id: f for f in fairness(snapshot, settings, mapping.common, MONDAY, MONDAY)}
    west = figures["lead_routing.fairness.Reps_West"]
    weights = {m: settings.pools["Reps_West"].weights.get(m, 1) for m in members}
    fair_share = 12 * weights[members[0]] / sum(weights.values())
    assert west.value == pytest.approx(12 - fair_share)
    assert "12 lead(s) routed" in west.formula
    assert figures["lead_routing.fairness.Reps_East"].value is None  # none routed there


# -- the mapping --------------------------------------------------------------------------------
def _mapping_with(tmp_path: Path, old: str, new: str) -> Path:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    start = text.index("[rules.lead_routing]")
    assert old in text[start:], old
    path = tmp_path / "mapping.toml"
    path.write_text(text[:start] + text[start:].replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        pytest.param(
            'Early = "nurture", ', "", "routes", "no route for the category Early", id="no-route"
        ),
        pytest.param(
            'scoring_rule = "lead_scoring"',
            'scoring_rule = "scores"',
            "scoring_rule",
            "no lead scoring section [rules.scores]",
            id="no-scoring",
        ),
        pytest.param(
            'sdr_task_owner = "005Dm1500000011IAA"',
            'sdr_task_owner = "00GDm1500000002MAA"',
            "sdr_task_owner",
            "not a User Id",
            id="task-owner-not-a-user",
        ),
        pytest.param(
            'weights = { "005Dm1500000004IAA" = 2 }',
            'weights = { "005Dm1500000004IAA" = -2 }',
            "pools.Reps_West.weights",
            "a weight is 0 or more",
            id="negative-weight",
        ),
        pytest.param(
            'member_hours = { "005Dm1500000009IAA" = ["09:00-13:00"] }',
            'member_hours = { "005Dm1500000009IAA" = ["9-1"] }',
            "member_hours",
            "is not a shift like '09:00-17:00'",
            id="bad-hours",
        ),
    ],
)
def test_bad_routing_sections_are_mapping_errors(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    with pytest.raises(MappingError) as caught:
        load_mapping(_mapping_with(tmp_path, old, new), rule_models())
    problems = dict(caught.value.problems)
    assert f"rules.lead_routing.{key}" in problems, caught.value.problems
    assert message in problems[f"rules.lead_routing.{key}"]


def test_declarations_include_the_score_and_the_stamps(mapping: LoadedMapping) -> None:
    s = settings_of(mapping)
    assert s.writes() == {
        "Lead": {
            "OwnerId",
            "Routed_At__c",
            "Routed_Band__c",
            "Routed_Territory__c",
            "Routed_Pool__c",
            "Routed_Slot__c",
            "Lead_Score__c",
            "Lead_Score_Category__c",
            "Lead_Score_Breakdown__c",
        }
    }
    needs = s.needs()
    assert {"UserId", "StartDate", "EndDate", "IsEnabled"} <= needs["OutOfOffice"]
    assert {"GroupId", "UserOrGroupId"} <= needs["GroupMember"]
    assert {"IsActive", "ManagerId", "Email"} <= needs["User"]
    assert {"State", "Industry", "Title", "Named_Account__c"} <= needs["Lead"] | needs["Account"]
