"""A merge whose master or victim another rule writes in the same plan waits for the next
run: deferred in the plan with the rule and record named, recorded as a conflict that is
not final, and planned again once the other rule's write is done."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from worker.actions import Action, CreateTask, FieldChange, MergeRecords, Outcome, UpdateRecord
from worker.app import App, open_app
from worker.pipeline import WRITTEN_IN_RUN
from worker.plan import Plan, build_plan
from worker.ports import OrgIdentity
from worker.records import RecordRef
from worker.rules.base import Evaluation, Verdict
from worker.settings import load_settings

AS_OF = dt.date(2026, 11, 23)
MASTER = RecordRef("Lead", "00Q000000000001AAA", "Jo Blake", "stamp-1")
VICTIMS = ("00Q000000000002AAA", "00Q000000000003AAA", "00Q000000000004AAA")


def merges() -> tuple[MergeRecords, MergeRecords]:
    """A group of four: two merge requests into one master."""

    def request(victims: tuple[str, ...]) -> MergeRecords:
        return MergeRecords(
            rule="lead_dedupe",
            sop="004.txt",
            step="merge",
            target=MASTER,
            reason="same email",
            key=f"lead_dedupe:merge-{'-'.join(victims)}:{MASTER.id}",
            victim_ids=victims,
            victim_stamps={v: "stamp" for v in victims},
            master_values={"Phone": "+14155550100"},
        )

    return request(VICTIMS[:2]), request(VICTIMS[2:])


def update(rule: str, record_id: str, field: str = "Phone") -> UpdateRecord:
    return UpdateRecord(
        rule=rule,
        sop="004.txt",
        step="clean",
        target=RecordRef("Lead", record_id, "", "stamp"),
        reason="cleaned",
        key=f"{rule}:clean:{record_id}",
        changes=(FieldChange(field, "(415) 555-0100", "+14155550100"),),
    )


def plan_of(actions: Sequence[Action], ledger: Mapping[str, Outcome] | None = None) -> Plan:
    by_target: dict[tuple[str, str], list[Action]] = {}
    for a in actions:
        by_target.setdefault((a.rule, a.target.id), []).append(a)
    return build_plan(
        [
            Evaluation(rule, acts[0].target, Verdict.ACT, "due", tuple(acts))
            for (rule, _), acts in by_target.items()
        ],
        org=OrgIdentity("00DDmU000000001MBA", "demo"),
        mapping="m.toml",
        as_of=AS_OF,
        generated_at=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
        precedence=["lead_hygiene", "lead_dedupe"],
        rule_order=["lead_hygiene", "lead_dedupe"],
        ledger=ledger or {},
        sops={},
    )


@pytest.mark.parametrize(
    ("written", "role"),
    [(VICTIMS[2], f"victim {VICTIMS[2]}"), (MASTER.id, "the master")],
)
def test_a_merge_waits_while_another_rule_writes_one_of_its_records(
    written: str, role: str
) -> None:
    first, second = merges()
    hygiene = update("lead_hygiene", written)
    plan = plan_of([first, second, hygiene])

    assert [a.key for a in plan.actions] == [hygiene.key]
    # Both requests into the master wait: they share its surviving values.
    assert [d.action.key for d in plan.deferred] == [first.key, second.key]
    assert plan.deferred[0].why.startswith(
        f"deferred to the next run: rule lead_hygiene writes {role} in this run"
    )
    assert Plan.from_dict(plan.to_dict()).deferred == plan.deferred


def test_the_merge_goes_once_the_other_write_is_done() -> None:
    first, second = merges()
    hygiene = update("lead_hygiene", VICTIMS[0])
    # The next run: the update applied, the deferral recorded as a conflict.
    later = plan_of(
        [first, second, hygiene],
        {hygiene.key: Outcome.APPLIED, first.key: Outcome.CONFLICT, second.key: Outcome.CONFLICT},
    )
    assert [a.key for a in later.actions] == [first.key, second.key]
    assert later.deferred == ()


def test_the_rules_own_writes_and_other_rules_notes_do_not_defer_it() -> None:
    first, second = merges()
    link = update("lead_dedupe", MASTER.id, "Matched_Account__c")
    task = CreateTask(
        rule="lead_sla",
        sop="004.txt",
        step="call",
        target=RecordRef("Lead", VICTIMS[0], "", "stamp"),
        reason="due",
        key=f"lead_sla:call:{VICTIMS[0]}",
        subject="Call",
        description="",
        due=AS_OF,
        owner_id=None,
        what_id=None,
        who_id=VICTIMS[0],
        fields={},
    )  # a Task on a victim moves to the master with the merge (and is in its snapshot)
    plan = plan_of([first, second, link, task])
    assert {a.key for a in plan.actions} == {first.key, second.key, link.key, task.key}
    assert plan.deferred == ()


@pytest.fixture
def app(demo_copy: Path, tmp_path: Path) -> Iterator[App]:
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=True) as opened:
        yield opened


def test_applying_records_the_deferral_as_a_conflict_audited(app: App) -> None:
    first, second = merges()
    plan = plan_of([first, second, update("lead_hygiene", VICTIMS[1])])
    # Only the deferral is applied here: the update's target is not in the demo org.
    plan = dataclasses.replace(plan, actions=(), org=app.pipeline.org())

    report = app.pipeline.apply_plan_file("run-1", plan)

    entries = {e.key: e for e in app.store.ledger_entries()}
    assert {entries[k].status for k in (first.key, second.key)} == {Outcome.CONFLICT}
    assert entries[first.key].error_code == WRITTEN_IN_RUN
    audit = [r for r in app.store.audit_rows(run_id="run-1") if r.key == first.key]
    assert [(r.outcome, r.error_code) for r in audit] == [("conflict", WRITTEN_IN_RUN)]
    assert "rule lead_hygiene writes victim" in (audit[0].message or "")
    assert report.outcomes[("lead_dedupe", "conflict")] == 2
