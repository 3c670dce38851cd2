"""What `apply` and `run` re-check before writing, over the demo org.

Every action's target (the record the rule acted on) is read again once, before the first
write: one a person deleted, closed, converted or otherwise changed since it was read makes
all its actions conflicts (Tasks and comments included), audited with what changed, and
nothing of them is written. The worker's own writes in the same apply never count as a
change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from worker.actions import Action, ActionResult, Outcome
from worker.app import open_app
from worker.cli import cli
from worker.localorg import LocalOrg, iter_raw_records, read_manifest
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page, TargetState
from worker.records import RecordRef
from worker.settings import load_settings
from worker.store import AuditRow, Store

LATER = "2026-11-23T09:30:00.000+0000"  # after every demo record's stamp: a person's edit
CASE_WITH_TWO_TASKS = "500DmR000000001AAA"  # a call Task and an "email the homeowner" Task
CASE_WITH_COMMENT_AND_TASK = "500DmR000000008AAA"  # the call log comment and the next call
CASE_CLOSED_IN_ONE_STEP = "500DmR000000017AAA"  # call log, closing comment, closure
OPPORTUNITY_FOLLOW_UP = "006DmP000000007AAA"  # a follow-up Task and its log line
OPPORTUNITY_INITIAL = "006DmP000000004AAA"  # the first call Task and its log line
LEAD_WITH_A_TASK = "00QDmH000000018AAA"  # a qualification call Task


def invoke(*args: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), env={"WORKER_LOG_FORMAT": "json"}, catch_exceptions=False
    )


def org_args(org: Path, db: Path) -> list[str]:
    return ["--local-org", str(org), "--db-path", str(db)]


def edit(org: Path, record_id: str, **fields: Any) -> None:
    """What a person's edit leaves in the org: new values and a later SystemModstamp."""
    for path in sorted((org / "records").glob("*.json")):
        body = json.loads(path.read_text(encoding="utf-8"))
        for record in body["records"]:
            if record["Id"] == record_id:
                record.update(fields, SystemModstamp=LATER)
                path.write_text(json.dumps(body), encoding="utf-8")
                return
    raise AssertionError(f"{record_id} is not in {org}")


def saved_plan(org: Path, db: Path, out: Path) -> dict[str, Any]:
    result = invoke("plan", *org_args(org, db), "--out", str(out))
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def keys_on(plan: Mapping[str, Any], record_id: str) -> set[str]:
    return {a["key"] for a in plan["actions"] if a["target"]["id"] == record_id}


def written_on(working: Path, record_id: str) -> list[dict[str, Any]]:
    """Tasks and CaseComments the worker created that point at the record."""
    created = working / "records" / "zz-created-by-worker.json"
    if not created.exists():
        return []
    return [
        r
        for r in json.loads(created.read_text(encoding="utf-8"))["records"]
        if record_id in (r.get("WhatId"), r.get("WhoId"), r.get("ParentId"))
    ]


def conflicts(db: Path) -> dict[str, AuditRow]:
    with Store.open(db) as store:
        return {r.key: r for r in store.audit_rows(outcome="conflict")}


@pytest.mark.parametrize(
    ("record_id", "change", "code", "said"),
    [
        # A person closed the Case after planning: no call Task, no email-the-homeowner Task.
        (CASE_WITH_TWO_TASKS, {"Status": "Closed", "IsClosed": True}, "RECORD_CLOSED", "closed"),
        # ... nor the call log comment and the next call.
        (
            CASE_WITH_COMMENT_AND_TASK,
            {"Status": "Closed", "IsClosed": True},
            "RECORD_CLOSED",
            "closed",
        ),
        # The opportunity was changed since: its follow-up Task is not created on old facts.
        (OPPORTUNITY_FOLLOW_UP, {"NextStep": "Paid by phone"}, "RECORD_CHANGED", "changed"),
        # The record was deleted since: no Task on a record that is gone.
        (OPPORTUNITY_INITIAL, {"IsDeleted": True}, "ENTITY_IS_DELETED", "deleted"),
        # The lead was converted since: no Task on a converted lead.
        (LEAD_WITH_A_TASK, {"IsConverted": True}, "LEAD_CONVERTED", "converted"),
    ],
)
def test_apply_writes_nothing_on_a_target_that_changed_since_the_plan(
    demo_copy: Path,
    tmp_path: Path,
    record_id: str,
    change: dict[str, Any],
    code: str,
    said: str,
) -> None:
    db = tmp_path / "w.db"
    plan = saved_plan(demo_copy, db, tmp_path / "plan.json")
    mine = keys_on(plan, record_id)
    assert mine, f"the demo plan has no action on {record_id}"
    assert any(
        a["kind"] in ("create_task", "case_comment") for a in plan["actions"] if a["key"] in mine
    )
    edit(demo_copy, record_id, **change)

    result = invoke("apply", *org_args(demo_copy, db), str(tmp_path / "plan.json"))

    assert result.exit_code == 0, result.output
    found = conflicts(db)
    assert set(found) == mine  # every action on that record, and only those
    assert {r.error_code for r in found.values()} == {code}
    assert all(said in (r.message or "") for r in found.values())
    if code in ("RECORD_CHANGED", "RECORD_CLOSED"):
        assert all(LATER in (r.message or "") for r in found.values())  # what changed
    working = tmp_path / "local-orgs" / "demo-org"
    assert written_on(working, record_id) == []
    with Store.open(db) as store:
        applied = {r.key for r in store.audit_rows(outcome="applied")}
    assert applied == {a["key"] for a in plan["actions"]} - mine  # the rest went ahead


