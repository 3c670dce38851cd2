"""The cycle's promises over the demo org, with a sink that misbehaves as Salesforce can.

A stop on the API reserve leaves nothing half done and the next run finishes the work; a
write whose answer was lost is reconciled, not repeated; an unexpected error is recorded as
the run's status; and when two rules want the same record, the plan says which rule won.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from worker import pipeline
from worker.actions import (
    STOPPED_API_LIMIT,
    STOPPED_AUTH,
    STOPPED_SIGNAL,
    Action,
    ActionResult,
    CloseRecord,
    CreateTask,
    FieldChange,
    Outcome,
    UpdateRecord,
)
from worker.app import App, open_app
from worker.errors import ApiLimitError, AuthError
from worker.localorg import LocalOrg
from worker.plan import Plan, build_plan
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page, TargetState
from worker.records import RecordRef
from worker.rules.base import Evaluation, Verdict
from worker.settings import load_settings

from .conftest import execute

AS_OF = dt.date(2026, 11, 23)


class FlakySink:
    """The local org as a sink, with Salesforce's bad days scripted per write call.

    ``script`` holds one entry per ``write`` call: ``None`` writes normally; ``("stop", n)``
    writes the first n actions then hands the rest back not sent (the reserve was reached);
    ``("raise",)`` raises ApiLimitError before sending anything; ``("lose",)`` writes
    everything but answers ``sent`` (the response was lost).
    """

    def __init__(self, org: LocalOrg, script: Sequence[tuple[Any, ...] | None] = ()) -> None:
        self.org = org
        self.script = list(script)
        self.written: Counter[str] = Counter()
        self.name = org.name
        self.dry_run = False

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        step = self.script.pop(0) if self.script else None
        if step == ("raise",):
            raise ApiLimitError("API reserve reached: 190 of 1000 daily calls left")
        cut = len(actions) if step is None or step[0] == "lose" else int(step[1])
        results = self.org.write(actions[:cut])
        self.written.update(a.key for a in actions[:cut])
        if step == ("lose",):
            return [
                ActionResult(r.key, Outcome.SENT, error_code="UNKNOWN_OUTCOME") for r in results
            ]
        return results + [
            ActionResult(a.key, Outcome.PLANNED, error_code=STOPPED_API_LIMIT, message="reserve")
            for a in actions[cut:]
        ]

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        return self.org.current_state(targets)

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        return self.org.reconcile(actions)

    def estimate_calls(self, actions: Sequence[Action]) -> int:
        return 0

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None


@pytest.fixture
def app(demo_copy: Path, tmp_path: Path) -> Iterator[App]:
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=True) as opened:
        yield opened


def with_sink(app: App, script: Sequence[tuple[Any, ...] | None]) -> FlakySink:
    assert isinstance(app.pipeline.sink, LocalOrg)
    sink = FlakySink(app.pipeline.sink, script)
    app.pipeline.sink = sink
    return sink


def ledger(app: App) -> Counter[Outcome]:
    return Counter(e.status for e in app.store.ledger_entries())


def run_status(app: App, run_id: str) -> str:
    return next(str(r["status"]) for r in app.store.runs() if r["run_id"] == run_id)


def test_reserve_reached_mid_batch_stops_and_the_next_run_finishes(app: App) -> None:
    sink = with_sink(app, [("stop", 30)])
    first = app.pipeline.run("r1", AS_OF)
    assert first.plan is not None
    planned = {a.key for a in first.plan.actions}
    assert len(planned) > 30
    assert first.stop_reason == STOPPED_API_LIMIT
    assert run_status(app, "r1") == "stopped"
    assert first.summary()["actions"]  # counted, by rule and outcome
    assert sum(n for (_, o), n in first.outcomes.items() if o == "not_sent") == len(planned) - 30
    assert ledger(app)[Outcome.APPLIED] == 30
    assert ledger(app)[Outcome.SENT] == 0  # nothing left in doubt

    second = app.pipeline.run("r2", AS_OF)
    assert second.stop_reason is None
    assert second.failed == 0
    assert run_status(app, "r2") == "ok, with errors"  # the demo org's malformed records
    assert set(sink.written) == planned
    assert max(sink.written.values()) == 1  # each key written once across both runs


def test_the_summary_says_where_the_cycles_seconds_went(app: App) -> None:
    class SlowSink(FlakySink):
        def write(self, actions: Sequence[Action]) -> list[ActionResult]:
            time.sleep(0.2)
            return super().write(actions)

    assert isinstance(app.pipeline.sink, LocalOrg)
    app.pipeline.sink = SlowSink(app.pipeline.sink)
    report = app.pipeline.run("r1", AS_OF)
    stored = next(r for r in app.store.runs() if r["run_id"] == "r1")
    phases = json.loads(stored["summary"])["phase_seconds"]
    assert set(phases) == {"reconcile", "pull", "plan", "apply", "ledger", "write"}
    assert phases["write"] >= 0.2  # the sink's time, inside the apply's, as the ledger's is
    assert phases["apply"] >= max(phases["write"], phases["ledger"])
    assert sum(phases[p] for p in ("reconcile", "pull", "plan", "apply")) <= report.seconds


def test_the_next_batch_is_written_while_the_last_ones_results_are_recorded(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WRITE_BATCH", 20)
    second_write = threading.Event()
    overlapped: list[bool] = []
    sent_before_write: list[bool] = []

    class Sink(FlakySink):
        def write(self, actions: Sequence[Action]) -> list[ActionResult]:
            status = app.store.ledger_status([a.key for a in actions])
            sent_before_write.append(all(status[a.key] is Outcome.SENT for a in actions))
            if self.written:
                second_write.set()
            return super().write(actions)

    books = app.pipeline.ledger
    record_results = books.record_results

    def recording(actions: Any, results: Any, *args: Any, **kwargs: Any) -> None:
        if results and not overlapped:  # the first batch's: the second is being written
            overlapped.append(second_write.wait(timeout=10))
        record_results(actions, results, *args, **kwargs)

    monkeypatch.setattr(books, "record_results", recording)
    assert isinstance(app.pipeline.sink, LocalOrg)
    sink = Sink(app.pipeline.sink)
    app.pipeline.sink = sink
    report = app.pipeline.run("r1", AS_OF)
    assert report.plan is not None
    assert len(report.plan.actions) > 40
    assert overlapped == [True]
    assert len(sent_before_write) > 2
    assert all(sent_before_write)
    assert set(sink.written) == {a.key for a in report.plan.actions}
    assert ledger(app)[Outcome.SENT] == 0  # every batch's results recorded in the end


def test_a_stop_during_a_write_batch_lets_it_finish_and_starts_no_other(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "WRITE_BATCH", 30)
    sink = with_sink(app, [])
    batches: list[int] = []
    write = sink.write

    def signalled_while_writing(actions: Sequence[Action]) -> list[ActionResult]:
        batches.append(len(actions))
        app.pipeline.stop.set()  # SIGTERM arrives while this batch is out
        return write(actions)

    sink.write = signalled_while_writing  # type: ignore[method-assign]
    first = app.pipeline.run("r1", AS_OF)
    assert first.plan is not None
    planned = {a.key for a in first.plan.actions}
    assert len(batches) == 1
    assert len(planned) > batches[0]
    assert first.stop_reason == STOPPED_SIGNAL
    assert run_status(app, "r1") == "stopped"
    # The batch in flight is recorded; the rest stay planned for the next run.
    assert ledger(app)[Outcome.APPLIED] == batches[0]
    assert ledger(app)[Outcome.PLANNED] == len(planned) - batches[0]
    assert ledger(app)[Outcome.SENT] == 0

    app.pipeline.stop.clear()
    sink.write = write  # type: ignore[method-assign]
    second = app.pipeline.run("r2", AS_OF)
    assert second.stop_reason is None
    assert set(sink.written) == planned
    assert max(sink.written.values()) == 1


def test_a_stop_during_the_pull_plans_and_writes_nothing(app: App) -> None:
    sink = with_sink(app, [])
    fetch = app.pipeline.source.fetch

    def signalled_while_reading(queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        for page in fetch(queries):
            app.pipeline.stop.set()
            yield page

    app.pipeline.source.fetch = signalled_while_reading  # type: ignore[method-assign]
    stopped = app.pipeline.run("r1", AS_OF)
    assert stopped.stop_reason == STOPPED_SIGNAL
    assert stopped.plan is None
    assert sum(stopped.records_read.values()) > 0  # the page read before the stop is kept
    assert not sink.written
    assert run_status(app, "r1") == "stopped"


def test_reserve_reached_before_sending_leaves_actions_planned(app: App) -> None:
    sink = with_sink(app, [("raise",)])
    first = app.pipeline.run("r1", AS_OF)
    assert first.stop_reason == STOPPED_API_LIMIT
    assert "190 of 1000" in (first.stopped or "")
    statuses = ledger(app)
    # Planned again, not "sent": an email in the batch must not be written off as maybe-sent.
    assert statuses[Outcome.PLANNED] > 0
    assert statuses[Outcome.SENT] == statuses[Outcome.APPLIED] == 0
    app.pipeline.run("r2", AS_OF)
    assert first.plan is not None
    assert set(sink.written) == {a.key for a in first.plan.actions}


def test_a_lost_answer_is_reconciled_in_the_same_run_not_written_again(app: App) -> None:
    sink = with_sink(app, [("lose",)])
    first = app.pipeline.run("r1", AS_OF)
    assert first.plan is not None
    # Before the run ended it asked the org what became of every write whose answer was
    # lost: what the org shows is settled now; only the rest stays sent, and says so.
    found = [r for r in app.store.audit_rows(run_id="r1") if r.event == "reconciled"]
    assert found
    assert {r.outcome for r in found} == {Outcome.APPLIED.value}
    assert 0 < first.unknown < len(first.plan.actions)
    assert first.unknown + len(found) == len(first.plan.actions)
    assert ledger(app)[Outcome.SENT] == first.unknown
    assert first.status == "unknown"
    assert run_status(app, "r1") == "unknown"

    second = app.pipeline.run("r2", AS_OF)
    assert max(sink.written.values()) == 1
    assert ledger(app)[Outcome.SENT] == 0
    assert second.failed == 0


def test_an_unexpected_error_is_the_runs_status(app: App) -> None:
    class Broken(FlakySink):
        def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
            raise RuntimeError("disk on fire")

    assert isinstance(app.pipeline.sink, LocalOrg)
    app.pipeline.sink = Broken(app.pipeline.sink)
    with pytest.raises(RuntimeError):
        app.pipeline.run("r1", AS_OF)
    assert run_status(app, "r1") == "error: RuntimeError"


def _evaluation(rule: str, target: RecordRef, *actions: Action) -> Evaluation:
    return Evaluation(rule=rule, target=target, verdict=Verdict.ACT, why="due", actions=actions)


def _plan(evaluations: Sequence[Evaluation], ledger: Mapping[str, Outcome]) -> Plan:
    return build_plan(
        evaluations,
        org=OrgIdentity("00DDmU000000001MBA", "demo"),
        mapping="m.toml",
        as_of=AS_OF,
        generated_at=dt.datetime(2026, 11, 23, tzinfo=dt.UTC),
        precedence=["strong", "weak"],
        rule_order=["weak", "strong"],
        ledger=ledger,
        sops={},
    )


def test_precedence_names_the_winning_rule() -> None:
    target = RecordRef("Opportunity", "006000000000001AAA", "Acme - Payment", "stamp")

    def meta(rule: str, step: str) -> dict[str, Any]:
        key = f"{rule}:{step}:{target.id}"
        return {
            "rule": rule,
            "sop": f"{rule}.txt",
            "step": step,
            "target": target,
            "reason": "due",
            "key": key,
        }

    close = CloseRecord(
        **meta("strong", "close"), changes=(FieldChange("StageName", "Open", "Closed Lost"),)
    )
    task = CreateTask(
        **meta("weak", "call"),
        subject="Call",
        description="",
        due=AS_OF,
        owner_id=None,
        what_id=target.id,
        who_id=None,
        fields={},
    )
    note = UpdateRecord(**meta("weak", "note"), changes=(FieldChange("NextStep", "", "x"),))
    evaluations = [
        Evaluation("weak", target, Verdict.ACT, "due", (task, note)),
        Evaluation("strong", target, Verdict.ACT, "due", (close,)),
    ]
    plan = _plan(evaluations, {})
    assert [a.key for a in plan.actions] == [close.key]
    assert {s.action.key: s.why for s in plan.superseded} == {
        task.key: "superseded: rule strong closes this record",
        note.key: "superseded: rule strong closes this record",
    }
    assert Plan.from_dict(plan.to_dict()).superseded == plan.superseded
    # Recorded as skipped once, a superseded action is not offered again.
    again = _plan(evaluations, {task.key: Outcome.SKIPPED, note.key: Outcome.SKIPPED})
    assert again.superseded == ()


def test_a_weaker_rule_cannot_set_a_field_a_stronger_rule_sets() -> None:
    target = RecordRef("Case", "500000000000001AAA", "00001001", "stamp")
    strong = UpdateRecord(
        rule="strong",
        sop="s.txt",
        step="a",
        target=target,
        reason="due",
        key="strong:a",
        changes=(FieldChange("Status", "New", "Working"),),
    )
    weak = UpdateRecord(
        rule="weak",
        sop="w.txt",
        step="b",
        target=target,
        reason="due",
        key="weak:b",
        changes=(FieldChange("Status", "New", "Closed"),),
    )
    plan = _plan(
        [
            Evaluation("weak", target, Verdict.ACT, "due", (weak,)),
            Evaluation("strong", target, Verdict.ACT, "due", (strong,)),
        ],
        {},
    )
    assert [a.key for a in plan.actions] == ["strong:a"]
    assert [s.why for s in plan.superseded] == ["superseded: rule strong sets Status"]


class UnorderedSource:
    """Two Bulk-like pages of Opportunities, newest stamp first; may stop after the first."""

    name = "unordered"

    def __init__(self, *, stop_after_first: bool) -> None:
        self.stop_after_first = stop_after_first

    def identity(self) -> OrgIdentity:
        return OrgIdentity("00DDmU000000001MBA", "unordered")

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        def opp(n: int, stamp: str) -> dict[str, Any]:
            return {
                "attributes": {"type": "Opportunity"},
                "Id": f"006{n:015d}",
                "SystemModstamp": stamp,
                "Name": f"O{n}",
            }

        for query in queries:
            if query.sobject != "Opportunity":
                yield Page(query.sobject, ())
                continue
            yield Page("Opportunity", [opp(1, "2026-11-20T10:00:00.000+0000")], settled=False)
            if self.stop_after_first:
                raise ApiLimitError("API reserve reached")
            yield Page("Opportunity", [opp(2, "2026-11-02T10:00:00.000+0000")], settled=False)
            yield Page("Opportunity", (), settled=True)

    def api_calls(self) -> int:
        return 0

    def usage(self) -> ApiUsage | None:
        return None


def opportunity_watermark(app: App) -> dt.datetime | None:
    rows = execute(app.store, "SELECT last_modstamp FROM watermarks WHERE sobject = 'Opportunity'")
    return dt.datetime.fromisoformat(rows[0][0].replace("+0000", "+00:00")) if rows else None


def test_an_unordered_read_moves_the_watermark_only_once_it_is_complete(app: App) -> None:
    app.pipeline.source = UnorderedSource(stop_after_first=True)
    stopped = app.pipeline.run("r1", AS_OF)
    assert stopped.stop_reason == STOPPED_API_LIMIT
    # The page read holds the newest stamp, but an older row was still unread: no watermark,
    # so the next run reads the object again from where it started.
    assert opportunity_watermark(app) is None

    app.pipeline.source = UnorderedSource(stop_after_first=False)
    app.pipeline.run("r2", AS_OF)
    assert opportunity_watermark(app) == dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)


def error_events(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["log_level"] == "error"]


def test_a_sign_in_refused_during_the_pull_stops_the_run_with_one_error_event(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(queries: object) -> Iterator[Page]:
        raise AuthError("[invalid_grant, HTTP 400] jwt login refused: authentication failure")
        yield  # a generator, like the real source

    monkeypatch.setattr(app.pipeline.source, "fetch", refused)
    with capture_logs() as logs:
        report = app.pipeline.run("r1", AS_OF)
    assert report.stop_reason == STOPPED_AUTH
    assert error_events(logs) == ["run.stopped"]
    (stopped,) = [e for e in logs if e["event"] == "run.stopped"]
    assert "authentication failure" in stopped["message"]
    assert run_status(app, "r1") == "stopped"


def test_the_reserve_reached_at_a_write_logs_one_error_event(app: App) -> None:
    with_sink(app, [("raise",)])
    with capture_logs() as logs:
        app.pipeline.run("r1", AS_OF)
    assert error_events(logs) == ["apply.stopped"]
