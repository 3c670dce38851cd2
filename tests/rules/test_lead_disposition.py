"""SOP 004 lead dispositions: No Response recycled to routing after 90 days, Do Not Contact
suppressed (opt-outs, the worker's open Tasks closed, no new call or email from any rule),
and the rep reminded to update a lead's status within a business day of a contact."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker import schema
from worker.actions import CreateTask, UpdateRecord
from worker.errors import MappingError
from worker.localorg import apply_actions, iter_raw_records
from worker.mapping import LoadedMapping, load_mapping
from worker.records import Record, Snapshot, format_sf_datetime
from worker.rules import ALL_RULES, AsOf, Evaluation, Verdict, evaluate_rule, rule_models

from ..conftest import DEFAULT_MAPPING, DEMO_ORG
from .declared import undeclared, walk_demo
from .routing_org import (
    AVA,
    CARA,
    CHICAGO,
    GROUPS,
    INTAKE,
    at,
    band_lead,
    groups,
    route,
    sfid,
    users,
)

RULE = next(r for r in ALL_RULES if r.id == "lead_disposition")
KEY = "SOP_Worker_Key__c"
MONDAY = dt.date(2026, 11, 23)
Raw = dict[str, Any]


def decide(mapping: LoadedMapping, records: list[Raw], when: AsOf) -> dict[str, Evaluation]:
    snapshot = Snapshot.build(Record.from_json(r) for r in records)
    settings = mapping.rules["lead_disposition"]
    return {e.target.id: e for e in evaluate_rule(RULE, snapshot, when, settings, mapping.common)}


def history(lead: Raw, when: dt.datetime, value: str, n: int) -> Raw:
    return {
        "attributes": {"type": "LeadHistory"},
        "Id": sfid("017", n),
        "LeadId": lead["Id"],
        "Field": "Status",
        "NewValue": value,
        "CreatedDate": format_sf_datetime(when),
    }


def task(lead: Raw, n: int, **fields: Any) -> Raw:
    return {
        "attributes": {"type": "Task"},
        "Id": sfid("00T", 900 + n),
        "WhoId": lead["Id"],
        "Subject": f"Task {n}",
        "OwnerId": AVA,
        "Status": "Not Started",
        "IsClosed": False,
        "Description": "Call the lead.",
        "SystemModstamp": "2026-11-01T10:00:00.000+0000",
        **fields,
    }


def no_response_lead(days_ago: int, n: int = 501) -> list[Raw]:
    created = dt.datetime(2026, 1, 5, 10, 0, tzinfo=CHICAGO)
    lead, *extra = band_lead("Warm", created, owner=AVA, n=n, Status="No Response")
    set_on = dt.datetime.combine(MONDAY - dt.timedelta(days=days_ago), dt.time(11), CHICAGO)
    return [lead, *extra, history(lead, set_on, "No Response", n)]


def org_with(*records: Raw) -> dict[str, Raw]:
    return {r["Id"]: r for r in [*users(), *groups(), *records]}


@pytest.mark.parametrize(("days", "recycled"), [(89, False), (90, True), (120, True)])
def test_no_response_is_recycled_after_90_days(
    mapping: LoadedMapping, days: int, recycled: bool
) -> None:
    records = no_response_lead(days)
    lead = records[0]

    found = decide(mapping, [*users(), *groups(), *records], at(MONDAY, 10))[lead["Id"]]

    if not recycled:
        assert found.verdict is Verdict.NOT_DUE
        assert found.next_due == MONDAY + dt.timedelta(days=90 - days)
        assert not found.actions
        return
    assert found.verdict is Verdict.ACT
    (update,) = found.actions
    assert isinstance(update, UpdateRecord)
    assert update.values() == {"Status": "Open - Not Contacted", "OwnerId": INTAKE}
    assert "No Response since" in found.why


def test_a_recycled_lead_is_routed_again_on_the_next_run(mapping: LoadedMapping) -> None:
    records = no_response_lead(95)
    lead = records[0]
    org = org_with(*records)
    when = at(MONDAY, 10)
    # Owned by a rep, lead_routing leaves it alone.
    assert route(mapping, org.values(), when)[lead["Id"]].verdict is Verdict.DONE

    recycled = decide(mapping, list(org.values()), when)[lead["Id"]].actions
    apply_actions(org, list(recycled), when.instant, KEY)
    routed = route(mapping, org.values(), at(MONDAY, 10, 5))[lead["Id"]]

    assert routed.verdict is Verdict.ACT
    owner = next(a for a in routed.actions if isinstance(a, UpdateRecord)).values()
    # Its behaviour is older than the scoring window now: 40, Qualified, the SDR queue.
    assert owner["OwnerId"] == GROUPS["SDR_Queue"][0]
    assert owner["Routed_Band__c"] == "Qualified"
    # Recycled once: the status is no longer No Response.
    assert decide(mapping, list(org.values()), at(MONDAY, 11))[lead["Id"]].actions == ()


def test_no_history_row_counts_from_the_lead_s_creation(mapping: LoadedMapping) -> None:
    created = dt.datetime(2026, 8, 1, 10, 0, tzinfo=CHICAGO)
    lead = band_lead("Cold", created, owner=CARA, n=510, Status="No Response")[0]

    found = decide(mapping, [*users(), *groups(), lead], at(MONDAY, 10))[lead["Id"]]

    assert found.verdict is Verdict.ACT
    assert "(created; no LeadHistory row)" in found.why


def test_do_not_contact_sets_both_opt_outs_and_closes_every_worker_task(
    mapping: LoadedMapping,
) -> None:
    created = dt.datetime(2026, 11, 2, 10, 0, tzinfo=CHICAGO)
    lead = band_lead("Cold", created, owner=CARA, n=520, Status="Do Not Contact")[0]
    routing_call = task(lead, 1, **{KEY: f"lead_routing:alert-2026-11-02:{lead['Id']}"})
    sla_task = task(lead, 2, **{KEY: f"lead_sla:escalate:{lead['Id']}"}, Description=None)
    done = task(lead, 3, **{KEY: f"lead_routing:alert-2026-11-01:{lead['Id']}"})
    done.update(Status="Completed", IsClosed=True)
    reps_own = task(lead, 4)  # a person's Task, no worker key

    found = decide(
        mapping, [*users(), *groups(), lead, routing_call, sla_task, done, reps_own], at(MONDAY, 10)
    )[lead["Id"]]

    assert found.verdict is Verdict.ACT
    opt_outs, *closes = found.actions
    assert isinstance(opt_outs, UpdateRecord)
    assert opt_outs.values() == {"HasOptedOutOfEmail": True, "DoNotCall": True}
    assert {a.target.id for a in closes} == {routing_call["Id"], sla_task["Id"]}
    for close in closes:
        assert isinstance(close, UpdateRecord)
        values = close.values()
        assert values["Status"] == "Completed"
        assert values["Description"].endswith(
            "2026-11-23: closed by SOP 004 Lead Disposition: Lead 520 is Do Not Contact; no "
            "calls or emails."
        )
    assert (
        next(c for c in closes if c.target.id == routing_call["Id"])
        .values()["Description"]
        .startswith("Call the lead.\n\n")
    )


def test_do_not_contact_once_done_is_done(mapping: LoadedMapping) -> None:
    created = dt.datetime(2026, 11, 2, 10, 0, tzinfo=CHICAGO)
    lead = band_lead("Cold", created, owner=CARA, n=521, Status="Do Not Contact", DoNotCall=True)[0]
    lead["HasOptedOutOfEmail"] = True

    found = decide(mapping, [*users(), *groups(), lead], at(MONDAY, 10))[lead["Id"]]

    assert found.verdict is Verdict.DONE
    assert found.actions == ()


def test_no_rule_plans_a_call_for_a_do_not_contact_lead(mapping: LoadedMapping) -> None:
    """A Hot lead set to Do Not Contact in the intake queue: routing still routes it, but its
    call-now alert is suppressed, shown with the reason."""
    created = dt.datetime(2026, 11, 23, 9, 0, tzinfo=CHICAGO)
    records = band_lead("Hot", created, n=530, Status="Do Not Contact")
    lead = records[0]

    routed = route(mapping, [*users(), *groups(), *records], at(MONDAY, 10))[lead["Id"]]

    assert not [a for a in routed.actions if isinstance(a, CreateTask)]
    (held,) = routed.suppressed
    assert isinstance(held.action, CreateTask)
    assert held.why == (
        f"suppressed: Lead {lead['Id']} has Status 'Do Not Contact': no call or email"
    )


def contact_lead(completed: dt.datetime, n: int, **task_fields: Any) -> tuple[Raw, Raw]:
    created = dt.datetime(2026, 11, 2, 10, 0, tzinfo=CHICAGO)
    lead = band_lead("Cold", created, owner=CARA, n=n, Status="Working - Contacted")[0]
    call = task(
        lead,
        n,
        Type="Call",
        TaskSubtype="Call",
        Status="Completed",
        IsClosed=True,
        OwnerId=CARA,
        Subject="Discovery call",
        CompletedDateTime=format_sf_datetime(completed),
        **task_fields,
    )
    return lead, call


def test_a_contact_without_a_status_update_gets_a_reminder_after_one_business_day(
    mapping: LoadedMapping,
) -> None:
    completed = dt.datetime(2026, 11, 20, 15, 30, tzinfo=CHICAGO)  # Friday
    lead, call = contact_lead(completed, 540)
    records = [*users(), *groups(), lead, call]

    waiting = decide(mapping, records, at(MONDAY, 15, 29))[lead["Id"]]
    due = decide(mapping, records, at(MONDAY, 15, 30))[lead["Id"]]

    assert waiting.verdict is Verdict.NOT_DUE
    assert waiting.next_due_at == dt.datetime(2026, 11, 23, 15, 30, tzinfo=CHICAGO)
    assert due.verdict is Verdict.ACT
    (reminder,) = due.actions
    assert isinstance(reminder, CreateTask)
    assert reminder.owner_id == CARA
    assert reminder.key == f"lead_disposition:remind-{call['Id']}:{lead['Id']}"
    assert reminder.subject == "Update the status of Lead 540: contacted 2026-11-20 15:30"
    assert "within 24 hours of contact" in reminder.description
    assert reminder.fields["TaskSubtype"] == "Task"  # a reminder to the rep, never suppressed


def test_a_status_update_after_the_contact_needs_no_reminder(mapping: LoadedMapping) -> None:
    completed = dt.datetime(2026, 11, 20, 15, 30, tzinfo=CHICAGO)
    lead, call = contact_lead(completed, 541)
    update = history(lead, completed + dt.timedelta(hours=1), "Working - Contacted", 541)

    found = decide(mapping, [*users(), *groups(), lead, call, update], at(MONDAY, 16))

    assert found[lead["Id"]].actions == ()


def test_one_reminder_per_contact(mapping: LoadedMapping) -> None:
    completed = dt.datetime(2026, 11, 20, 15, 30, tzinfo=CHICAGO)
    lead, call = contact_lead(completed, 542)
    made = task(lead, 43, **{KEY: f"lead_disposition:remind-{call['Id']}:{lead['Id']}"})

    found = decide(mapping, [*users(), *groups(), lead, call, made], at(MONDAY, 16))

    assert found[lead["Id"]].actions == ()


def test_an_old_contact_is_past_the_look_back(mapping: LoadedMapping) -> None:
    lead, call = contact_lead(dt.datetime(2026, 11, 10, 15, 30, tzinfo=CHICAGO), 543)

    found = decide(mapping, [*users(), *groups(), lead, call], at(MONDAY, 16))

    assert found[lead["Id"]].actions == ()


def test_the_recycle_queue_must_be_one_routing_reads(tmp_path: Any) -> None:
    text = DEFAULT_MAPPING.read_text(encoding="utf-8").replace(
        'recycle_queue = "Lead_Intake"', 'recycle_queue = "SDR_Queue"'
    )
    path = tmp_path / "mapping.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(MappingError) as raised:
        load_mapping(path, rule_models())

    assert "rules.lead_disposition.recycle_queue" in str(raised.value)
    assert "would not be routed again" in str(raised.value)


def test_the_demo_has_a_lead_for_each_disposition_step(mapping: LoadedMapping) -> None:
    """The demo converges in one run (a second run writes nothing), so its No Response lead
    is recycled later, on 2026-12-30: the recycle and the routing after it are tested
    above."""
    raws = list(iter_raw_records(DEMO_ORG))
    found = decide(mapping, raws, AsOf(dt.datetime(2026, 11, 23, 10, 0, tzinfo=CHICAGO)))
    steps = {a.key.split(":")[1].split("-")[0] for e in found.values() for a in e.actions}
    assert steps == {"suppress", "close_tasks", "remind"}
    waiting = found["00QDm1530000002MAA"]
    assert waiting.verdict is Verdict.NOT_DUE
    assert waiting.next_due == dt.date(2026, 12, 30)


def test_what_the_rule_writes_is_declared_for_doctor(mapping: LoadedMapping) -> None:
    settings = mapping.rules["lead_disposition"]
    seen = walk_demo("lead_disposition", mapping, days=3)

    assert seen.updates
    for sobject, names in seen.writes.items():
        assert names <= settings.writes().get(sobject, set()) | {
            schema.OWNER_ID,
            schema.STATUS,
            schema.DESCRIPTION,
        }, sobject
    assert settings.writes()[schema.LEAD] >= {"Status", "DoNotCall", "HasOptedOutOfEmail"}
    assert undeclared(seen, settings.picklist_values(), mapping) == {}
    assert settings.needs()["LeadHistory"] >= {"LeadId", "Field", "NewValue", "CreatedDate"}


def test_an_org_without_the_recycle_queue_is_an_error_for_that_lead(
    mapping: LoadedMapping,
) -> None:
    records = no_response_lead(95, n=560)
    found = decide(mapping, [*users(), *records], at(MONDAY, 10))[records[0]["Id"]]

    assert found.verdict is Verdict.ERROR
    assert "no queue 'Lead_Intake' in the org" in found.why
