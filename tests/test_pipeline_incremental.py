"""The rules' horizon: how far the cache had read (its newest stamp) when the previous run
that settled everything it planned evaluated, on the same rules and settings; none (a full
pass) otherwise. A cycle planned from it plans what a full pass plans."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.app import App, open_app
from worker.canary import Canary
from worker.pipeline import HORIZON_OVERLAP, RunReport
from worker.records import format_sf_datetime
from worker.settings import load_settings

AS_OF = dt.date(2026, 11, 23)


@pytest.fixture
def app(demo_copy: Path, tmp_path: Path) -> Iterator[App]:
    settings = load_settings(local_org=demo_copy, db_path=tmp_path / "w.db")
    with open_app(settings, write=True) as opened:
        yield opened


def test_the_first_run_is_a_full_pass_and_a_clean_run_the_next_horizon(app: App) -> None:
    assert app.pipeline.horizon() is None
    report = app.pipeline.run("first", AS_OF)
    assert report.evaluated_to is not None  # the demo org's newest stamp, once pulled
    assert app.pipeline.horizon() == report.evaluated_to - HORIZON_OVERLAP


def test_a_run_that_did_not_settle_everything_is_no_horizon(app: App) -> None:
    app.pipeline.run("first", AS_OF)
    horizon = app.pipeline.horizon()
    now = app.pipeline.clock()
    for run_id, status in (("failed", "failed"), ("lost", "unknown"), ("cut", "stopped")):
        app.store.begin_run(run_id, "run", AS_OF, now)
        app.store.finish_run(run_id, status, {"org_id": app.pipeline.org().org_id}, now)
    assert app.pipeline.horizon() == horizon  # the older clean run's


def test_a_canary_or_a_dry_run_is_no_horizon(app: App) -> None:
    app.pipeline.run("canary", AS_OF, canary=Canary(limit=1))
    assert app.pipeline.horizon() is None  # what it held back is decided again


def test_other_settings_make_a_full_pass(app: App) -> None:
    app.pipeline.run("first", AS_OF)
    rules = dict(app.pipeline.mapping.rules)
    rules["lead_dedupe"] = rules["lead_dedupe"].model_copy(update={"fuzzy_name_threshold": 80})
    app.pipeline.mapping = dataclasses.replace(app.pipeline.mapping, rules=rules)
    assert app.pipeline.horizon() is None


def test_a_cycle_from_the_horizon_plans_what_a_full_pass_plans(
    app: App, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.pipeline.run("first", AS_OF)  # writes to the working copy, which is read from now on
    # A new lead at an old demo lead's address, created after the run.
    stamp = format_sf_datetime(app.pipeline.clock() - dt.timedelta(seconds=1))
    path = tmp_path / "local-orgs" / "demo-org" / "records" / "lead_dedupe-leads.json"
    body = json.loads(path.read_text(encoding="utf-8"))
    old = body["records"][0]
    new = {**old, "Id": "00QDm14000000N1MAA", "Email": old["Email"].upper(), "Phone": None}
    body["records"].append({**new, "SystemModstamp": stamp, "CreatedDate": stamp})
    path.write_text(json.dumps(body), encoding="utf-8")
    app.pipeline.pull(RunReport("pull", AS_OF, dry_run=True), app.pipeline.clock())

    horizon, at = app.pipeline.horizon(), app.pipeline.instant(AS_OF)
    incremental = app.pipeline.plan(AS_OF)
    monkeypatch.setattr(app.pipeline, "horizon", lambda run_id=None: None)
    full = app.pipeline.plan(AS_OF)

    assert incremental.actions == full.actions
    found, _ = app.pipeline.evaluate(at, changed_since=horizon)
    decided = {e.target.id: e for e in found if e.rule == "lead_dedupe"}
    assert f"same email {old['Email'].lower()}" in decided[new["Id"]].why  # with the old one
    assert old["Id"] in decided
    every, _ = app.pipeline.evaluate(at)
    # The leads nothing touched are not decided again.
    assert len(decided) < len([e for e in every if e.rule == "lead_dedupe"])
