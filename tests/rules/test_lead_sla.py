"""SOP 004 response-time SLAs, minute by minute: the business-hours clock from routing
(weekends, holidays, a DST change inside the window), the first qualifying touch, one
escalation to the owner's manager across reruns, the manager chain, reassignment within the
pool, and the leads that have no clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from worker.actions import CreateTask, UpdateRecord
from worker.business_hours import Closure
from worker.errors import MappingError
from worker.mapping import LoadedMapping, OrgMapping, load_mapping
from worker.records import Record, Snapshot, format_sf_datetime
from worker.rules import AsOf, Evaluation, Verdict, evaluate_rule, rule_models
from worker.rules.lead_sla import RULE, LeadSlaSettings

from .routing_org import (
    AVA,
    BEN,
    CARA,
    CHICAGO,
    GROUPS,
    KIM,
    LEO,
    NIA,
    SAM,
    Raw,
    band_lead,
    groups,
    lead,
    out_of_office,
    route,
    sfid,
    users,
    write_back,
)

MAPPING_FILE = Path(__file__).resolve().parents[2] / "mappings" / "default.toml"
FRIDAY = dt.date(2026, 11, 20)
MONDAY = dt.date(2026, 11, 23)
TUESDAY = dt.date(2026, 11, 24)
NURTURE = GROUPS["Marketing_Nurture"][0]
SDR = GROUPS["SDR_Queue"][0]


def local(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=CHICAGO)


def routed_lead(
    routed: dt.datetime,
    band: str = "Hot",
    owner: str = NIA,
    pool: str | None = "Senior_West",
    slot: int | None = 0,
    **fields: Any,
) -> Raw:
    """A lead lead_routing stamped at ``routed`` (its band, pool and slot)."""
    return lead(
        routed - dt.timedelta(minutes=1),
        owner=owner,
        Routed_At__c=format_sf_datetime(routed),
        Routed_Band__c=band,
        Routed_Pool__c=pool,
        Routed_Slot__c=slot,
        **fields,
    )


def touch(
    raw: Raw, done: dt.datetime, owner: str = NIA, kind: str = "Call", status: str = "Completed"
) -> Raw:
    """A call or email a rep logged on the lead."""
    return {
        "attributes": {"type": "Task"},
        "Id": sfid("00T", 9000 + done.hour * 60 + done.minute),
        "WhoId": raw["Id"],
        "Subject": kind,
        "Type": kind,
        "Status": status,
        "IsClosed": status == "Completed",
        "OwnerId": owner,
        "ActivityDate": done.date().isoformat(),
        "CompletedDateTime": format_sf_datetime(done) if status == "Completed" else None,
        "CreatedDate": format_sf_datetime(done),
        "SystemModstamp": format_sf_datetime(done),
    }


def with_closed_days(common: OrgMapping, *days: dt.date) -> OrgMapping:
    calendar = common.calendar
    closures = calendar.closures + tuple(Closure(day) for day in days)
    return dataclasses.replace(common, calendar=dataclasses.replace(calendar, closures=closures))


def sla_all(
    mapping: LoadedMapping,
    when: dt.datetime,
    records: list[Raw],
    closed: tuple[dt.date, ...] = (),
    settings: LeadSlaSettings | None = None,
) -> dict[str, Evaluation]:
    common = with_closed_days(mapping.common, *closed) if closed else mapping.common
    found = settings or mapping.rules["lead_sla"]
    assert isinstance(found, LeadSlaSettings)
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    return {e.target.id: e for e in evaluate_rule(RULE, snapshot, AsOf(when), found, common)}


def sla(
    mapping: LoadedMapping,
    when: dt.datetime,
    *records: Raw,
    closed: tuple[dt.date, ...] = (),
    user_changes: dict[str, Raw] | None = None,
    settings: LeadSlaSettings | None = None,
) -> Evaluation:
    """The verdict on the first record (a lead), in an org of the demo's users and pools."""
    org = [*users(**(user_changes or {})), *groups(), *records]
    return sla_all(mapping, when, org, closed, settings)[records[0]["Id"]]


