"""The one suppression check: no rule plans a call or an email for a person who may not be
contacted that way, and what it leaves out is shown in the plan and in ``explain``.

Each rule family is run over the demo org as it is, then with the person of one of its
planned calls or emails suppressed: that action moves to ``suppressed`` with the reason,
and nothing else changes."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import io
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from worker import schema
from worker.actions import Action, CreateTask, SendEmail
from worker.localorg import iter_raw_records
from worker.mapping import LoadedMapping
from worker.pipeline import Explanation
from worker.plan import Plan, build_plan
from worker.ports import OrgIdentity
from worker.records import Record, Snapshot
from worker.report import explanation_record, print_explanation, print_plan
from worker.rules import ALL_RULES, AsOf, Evaluation, evaluate_rule
from worker.suppression import SuppressionCheck

from .conftest import DEMO_ORG

AT = AsOf(dt.datetime(2026, 11, 23, 10, 0, tzinfo=ZoneInfo("America/Chicago")))
NEW_CONTACT = "003DmS000000001AAA"
Raws = dict[str, dict[str, Any]]


def demo() -> Raws:
    return {raw["Id"]: raw for raw in iter_raw_records(DEMO_ORG)}


def evaluate(rule_id: str, raws: Raws, mapping: LoadedMapping) -> list[Evaluation]:
    rule = next(r for r in ALL_RULES if r.id == rule_id)
    snapshot = Snapshot.build(Record.from_json(r) for r in raws.values())
    return list(evaluate_rule(rule, snapshot, AT, mapping.rules[rule_id], mapping.common))


def planned(evaluations: list[Evaluation]) -> dict[str, Action]:
    return {a.key: a for e in evaluations for a in e.actions}


def suppressed(evaluations: list[Evaluation]) -> dict[str, str]:
    return {s.action.key: s.why for e in evaluations for s in e.suppressed}


def first(
    rule_id: str, channel: str, raws: Raws, mapping: LoadedMapping, on: str | None = None
) -> CreateTask:
    check = SuppressionCheck(Snapshot(), mapping.common)
    found = [
        a
        for a in planned(evaluate(rule_id, raws, mapping)).values()
        if isinstance(a, CreateTask)
        and check.channel(a) == channel
        and on in (None, a.target.sobject)
    ]
    assert found, f"the demo has no {channel} Task of {rule_id}"
    return found[0]


def opt_out(raws: Raws, task: CreateTask, flag: str) -> str:
    """Set ``flag`` on the Task's person (its WhoId, the record it is on, or the contact the
    record names, made when the demo has none): the person's Id."""
    person = task.who_id
    if person is None:
        target = raws[task.target.id]
        if target["attributes"]["type"] in (schema.LEAD, "Contact"):
            person = target["Id"]
        else:
            person = target.get("ContactId") or NEW_CONTACT
            target["ContactId"] = person
    if person not in raws:
        raws[person] = {
            "attributes": {"type": "Contact"},
            "Id": person,
            "Name": "Pat Customer",
            "Email": "pat@example.com",
            "SystemModstamp": "2026-11-01T10:00:00.000+0000",
        }
    raws[person][flag] = True
    return person


@pytest.mark.parametrize(
    ("rule_id", "channel", "flag", "on"),
    [
        ("payment_followup", "call", "DoNotCall", None),  # the opportunity's primary contact
        ("rejected_payments", "call", "DoNotCall", None),  # the case's contact (WhoId)
        ("rejected_payments", "email", "HasOptedOutOfEmail", None),
        ("collections", "email", "HasOptedOutOfEmail", None),  # the account's main contact
        # Its leads' own opt-outs end its cadence first (lead_opt_out_fields); its
        # opportunities' calls go to the opportunity's contact.
        ("homecare_stages", "call", "DoNotCall", "Opportunity"),
        ("lead_routing", "call", "DoNotCall", None),  # a Hot lead's call-now alert
    ],
)
def test_each_rule_family_plans_no_call_or_email_for_a_suppressed_person(
    mapping: LoadedMapping, rule_id: str, channel: str, flag: str, on: str | None
) -> None:
    raws = demo()
    before = planned(evaluate(rule_id, raws, mapping))
    task = first(rule_id, channel, raws, mapping, on)
    person = opt_out(raws, task, flag)

    after = evaluate(rule_id, raws, mapping)

    held = suppressed(after)
    assert task.key not in planned(after)
    assert f"{person} has {flag} set: no {channel}" in held[task.key]
    # Nothing else of the rule changes, but what goes with the suppressed step.
    assert set(before) - set(planned(after)) == set(held)
    assert all(k == task.key or k.startswith(task.key.rsplit(":", 1)[0] + "-") for k in held)


def test_a_suppressed_call_takes_its_attempt_log_with_it(mapping: LoadedMapping) -> None:
    raws = demo()
    task = first("payment_followup", "call", raws, mapping)
    opt_out(raws, task, "DoNotCall")

    held = suppressed(evaluate("payment_followup", raws, mapping))

    rule, step, record = task.key.split(":")
    log_key = f"{rule}:{step}-log:{record}"
    assert held[log_key].startswith(f"goes with the suppressed {task.key}: suppressed: ")


