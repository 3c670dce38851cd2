"""Reads what the report needs from the store and the rules, without the org: the cache-only
source and the dry-run sink (``open_app(..., connect=False)``), so a report costs no API
call and can write nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from worker.app import App
from worker.errors import ConfigError
from worker.ports import OrgIdentity
from worker.report import explanation_record
from worker.reporting.build import WRITING_MODES, StoreView, build_report, period_of
from worker.reporting.figures import Period
from worker.reporting.simulate import Assumptions, simulate
from worker.store import AuditRow

ALL_RUNS = 100_000


def default_as_of(app: App, today: dt.date) -> dt.date:
    """The day of the newest writing run in the store (a report follows the runs made with
    ``--as-of``), else the org's today."""
    for run in app.store.runs(limit=ALL_RUNS):
        if run.get("mode") in WRITING_MODES and run.get("as_of"):
            return dt.date.fromisoformat(str(run["as_of"]))
    return today


def cached_org(app: App) -> OrgIdentity:
    """The org the store's newest run was made on (its Id is blank before any run), named
    as the mapping names it: the report and a cache-only simulation read no org."""
    for run in app.store.runs(limit=ALL_RUNS):
        if run.get("org_id"):
            return OrgIdentity(str(run["org_id"]), app.mapping.common.org.name)
    return OrgIdentity("", app.mapping.common.org.name)


def make_report(
    app: App,
    as_of: dt.date,
    days: int,
    record_id: str | None = None,
    simulation: tuple[int, Assumptions] | None = None,
) -> dict[str, Any]:
    at = app.pipeline.instant(as_of)
    period = period_of(as_of, days, at.instant)
    runs, audit = read_runs(app, period)
    evaluations, _ = app.pipeline.evaluate(at)
    snapshot, _ = app.store.load_snapshot(app.store.cached_counts())
    org = cached_org(app)
    report = build_report(
        view=StoreView(
            runs, audit, app.store.ledger_status(a.key for e in evaluations for a in e.actions)
        ),
        mapping=app.mapping,
        snapshot=snapshot,
        evaluations=evaluations,
        period=period,
        org={"id": org.org_id or None, "name": org.name},
        generated_at=app.clock(),
    )
    if record_id:
        found = app.pipeline.explain(record_id, as_of)
        if found.record is None:
            raise ConfigError(f"record {record_id} is not in the cache (is it in a mapped object?)")
        report["record"] = explanation_record(found, as_of)
    if simulation:
        report["simulation"] = simulate(app.pipeline, org, as_of, *simulation)
    return report


def read_runs(app: App, period: Period) -> tuple[list[dict[str, Any]], list[AuditRow]]:
    """The period's writing runs, oldest first, and their audit rows."""
    runs = [
        r
        for r in reversed(app.store.runs(limit=ALL_RUNS))
        if r.get("mode") in WRITING_MODES
        and period.first.isoformat() <= str(r.get("as_of")) <= period.last.isoformat()
    ]
    audit = [row for r in runs for row in app.store.audit_rows(run_id=str(r["run_id"]))]
    return runs, audit