def escalation(found: Evaluation) -> CreateTask:
    """The breach's Task for the manager."""
    (task,) = [a for a in found.actions if isinstance(a, CreateTask) and "escalated" in a.step]
    return task


# A Hot lead routed Friday 16:58, 09:00-17:00 hours, a 5-minute SLA.
@pytest.mark.parametrize(
    ("now", "closed", "verdict", "due"),
    [
        pytest.param(
            local(FRIDAY, 16, 59), (), Verdict.NOT_DUE, local(MONDAY, 9, 3), id="fri-16:59"
        ),
        pytest.param(local(FRIDAY, 23), (), Verdict.NOT_DUE, local(MONDAY, 9, 3), id="fri-night"),
        pytest.param(local(MONDAY, 9, 2), (), Verdict.NOT_DUE, local(MONDAY, 9, 3), id="mon-09:02"),
        pytest.param(local(MONDAY, 9, 3), (), Verdict.NOT_DUE, local(MONDAY, 9, 3), id="mon-09:03"),
        pytest.param(local(MONDAY, 9, 4), (), Verdict.ACT, None, id="mon-09:04-breached"),
        pytest.param(
            local(MONDAY, 9, 4), (MONDAY,), Verdict.NOT_DUE, local(TUESDAY, 9, 3), id="mon-holiday"
        ),
        pytest.param(
            local(TUESDAY, 9, 3), (MONDAY,), Verdict.NOT_DUE, local(TUESDAY, 9, 3), id="tue-09:03"
        ),
        pytest.param(local(TUESDAY, 9, 4), (MONDAY,), Verdict.ACT, None, id="tue-09:04-breached"),
    ],
)
def test_the_clock_runs_on_business_minutes(
    mapping: LoadedMapping,
    now: dt.datetime,
    closed: tuple[dt.date, ...],
    verdict: Verdict,
    due: dt.datetime | None,
) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58))
    found = sla(mapping, now, raw, closed=closed)
    assert found.verdict is verdict, found.why
    if due is not None:
        assert found.next_due_at == due
        assert found.actions == ()
    else:
        task = escalation(found)
        assert task.owner_id == SAM  # Nia's manager
        assert task.fields["Priority"] == "High"
        assert "breached by 1" in found.why


def test_explain_shows_the_due_instant_and_the_business_minutes_used(
    mapping: LoadedMapping,
) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58))
    found = sla(mapping, local(MONDAY, 9, 1), raw)
    assert found.why == (
        "routed Fri 2026-11-20 16:58 CST, Hot 5 business minutes: due Mon 2026-11-23 09:03 CST; "
        "no touch yet, 3 of 5 business minutes used"
    )
    assert found.next_due_at == local(MONDAY, 9, 3)
    late = sla(mapping, local(MONDAY, 10), raw)
    assert late.why.startswith(
        "routed Fri 2026-11-20 16:58 CST, Hot 5 business minutes: due Mon 2026-11-23 09:03 CST; "
        "no touch, 62 business minutes: breached by 57; escalated to Sam Ortiz (the owner's "
        "manager); reassigned to Leo Park"
    )


def test_the_clock_starts_at_the_stamp_lead_routing_writes(mapping: LoadedMapping) -> None:
    """Routed by lead_routing itself Friday 16:58: its stamp starts lead_sla's clock."""
    org = {r["Id"]: r for r in [*users(), *groups(), *band_lead("Hot", local(FRIDAY, 16, 50))]}
    routed_at = AsOf(local(FRIDAY, 16, 58))
    write_back(org, route(mapping, org.values(), routed_at).values(), routed_at, mapping)
    (raw,) = [r for r in org.values() if r.get("Routed_At__c")]
    found = sla_all(mapping, local(MONDAY, 9, 2), list(org.values()))[raw["Id"]]
    assert found.verdict is Verdict.NOT_DUE
    assert found.next_due_at == local(MONDAY, 9, 3)