def test_a_call_opt_out_leaves_emails_and_an_email_opt_out_leaves_calls(
    mapping: LoadedMapping,
) -> None:
    raws = demo()
    call = first("rejected_payments", "call", raws, mapping)
    opt_out(raws, call, "HasOptedOutOfEmail")
    assert call.key in planned(evaluate("rejected_payments", raws, mapping))

    raws = demo()
    email = first("collections", "email", raws, mapping)
    opt_out(raws, email, "DoNotCall")
    assert email.key in planned(evaluate("collections", raws, mapping))


def test_a_do_not_contact_status_suppresses_calls_and_emails_alike(
    mapping: LoadedMapping,
) -> None:
    raws = demo()
    task = first("lead_routing", "call", raws, mapping)
    raws[task.target.id]["Status"] = "Do Not Contact"

    after = evaluate("lead_routing", raws, mapping)

    assert "has Status 'Do Not Contact': no call or email" in suppressed(after)[task.key]
    # Routing itself (the owner update) is no contact: it goes ahead.
    assert any(a.target.id == task.target.id for a in planned(after).values())


def test_a_task_for_the_rep_is_never_suppressed(mapping: LoadedMapping) -> None:
    raws = demo()
    evaluations = evaluate("lead_routing", raws, mapping)
    check = SuppressionCheck(Snapshot(), mapping.common)
    plain = [
        a
        for a in planned(evaluations).values()
        if isinstance(a, CreateTask) and check.channel(a) is None and a.who_id in raws
    ]
    assert plain  # the SDR queue's and the manager's Tasks
    for action in plain:
        raws[action.who_id or ""]["Status"] = "Do Not Contact"
        raws[action.who_id or ""]["DoNotCall"] = True

    after = planned(evaluate("lead_routing", raws, mapping))

    assert all(a.key in after for a in plain)


def test_an_email_is_suppressed_for_its_recipient_not_for_the_record_it_is_about(
    mapping: LoadedMapping,
) -> None:
    """A SendEmail to the contact's address is suppressed; the routing alert a rep gets
    about a lead who opted out of email is not an email to that lead."""
    sending = dataclasses.replace(
        mapping.common, org=mapping.common.org.model_copy(update={"email_action_enabled": True})
    )
    sends = dataclasses.replace(mapping, common=sending)
    raws = demo()
    emails = [
        a
        for a in planned(evaluate("collections", raws, sends)).values()
        if isinstance(a, SendEmail)
    ]
    assert emails
    contacts = [
        r for r in raws.values() if (r.get("Email") or "").lower() == emails[0].to_address.lower()
    ]
    for contact in contacts:
        contact["HasOptedOutOfEmail"] = True
    assert (
        "has HasOptedOutOfEmail set: no email"
        in suppressed(evaluate("collections", raws, sends))[emails[0].key]
    )

    raws = demo()
    alerts = [
        a
        for a in planned(evaluate("lead_routing", raws, sends)).values()
        if isinstance(a, SendEmail)
    ]
    assert alerts
    for alert in alerts:
        raws[alert.target.id]["HasOptedOutOfEmail"] = True
    after = planned(evaluate("lead_routing", raws, sends))
    assert all(a.key in after for a in alerts)


def test_the_plan_and_explain_show_a_suppressed_action_with_its_reason(
    mapping: LoadedMapping,
) -> None:
    raws = demo()
    task = first("lead_routing", "call", raws, mapping)
    opt_out(raws, task, "DoNotCall")
    evaluations = evaluate("lead_routing", raws, mapping)
    plan = build_plan(
        evaluations,
        org=OrgIdentity("00DDmU000000001MBA", "demo"),
        mapping="default.toml",
        as_of=AT,
        generated_at=AT.instant,
        precedence=mapping.precedence,
        rule_order=["lead_routing"],
        ledger={},
        sops={"lead_routing": "004_decc60c4b5a2963f.txt"},
    )
    assert [s.action.key for s in plan.suppressed] == [task.key]
    assert task.key not in {a.key for a in plan.actions}
    again = Plan.from_dict(plan.to_dict())  # a plan file keeps them
    assert [(s.action.key, s.why) for s in again.suppressed] == [
        (s.action.key, s.why) for s in plan.suppressed
    ]

    out = io.StringIO()
    print_plan(plan, Console(file=out, width=200))
    shown = out.getvalue()
    assert "Suppressed (the person may not be called or emailed)" in shown
    assert "DoNotCall set: no call" in shown

    mine = tuple(e for e in evaluations if e.target.id == task.target.id)
    found = Explanation(task.target.id, None, "", mine, (), {}, (), ())
    (verdict,) = explanation_record(found, AT.date)["rules"]
    assert verdict["suppressed"][0]["key"] == task.key
    assert "DoNotCall set" in verdict["suppressed"][0]["why"]
    out = io.StringIO()
    print_explanation(found, AT.date, Console(file=out, width=300))
    assert "skipped new Task" in out.getvalue()
    assert "DoNotCall set: no call" in out.getvalue()


def test_the_demo_plans_no_call_or_email_for_a_suppressed_person(mapping: LoadedMapping) -> None:
    """Over every rule, as the pipeline runs them: what goes ahead contacts nobody
    suppressed."""
    raws = copy.deepcopy(demo())
    snapshot = Snapshot.build(Record.from_json(r) for r in raws.values())
    check = SuppressionCheck(snapshot, mapping.common)
    for rule in ALL_RULES:
        if rule.id in mapping.rules:
            for e in evaluate(rule.id, raws, mapping):
                assert all(check.check(a) is None for a in e.actions)