def test_a_conflict_is_planned_afresh_next_cycle(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    plan = saved_plan(demo_copy, db, tmp_path / "plan.json")
    mine = keys_on(plan, OPPORTUNITY_FOLLOW_UP)
    edit(demo_copy, OPPORTUNITY_FOLLOW_UP, Description="a person's note")
    assert invoke("apply", *org_args(demo_copy, db), str(tmp_path / "plan.json")).exit_code == 0
    assert set(conflicts(db)) == mine
    # The next cycle reads the record as it is now and acts on it.
    again = invoke("run", *org_args(demo_copy, db))
    assert again.exit_code == 0, again.output
    with Store.open(db) as store:
        applied = {r.key for r in store.audit_rows(outcome="applied")}
    assert mine <= applied
    assert written_on(tmp_path / "local-orgs" / "demo-org", OPPORTUNITY_FOLLOW_UP)


class CloseAfterReading:
    """The local org as the source, and a person who closes a Case while the run is between
    its read and its write."""

    def __init__(self, org: LocalOrg, folder: Path, case_id: str) -> None:
        self.org, self.folder, self.case_id = org, folder, case_id
        self.name = org.name

    def identity(self) -> OrgIdentity:
        return self.org.identity()

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        yield from self.org.fetch(queries)
        edit(self.folder, self.case_id, Status="Closed", IsClosed=True)

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None


def test_run_checks_between_its_read_and_its_write(demo_copy: Path, tmp_path: Path) -> None:
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=True) as app:
        assert isinstance(app.pipeline.source, LocalOrg)
        app.pipeline.source = CloseAfterReading(
            app.pipeline.source, demo_copy, CASE_WITH_COMMENT_AND_TASK
        )
        report = app.pipeline.run("r1", read_manifest(demo_copy).as_of)
        assert report.plan is not None
        mine = {a.key for a in report.plan.actions if a.target.id == CASE_WITH_COMMENT_AND_TASK}
        assert len(mine) == 2
        found = {r.key: r for r in app.store.audit_rows(run_id="r1", outcome="conflict")}
    assert set(found) == mine
    assert {r.kind for r in found.values()} == {"case_comment", "create_task"}
    assert {r.error_code for r in found.values()} == {"RECORD_CLOSED"}
    assert written_on(tmp_path / "local-orgs" / "demo-org", CASE_WITH_COMMENT_AND_TASK) == []


class OwnWritesMoveStamps:
    """The local org as the sink, where every write moves its target's SystemModstamp (as
    Salesforce does for an update, and triggers may for a comment or a Task), and every
    re-read of the targets is counted."""

    def __init__(self, org: LocalOrg, folder: Path) -> None:
        self.org, self.folder = org, folder
        self.name = org.name
        self.dry_run = False
        self.calls: list[str] = []

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        self.calls.append("check")
        return self.org.current_state(targets)

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        self.calls.append("write")
        results = self.org.write(actions)
        working = self.org.folder
        for target in {a.target.id for a in actions}:
            if any(r.get("Id") == target for r in iter_raw_records(working)):
                edit(working, target)
        return results

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        return self.org.reconcile(actions)

    def estimate_calls(self, actions: Sequence[Action]) -> int:
        return 0

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None


def test_a_steps_notes_and_closure_are_not_conflicts_with_each_other(
    demo_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches: many writes in one apply, each moving the stamps of what it wrote.
    monkeypatch.setattr("worker.pipeline.WRITE_BATCH", 25)
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=True) as app:
        assert isinstance(app.pipeline.sink, LocalOrg)
        sink = OwnWritesMoveStamps(app.pipeline.sink, demo_copy)
        app.pipeline.sink = sink
        report = app.pipeline.run("r1", read_manifest(demo_copy).as_of)
        assert report.plan is not None
        step = [a for a in report.plan.actions if a.target.id == CASE_CLOSED_IN_ONE_STEP]
        assert {a.kind.value for a in step} == {"case_comment", "close"}
        assert len(step) == 3
        outcomes = app.store.ledger_status(a.key for a in report.plan.actions)
    assert set(outcomes.values()) == {Outcome.APPLIED}
    assert sink.calls[0] == "check"
    assert sink.calls.count("check") == 1  # once, before the first write
    assert sink.calls.count("write") > 1