def test_a_lead_created_on_a_holiday_starts_its_clock_at_the_next_opening(
    mapping: LoadedMapping,
) -> None:
    """Thanksgiving (a US public holiday in the mapping's calendar), 10:00: a Warm hour
    runs Friday 09:00-10:00."""
    thanksgiving = dt.date(2026, 11, 26)
    raw = routed_lead(local(thanksgiving, 10), band="Warm", pool="Reps_West", owner=AVA)
    found = sla(mapping, local(thanksgiving, 15), raw)
    assert found.verdict is Verdict.NOT_DUE
    assert found.next_due_at == local(dt.date(2026, 11, 27), 10)
    assert "0 of 60 business minutes used" in found.why


def test_a_dst_change_inside_the_window(mapping: LoadedMapping) -> None:
    """Routed Friday 16:30 CDT before clocks go back (Sunday 2026-11-01): the Warm hour is
    30 minutes on Friday and 30 on Monday, due 09:30 CST (15:30 UTC, not 14:30)."""
    friday = dt.date(2026, 10, 30)
    raw = routed_lead(local(friday, 16, 30), band="Warm", pool="Reps_West", owner=AVA)
    found = sla(mapping, local(dt.date(2026, 11, 2), 9), raw)
    assert found.next_due_at == dt.datetime(2026, 11, 2, 15, 30, tzinfo=dt.UTC)
    assert "due Mon 2026-11-02 09:30 CST" in found.why
    assert "30 of 60 business minutes used" in found.why


def test_the_owners_call_or_email_stops_the_clock(mapping: LoadedMapping) -> None:
    """The first touch's instant goes to First_Response_Date__c once (the report's
    response-time figures); a lead that has one is done."""
    raw = routed_lead(local(FRIDAY, 16, 58))
    on_time = sla(mapping, local(MONDAY, 10), raw, touch(raw, local(MONDAY, 9, 2)))
    assert on_time.verdict is Verdict.ACT
    assert on_time.why.endswith(
        "first touch Call Task at Mon 2026-11-23 09:02 CST, 4 business minutes: within the SLA"
    )
    (stamp,) = on_time.actions
    assert isinstance(stamp, UpdateRecord)
    assert [(c.field, c.after) for c in stamp.changes] == [
        ("First_Response_Date__c", "2026-11-23T15:02:00.000+0000")
    ]
    raw["First_Response_Date__c"] = "2026-11-23T15:02:00.000+0000"
    later = touch(raw, local(MONDAY, 9, 30), kind="Email")
    done = sla(mapping, local(MONDAY, 10), raw, touch(raw, local(MONDAY, 9, 2)), later)
    assert done.verdict is Verdict.DONE
    assert done.actions == ()
    late = sla(mapping, local(MONDAY, 10), raw, later)
    assert late.verdict is Verdict.DONE
    assert late.why.endswith("32 business minutes: after the SLA")


@pytest.mark.parametrize(
    "other",
    [
        pytest.param({"owner": BEN}, id="someone-else"),
        pytest.param({"status": "Not Started"}, id="not-completed"),
        pytest.param({"kind": "Meeting"}, id="not-a-call-or-email"),
    ],
)
def test_a_touch_that_does_not_count_leaves_the_clock_running(
    mapping: LoadedMapping, other: dict[str, Any]
) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58))
    found = sla(mapping, local(MONDAY, 10), raw, touch(raw, local(MONDAY, 9, 2), **other))
    assert found.verdict is Verdict.ACT
    assert escalation(found).owner_id == SAM


def test_a_touch_before_routing_does_not_count(mapping: LoadedMapping) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58))
    found = sla(mapping, local(MONDAY, 10), raw, touch(raw, local(FRIDAY, 16, 50)))
    assert found.verdict is Verdict.ACT


