"""The as-of instant: rules see when they evaluate, in the org's time zone, and a step's
minute-level deadline reaches the plan, `explain` and the Task (its reminder)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from worker import report
from worker.actions import CreateTask, action_from_dict
from worker.dryrun import DryRunSink, ReadOnlyLedger
from worker.localorg import LocalOrg
from worker.mapping import LoadedMapping, OrgMapping, RuleSettings, load_mapping
from worker.pipeline import Pipeline
from worker.plan import Plan
from worker.records import Record, Snapshot
from worker.rules import AsOf, Evaluation, Rule, Verdict, rule_models
from worker.rules.kit import Emit
from worker.store import Store

from .conftest import DEFAULT_MAPPING

CHICAGO = ZoneInfo("America/Chicago")
LEAD = "00QTEST00000001AAA"
OWNER = "005TEST00000001AAA"
SLA = dt.timedelta(minutes=5)


# -- a rule with a minute-level deadline (a test double, not an SOP rule) ---------------------
class FirstTouchSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = ("touch",)

    def needs(self) -> dict[str, set[str]]:
        return {"Lead": {"CreatedDate", "OwnerId", "Status"}}


def _candidates(snapshot: Snapshot, s: FirstTouchSettings, org: OrgMapping) -> Iterable[Record]:
    return snapshot.of("Lead")


def _decide(
    record: Record, snapshot: Snapshot, at: AsOf, s: FirstTouchSettings, org: OrgMapping
) -> Evaluation:
    emit = Emit.on("first_touch", s, org, record)
    created = record.datetime("CreatedDate")
    assert created is not None
    due = org.calendar.add(created, SLA).astimezone(org.org.zone)
    if at.instant < due:
        return Evaluation(
            "first_touch",
            emit.target,
            Verdict.NOT_DUE,
            "within 5 business minutes of arriving",
            next_due=due.date(),
            next_due_at=due,
            next_step="touch",
        )
    task = emit.task(
        "touch", subject="Call now", description="SLA", due_at=due, reason="5 minutes passed"
    )
    return Evaluation("first_touch", emit.target, Verdict.ACT, "SLA passed", actions=(task,))


FIRST_TOUCH: Rule[FirstTouchSettings] = Rule(
    id="first_touch",
    title="First touch within 5 business minutes",
    settings_model=FirstTouchSettings,
    step_ids=("touch",),
    candidates=_candidates,
    decide=_decide,
)


@pytest.fixture
def sla_mapping(tmp_path: Path) -> LoadedMapping:
    path = tmp_path / "m.toml"
    path.write_text(
        DEFAULT_MAPPING.read_text(encoding="utf-8")
        + '\n[rules.first_touch]\nsop_file = "004.txt"\nsteps = { touch = "Contact within 5'
        ' minutes" }\n',
        encoding="utf-8",
    )
    return load_mapping(path, {**rule_models(), "first_touch": FirstTouchSettings})


def tiny_org(folder: Path) -> Path:
    """One Lead that arrived at 16:58 on Friday 2026-11-20 (Chicago)."""
    (folder / "records").mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps({"name": "tiny", "org_id": "00DTEST00000001AAA", "as_of": "2026-11-20"})
    )
    lead = {
        "attributes": {"type": "Lead"},
        "Id": LEAD,
        "Name": "Ada Lovelace",
        "Status": "New",
        "OwnerId": OWNER,
        "CreatedDate": "2026-11-20T22:58:00.000+0000",
        "SystemModstamp": "2026-11-20T22:58:00.000+0000",
        "IsDeleted": False,
    }
    body = {"totalSize": 1, "done": True, "records": [lead]}
    (folder / "records" / "leads.json").write_text(json.dumps(body))
    return folder


@pytest.fixture
def pipeline_at(
    tmp_path: Path, sla_mapping: LoadedMapping
) -> Iterator[dict[str, dt.datetime | Pipeline]]:
    clock: dict[str, dt.datetime] = {"now": dt.datetime(2026, 11, 20, 23, 0, tzinfo=dt.UTC)}
    org = LocalOrg(tiny_org(tmp_path / "org"), tmp_path)
    with Store.open(tmp_path / "w.db") as store:
        pipeline = Pipeline(
            store=store,
            source=org,
            sink=DryRunSink(),
            ledger=ReadOnlyLedger(store),
            mapping=sla_mapping,
            rules=[FIRST_TOUCH],
            clock=lambda: clock["now"],
        )
        yield {"pipeline": pipeline, **clock}  # type: ignore[dict-item]


def run_plan(tmp_path: Path, mapping: LoadedMapping, now: dt.datetime, as_of: dt.date) -> Plan:
    return run_and_evaluate(tmp_path, mapping, now, as_of)[0]


def run_and_evaluate(
    tmp_path: Path, mapping: LoadedMapping, now: dt.datetime, as_of: dt.date
) -> tuple[Plan, list[Evaluation]]:
    """A run's plan, and every verdict of its rules at the run's instant (the plan keeps
    only those with something to do)."""
    org = LocalOrg(tiny_org(tmp_path / f"org-{now:%H%M%S}-{as_of}"), tmp_path)
    with Store.open(tmp_path / f"w-{now:%H%M%S}-{as_of}.db") as store:
        pipeline = Pipeline(
            store=store,
            source=org,
            sink=DryRunSink(),
            ledger=ReadOnlyLedger(store),
            mapping=mapping,
            rules=[FIRST_TOUCH],
            clock=lambda: now,
        )
        result = pipeline.run("r1", as_of)
        evaluations, _ = pipeline.evaluate(pipeline.instant(as_of))
    assert result.plan is not None
    return result.plan, evaluations


# -- the instant ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("day", "now", "instant"),
    [
        # The run's own day: the run's clock, in the org's time zone.
        ("2026-11-20", "2026-11-20T23:00:00+00:00", "2026-11-20T17:00:00-06:00"),
        # Past midnight in UTC, still the 20th in Chicago.
        ("2026-11-20", "2026-11-21T05:30:00+00:00", "2026-11-20T23:30:00-06:00"),
        # --as-of another day: that day at the run's time of day in the org's zone.
        ("2026-11-18", "2026-11-20T23:00:00+00:00", "2026-11-18T17:00:00-06:00"),
        # ... in that day's own offset (daylight time in July).
        ("2026-07-01", "2026-11-20T23:00:00+00:00", "2026-07-01T17:00:00-05:00"),
    ],
)
def test_the_instant_of_an_as_of_date(day: str, now: str, instant: str) -> None:
    at = AsOf.on(dt.date.fromisoformat(day), dt.datetime.fromisoformat(now), CHICAGO)
    assert at.instant == dt.datetime.fromisoformat(instant)
    assert at.instant.utcoffset() == dt.datetime.fromisoformat(instant).utcoffset()
    assert at.date == dt.date.fromisoformat(day)


def test_an_instant_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AsOf(dt.datetime(2026, 11, 20, 17))


def test_rules_decide_at_the_runs_instant(tmp_path: Path, sla_mapping: LoadedMapping) -> None:
    """Two minutes after arrival the call is not due; after the weekend it is."""
    friday, verdicts = run_and_evaluate(
        tmp_path,
        sla_mapping,
        dt.datetime(2026, 11, 20, 23, 0, tzinfo=dt.UTC),
        dt.date(2026, 11, 20),
    )
    assert friday.actions == ()
    (evaluation,) = verdicts
    assert evaluation.verdict is Verdict.NOT_DUE
    assert evaluation.next_due_at == dt.datetime(2026, 11, 23, 9, 3, tzinfo=CHICAGO)
    assert friday.as_of_instant == dt.datetime(2026, 11, 20, 17, 0, tzinfo=CHICAGO)

    monday = run_plan(
        tmp_path,
        sla_mapping,
        dt.datetime(2026, 11, 23, 15, 4, tzinfo=dt.UTC),  # 09:04 in Chicago
        dt.date(2026, 11, 23),
    )
    (task,) = monday.actions
    assert isinstance(task, CreateTask)
    assert task.due == dt.date(2026, 11, 23)
    assert task.due_at == dt.datetime(2026, 11, 23, 9, 3, tzinfo=CHICAGO)


def test_a_minute_level_due_time_in_the_plan_file_and_table(
    tmp_path: Path, sla_mapping: LoadedMapping
) -> None:
    plan = run_plan(
        tmp_path,
        sla_mapping,
        dt.datetime(2026, 11, 23, 15, 4, tzinfo=dt.UTC),
        dt.date(2026, 11, 23),
    )
    data = json.loads(plan.to_json())
    assert data["as_of"] == "2026-11-23"
    assert data["as_of_instant"] == "2026-11-23T09:04:00-06:00"
    (action,) = data["actions"]
    assert action["due"] == "2026-11-23"
    assert action["due_at"] == "2026-11-23T09:03:00-06:00"
    # The Task's reminder fires at the deadline ([tasks] due_time_field = ReminderDateTime).
    assert action["fields"]["ReminderDateTime"] == "2026-11-23T15:03:00.000+0000"
    assert action["fields"]["IsReminderSet"] is True
    again = Plan.from_dict(data)
    assert again.actions == plan.actions
    assert again.as_of_instant == plan.as_of_instant
    assert action_from_dict(action).summary() == "new Task 'Call now' due 2026-11-23 09:03-06:00"
    console = Console(record=True, width=200)
    report.print_plan(plan, console)
    assert "due 2026-11-23 09:03-06:00" in " ".join(console.export_text().split())


def test_explain_shows_the_minute_the_next_step_falls_due(
    pipeline_at: dict[str, dt.datetime | Pipeline],
) -> None:
    pipeline = pipeline_at["pipeline"]
    assert isinstance(pipeline, Pipeline)
    pipeline.run("r1", dt.date(2026, 11, 20))
    found = pipeline.explain(LEAD, dt.date(2026, 11, 20))
    console = Console(record=True, width=200)
    report.print_explanation(found, dt.date(2026, 11, 20), console)
    assert "touch on 2026-11-23 09:03-06:00" in console.export_text()


def test_no_due_time_field_keeps_the_deadline_in_the_plan_only(
    tmp_path: Path, sla_mapping: LoadedMapping
) -> None:
    text = Path(sla_mapping.path).read_text(encoding="utf-8")
    Path(sla_mapping.path).write_text(
        text.replace('due_time_field = "ReminderDateTime"', 'due_time_field = ""'), "utf-8"
    )
    mapping = load_mapping(sla_mapping.path, {**rule_models(), "first_touch": FirstTouchSettings})
    plan = run_plan(
        tmp_path, mapping, dt.datetime(2026, 11, 23, 15, 4, tzinfo=dt.UTC), dt.date(2026, 11, 23)
    )
    (task,) = plan.actions
    assert isinstance(task, CreateTask)
    assert task.due_at is not None
    assert "ReminderDateTime" not in task.fields
    assert "IsReminderSet" not in task.fields


def test_the_activity_date_is_the_deadlines_day_in_the_org(sla_mapping: LoadedMapping) -> None:
    """23:30 in Chicago is already tomorrow in UTC: ActivityDate stays the org's day."""
    record = Record("Lead", LEAD, {"Id": LEAD, "OwnerId": OWNER})
    emit = Emit.on("first_touch", sla_mapping.rules["first_touch"], sla_mapping.common, record)
    late = dt.datetime(2026, 11, 24, 5, 30, tzinfo=dt.UTC)
    task = emit.task("touch", subject="s", description="d", due_at=late, reason="r")
    assert task.due == dt.date(2026, 11, 23)
    assert task.due_at == dt.datetime(2026, 11, 23, 23, 30, tzinfo=CHICAGO)
    assert task.fields["ReminderDateTime"] == "2026-11-24T05:30:00.000+0000"