def test_in_a_queue_anyones_touch_counts(mapping: LoadedMapping) -> None:
    raw = routed_lead(local(FRIDAY, 10), band="Qualified", owner=SDR, pool=None, slot=None)
    found = sla(mapping, local(MONDAY, 10), raw, touch(raw, local(FRIDAY, 11), owner=BEN))
    assert found.verdict is Verdict.ACT
    assert "first touch Call Task at Fri 2026-11-20 11:00 CST" in found.why
    assert [type(a) for a in found.actions] == [UpdateRecord]


def test_a_status_off_open_is_a_touch(mapping: LoadedMapping) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58), Status="Working - Contacted")
    found = sla(mapping, local(MONDAY, 10), raw)
    assert found.verdict is Verdict.DONE
    assert found.actions == ()  # no instant to record
    assert found.why.endswith("touched: status 'Working - Contacted', off the open statuses")


def test_a_breach_is_escalated_once_across_reruns(mapping: LoadedMapping) -> None:
    """The escalation Task's key is in the org after the first run: a rerun (or a run
    after a lost database) finds it and plans nothing; the reassignment moved the stamp."""
    raw = routed_lead(local(FRIDAY, 16, 58), pool="Reps_West", band="Warm", owner=BEN)
    org = {r["Id"]: r for r in [*users(), *groups(), raw]}
    first_at = local(MONDAY, 10)
    first = sla_all(mapping, first_at, list(org.values()))
    task = escalation(first[raw["Id"]])
    assert task.key.startswith("lead_sla:escalate-2026-11-20:")
    write_back(org, first.values(), AsOf(first_at), mapping)
    for later in (local(MONDAY, 10, 5), local(MONDAY, 15), local(TUESDAY, 9)):
        again = sla_all(mapping, later, list(org.values()))[raw["Id"]]
        assert again.verdict is Verdict.DONE, later
        assert again.actions == ()
        assert again.why.endswith("; escalated once already")


def test_a_reassigned_lead_gets_a_new_clock_and_its_own_escalation(
    mapping: LoadedMapping,
) -> None:
    """Hot leads are reassigned on a breach (the mapping's ``reassign``): Nia missed it, the
    senior pool's next member (Leo) gets the lead, a Task and a new clock; the manager's Task
    is written once, and a later breach of Leo's is a new routing, escalated again."""
    raw = routed_lead(local(FRIDAY, 16, 58), slot=0)
    org = {r["Id"]: r for r in [*users(), *groups(), raw]}
    at = local(MONDAY, 10)
    found = sla_all(mapping, at, list(org.values()))[raw["Id"]]
    kinds = [(type(a).__name__, a.step.split(": ")[1]) for a in found.actions]
    assert kinds == [
        ("CreateTask", "breach escalated to the Sales Manager"),
        ("CreateTask", "breach reassigned to the pool's next member"),
        ("UpdateRecord", "breach reassigned to the pool's next member"),
    ]
    assert len({a.key for a in found.actions}) == 3  # each action its own key
    manager, new_owner, update = found.actions
    assert isinstance(manager, CreateTask)
    assert manager.owner_id == SAM
    assert "The lead is reassigned to Leo Park." in manager.description
    assert isinstance(new_owner, CreateTask)
    assert new_owner.owner_id == LEO
    assert new_owner.due_at == local(MONDAY, 10, 5)
    assert isinstance(update, UpdateRecord)
    assert {c.field: c.after for c in update.changes} == {
        "OwnerId": LEO,
        "Routed_At__c": format_sf_datetime(at),
        "Routed_Slot__c": 1,
    }
    assert "pool Senior_West position 1 -> 0" in found.why
    write_back(org, [found], AsOf(at), mapping)
    quiet = sla_all(mapping, local(MONDAY, 10, 4), list(org.values()))[raw["Id"]]
    assert quiet.verdict is Verdict.NOT_DUE
    assert quiet.next_due_at == local(MONDAY, 10, 5)
    again = sla_all(mapping, local(MONDAY, 11), list(org.values()))[raw["Id"]]
    assert escalation(again).owner_id == SAM
    assert escalation(again).key != manager.key


def test_reassignment_passes_over_members_out_of_office(mapping: LoadedMapping) -> None:
    """Leo is out: no other senior member is eligible, so the lead stays with Nia and the
    manager hears of it."""
    raw = routed_lead(local(FRIDAY, 16, 58))
    away = out_of_office(LEO, "2026-11-20T06:00:00.000+0000", "2026-11-27T06:00:00.000+0000")
    found = sla(mapping, local(MONDAY, 10), raw, away)
    assert [type(a) for a in found.actions] == [CreateTask]
    assert "The lead is not reassigned." in escalation(found).description
    assert (
        "not reassigned: pool Senior_West has no other eligible member (skipped Leo Park (out "
        "of office to 2026-11-27); skipped Nia Brooks (missed the SLA))" in found.why
    )


def test_two_breaches_in_one_run_take_successive_turns(mapping: LoadedMapping) -> None:
    one = routed_lead(local(FRIDAY, 15), band="Warm", pool="Reps_West", owner=AVA, slot=0)
    two = routed_lead(local(FRIDAY, 15, 1), band="Warm", pool="Reps_West", owner=AVA, slot=3)
    relaxed = mapping.rules["lead_sla"].model_copy(update={"reassign": ("Warm",)})
    assert isinstance(relaxed, LeadSlaSettings)
    relaxed.link(mapping.rules)
    found = sla_all(mapping, local(MONDAY, 10), [*users(), *groups(), one, two], settings=relaxed)
    owners = [
        next(a.owner_id for a in found[r["Id"]].actions if a.step.endswith("next member"))
        for r in (one, two)
    ]
    # Reps_West deals Ava Ben Ava Cara (2:1:1); after slot 3 comes Ava (passed over: she
    # missed the SLA), then Ben; the next turn is Ava's again (passed over), then Cara.
    assert owners == [BEN, CARA]


@pytest.mark.parametrize(
    ("changes", "manager", "how"),
    [
        pytest.param({}, SAM, "the owner's manager", id="manager"),
        pytest.param({SAM: {"IsActive": False}}, KIM, "up the chain", id="inactive-manager"),
        pytest.param(
            {SAM: {"IsActive": False, "ManagerId": NIA}},
            KIM,
            "the manager chain loops: the fallback manager",
            id="loop",
        ),
        pytest.param(
            {SAM: {"ManagerId": NIA}, KIM: {"IsActive": False}},
            SAM,
            "the owner's manager",
            id="loop-with-an-active-manager",
        ),
        pytest.param(
            {NIA: {"ManagerId": None}},
            KIM,
            "no active manager: the fallback manager",
            id="no-manager",
        ),
        pytest.param(
            {SAM: {"IsActive": False, "ManagerId": None}},
            KIM,
            "no active manager: the fallback manager",
            id="inactive-manager-at-the-top",
        ),
    ],
)
def test_the_escalation_goes_up_the_manager_chain(
    mapping: LoadedMapping, changes: dict[str, Raw], manager: str, how: str
) -> None:
    raw = routed_lead(local(FRIDAY, 16, 58), pool=None)
    found = sla(mapping, local(MONDAY, 10), raw, user_changes=changes)
    assert escalation(found).owner_id == manager
    assert f"({how})" in found.why


def test_a_lead_in_a_queue_escalates_to_the_fallback_manager(mapping: LoadedMapping) -> None:
    raw = routed_lead(local(FRIDAY, 10), band="Qualified", owner=SDR, pool=None, slot=None)
    found = sla(mapping, local(MONDAY, 11), raw)
    assert escalation(found).owner_id == KIM
    assert "(a queue owns the lead: the fallback manager)" in found.why


def test_a_lead_owned_by_an_inactive_user_has_no_clock(mapping: LoadedMapping) -> None:
    """lead_routing routes it again (a new stamp, a new clock): no escalation meanwhile."""
    raw = routed_lead(local(FRIDAY, 16, 58))
    found = sla(mapping, local(MONDAY, 10), raw, user_changes={NIA: {"IsActive": False}})
    assert found.verdict is Verdict.EXCLUDED
    assert found.actions == ()
    assert "owner Nia Brooks is inactive: lead_routing routes the lead again" in found.why


def test_a_cold_lead_in_a_queue_has_no_sla(mapping: LoadedMapping) -> None:
    nurture = routed_lead(local(FRIDAY, 10), band="Cold", owner=NURTURE, pool=None, slot=None)
    found = sla(mapping, local(TUESDAY, 12), nurture)
    assert found.verdict is Verdict.EXCLUDED
    assert "no SLA (the Cold clock runs only for a lead a person owns)" in found.why
    owned = routed_lead(local(FRIDAY, 10), band="Cold", owner=AVA, pool=None, slot=None)
    found = sla(mapping, local(FRIDAY, 12), owned)
    assert found.verdict is Verdict.NOT_DUE
    assert found.next_due_at == local(TUESDAY, 10)  # 48 hours: two business days
    assert escalation(sla(mapping, local(TUESDAY, 10, 1), owned)).owner_id == SAM


def test_unrouted_and_converted_leads_are_not_candidates(mapping: LoadedMapping) -> None:
    fresh = lead(local(FRIDAY, 10), owner=NIA)
    converted = routed_lead(local(FRIDAY, 10), IsConverted=True)
    home_care = routed_lead(local(FRIDAY, 10))
    home_care["RecordType"] = {"attributes": {"type": "RecordType"}, "DeveloperName": "Home_Care"}
    assert sla_all(mapping, local(MONDAY, 10), [*users(), fresh, converted, home_care]) == {}


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        pytest.param(
            'routing_rule = "lead_routing"',
            'routing_rule = "nope"',
            "routing_rule",
            "no lead routing section [rules.nope]",
            id="no-routing",
        ),
        pytest.param(
            'reassign = ["Hot"]',
            'reassign = ["Lukewarm"]',
            "reassign",
            "no response time for Lukewarm",
            id="unknown-band",
        ),
        pytest.param(
            'fallback_manager = "005Dm1500000014IAA"',
            'fallback_manager = "00GDm1500000001MAA"',
            "fallback_manager",
            "not a User Id",
            id="not-a-user",
        ),
    ],
)
def test_bad_sla_sections_are_mapping_errors(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    text = MAPPING_FILE.read_text(encoding="utf-8")
    start = text.index("[rules.lead_sla]")
    assert old in text[start:], old
    path = tmp_path / "mapping.toml"
    path.write_text(text[:start] + text[start:].replace(old, new, 1), encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path, rule_models())
    problems = dict(caught.value.problems)
    assert f"rules.lead_sla.{key}" in problems, caught.value.problems
    assert message in problems[f"rules.lead_sla.{key}"]


def test_declarations_read_the_stamps_and_the_touches(mapping: LoadedMapping) -> None:
    s = mapping.rules["lead_sla"]
    assert s.writes() == {
        "Lead": {"OwnerId", "Routed_At__c", "Routed_Slot__c", "First_Response_Date__c"}
    }
    needs = s.needs()
    assert {"Type", "OwnerId", "CompletedDateTime"} <= needs["Task"]
    assert {"Routed_At__c", "Routed_Band__c", "Routed_Pool__c", "Routed_Slot__c"} <= needs["Lead"]
    assert {"IsActive", "ManagerId"} <= needs["User"]
    assert {"UserId", "StartDate", "EndDate"} <= needs["OutOfOffice"]
    assert s.picklist_values()[("Task", "Type")] == {"Call", "Email"}
