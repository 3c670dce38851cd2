"""The report's figures, from the store alone: what the runs of a period did per rule and
SOP step and per day, the API calls per run, the records overdue or at risk per rule, the
SOP figures (:mod:`worker.reporting.figures`) and, on request, one record's SOP timeline.

:func:`build_report` is pure over what the caller read from the store (runs, audit rows,
ledger states, cached records) and the rules' evaluations as of the report's date; the
result is plain data, the JSON report, which the HTML page and the CSV are made from.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import schema
from worker.actions import Outcome
from worker.keys import task_key
from worker.mapping import LoadedMapping
from worker.records import Snapshot
from worker.reporting.figures import MET, MISSED, Period, compute, from_rule
from worker.rules import ALL_RULES
from worker.rules.base import Evaluation, Verdict
from worker.rules.kit import is_completed
from worker.store import AuditRow

REPORT_SCHEMA = "sop-worker/report"
REPORT_VERSION = 1
# How each final outcome of an action is counted.
COUNTED = {
    Outcome.APPLIED.value: "done",
    Outcome.SKIPPED.value: "skipped",
    Outcome.FAILED.value: "failed",
    Outcome.CONFLICT.value: "conflicts",
    Outcome.SENT.value: "unknown",
    Outcome.PLANNED.value: "not_sent",
}
MEASURES = ("due", "done", "skipped", "failed", "conflicts", "unknown", "not_sent")
WRITING_MODES = ("run", "apply")


@dataclass(frozen=True)
class StoreView:
    """What the report reads from the store: the period's writing runs (oldest first) with
    their audit rows, and the ledger state of the keys the rules would act on now."""

    runs: Sequence[Mapping[str, Any]]
    audit: Sequence[AuditRow]
    ledger: Mapping[str, Outcome]


def period_of(as_of: dt.date, days: int, now: dt.datetime) -> Period:
    return Period(as_of - dt.timedelta(days=days - 1), as_of, now)


def build_report(
    *,
    view: StoreView,
    mapping: LoadedMapping,
    snapshot: Snapshot,
    evaluations: Sequence[Evaluation],
    period: Period,
    org: Mapping[str, Any],
    generated_at: dt.datetime,
) -> dict[str, Any]:
    as_of_of = {str(r["run_id"]): str(r["as_of"]) for r in view.runs}
    finals = _final_rows(view.audit, as_of_of)
    steps = _steps(finals, mapping)
    days = _days(finals, as_of_of, period)
    enabled = [rule_id for rule_id, s in mapping.rules.items() if s.enabled]
    figures = [
        compute(fid, figure, snapshot, enabled, period).to_dict()
        for fid, figure in mapping.report.figures.items()
    ] + [
        from_rule(figure).to_dict()
        for rule in ALL_RULES
        if rule.figures is not None and mapping.enabled(rule.id)
        for figure in rule.figures(
            snapshot, mapping.rules[rule.id], mapping.common, period.first, period.last
        )
    ]
    risks = _risks(evaluations, view.ledger, snapshot, mapping, period)
    runs = _runs(view.runs, mapping.report.daily_api_allowance)
    totals: Counter[str] = Counter()
    for row in steps:
        for measure in MEASURES:
            totals[measure] += row[measure]
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "org": dict(org),
        "mapping": mapping.path,
        "generated_at": generated_at.isoformat(),
        "as_of": period.last.isoformat(),
        "period": {
            "first": period.first.isoformat(),
            "last": period.last.isoformat(),
            "days": (period.last - period.first).days + 1,
        },
        "headline": {
            "targets_met": sum(1 for f in figures if f["status"] == MET),
            "targets_missed": sum(1 for f in figures if f["status"] == MISSED),
            "not_measured": sum(1 for f in figures if f["status"] not in (MET, MISSED)),
            "actions_done": totals["done"],
            "actions_failed": totals["failed"],
            "conflicts": totals["conflicts"],
            "records_due_now": sum(len(r["due_now"]) for r in risks),
            "records_at_risk": sum(len(r["at_risk"]) for r in risks),
            "tasks_past_due": sum(len(r["tasks_past_due"]) for r in risks),
            "runs": len(runs),
            "api_calls": sum(r["api_calls"] for r in runs),
        },
        "figures": figures,
        "totals": {m: totals[m] for m in MEASURES},
        "steps": steps,
        "days": days,
        "runs": runs,
        "api": {
            "daily_allowance": mapping.report.daily_api_allowance or None,
            "calls": sum(r["api_calls"] for r in runs),
        },
        "risks": risks,
    }


def _final_rows(rows: Iterable[AuditRow], as_of_of: Mapping[str, str]) -> list[AuditRow]:
    """Each action key's last settled row in the period (intents left out): an action sent
    in one run and reconciled in the next counts once, as it ended."""
    last: dict[str, AuditRow] = {}
    for row in rows:
        if row.event != "intent" and row.run_id in as_of_of:
            last.pop(row.key, None)
            last[row.key] = row
    return list(last.values())


def _steps(finals: Sequence[AuditRow], mapping: LoadedMapping) -> list[dict[str, Any]]:
    """Per rule and SOP step: actions due (taken up by a run, skipped ones aside), done,
    skipped with the catch-up reasons, failed with their errorCodes, conflicts."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in finals:
        entry = rows.setdefault(
            (row.rule, row.step),
            {
                "rule": row.rule,
                "sop": row.sop,
                "step": row.step,
                "label": _step_label(mapping, row.rule, row.step),
                **{m: 0 for m in MEASURES},
                "skip_reasons": Counter(),
                "error_codes": Counter(),
            },
        )
        measure = COUNTED.get(row.outcome, "not_sent")
        entry[measure] += 1
        if measure != "skipped":
            entry["due"] += 1
        if measure == "skipped":
            entry["skip_reasons"][_reason(row.message or row.reason or "")] += 1
        if measure in ("failed", "conflicts") and row.error_code:
            entry["error_codes"][row.error_code] += 1
    out = []
    for key in sorted(rows):
        entry = rows[key]
        entry["skip_reasons"] = dict(entry["skip_reasons"].most_common())
        entry["error_codes"] = dict(entry["error_codes"].most_common())
        out.append(entry)
    return out


def _reason(text: str) -> str:
    """A skip reason without the record's own dates, so alike reasons add up."""
    return text.split(": ", 1)[-1] if text.startswith("due ") else text


def _step_label(mapping: LoadedMapping, rule: str, step: str) -> str:
    section = mapping.rules.get(rule)
    return section.step_label(step) if section else step


def _days(
    finals: Sequence[AuditRow], as_of_of: Mapping[str, str], period: Period
) -> list[dict[str, Any]]:
    """Per as-of day of the period (the day each run evaluated), its actions by outcome."""
    by_day = {
        (period.first + dt.timedelta(days=i)).isoformat(): Counter[str]()
        for i in range((period.last - period.first).days + 1)
    }
    for row in finals:
        counted = by_day.get(as_of_of[row.run_id])
        if counted is not None:
            counted[COUNTED.get(row.outcome, "not_sent")] += 1
    return [{"day": day, **{m: c[m] for m in MEASURES[1:]}} for day, c in by_day.items()]


def _runs(runs: Sequence[Mapping[str, Any]], allowance: int) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        summary = json.loads(run.get("summary") or "{}")
        calls = int(summary.get("api_calls") or 0)
        out.append(
            {
                "run_id": run["run_id"],
                "mode": run.get("mode"),
                "as_of": run.get("as_of"),
                "started_at": run.get("started_at"),
                "status": run.get("status"),
                "api_calls": calls,
                "api_remaining": summary.get("api_remaining"),
                "share_of_allowance": round(100 * calls / allowance, 2) if allowance else None,
            }
        )
    return out


def _risks(
    evaluations: Sequence[Evaluation],
    ledger: Mapping[str, Outcome],
    snapshot: Snapshot,
    mapping: LoadedMapping,
    period: Period,
) -> list[dict[str, Any]]:
    """Per rule: records with a step due now that no run has done yet, records whose next
    step falls due within ``at_risk_days`` (what ``explain`` says next), records the rule
    cannot evaluate, and the rule's open Tasks past their due date."""
    horizon = period.last + dt.timedelta(days=mapping.report.at_risk_days)
    final = (Outcome.APPLIED, Outcome.SKIPPED)
    out: dict[str, dict[str, Any]] = {
        rule_id: {"rule": rule_id, "due_now": [], "at_risk": [], "errors": [], "tasks_past_due": []}
        for rule_id, section in mapping.rules.items()
        if section.enabled
    }
    for e in evaluations:
        entry = out.get(e.rule)
        if entry is None:
            continue
        record = {"record_id": e.target.id, "name": e.target.name, "sobject": e.target.sobject}
        pending = [a for a in e.actions if ledger.get(a.key) not in final]
        if e.verdict is Verdict.ACT and pending:
            entry["due_now"].append(
                {**record, "steps": sorted({a.step for a in pending}), "why": e.why}
            )
        elif e.verdict is Verdict.ERROR:
            entry["errors"].append({**record, "why": e.why})
        elif e.next_due is not None and e.next_due <= horizon:
            entry["at_risk"].append(
                {**record, "next_step": e.next_step, "next_due": e.next_due.isoformat()}
            )
    for task in snapshot.of(schema.TASK):
        key = task_key(task, mapping.common)
        due = task.date(schema.ACTIVITY_DATE)
        if not key or due is None or due >= period.last or is_completed(task, mapping.common):
            continue
        entry = out.get(key.split(":", 1)[0])
        if entry is not None:
            entry["tasks_past_due"].append(
                {
                    "task_id": task.id,
                    "subject": task.text(schema.SUBJECT) or "",
                    "due": due.isoformat(),
                    "record_id": key.rsplit(":", 1)[-1],
                    "step": key.split(":")[1] if key.count(":") >= 2 else "",
                }
            )
    for entry in out.values():
        entry["at_risk"].sort(key=lambda r: (r["next_due"], r["record_id"]))
        entry["tasks_past_due"].sort(key=lambda t: (t["due"], t["task_id"]))
    return list(out.values())


CSV_COLUMNS = ("section", "name", "measure", "value")


def report_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The report's figures in long form (section, name, measure, value): one row per
    number, for a spreadsheet's pivot table."""
    rows: list[dict[str, Any]] = []

    def add(section: str, name: str, measure: str, value: Any) -> None:
        rows.append({"section": section, "name": name, "measure": measure, "value": value})

    for measure, value in report["headline"].items():
        add("headline", "", measure, value)
    for f in report["figures"]:
        for measure in ("value", "target", "status", "numerator", "denominator", "formula"):
            add("figure", f["id"], measure, f[measure])
    for s in report["steps"]:
        for measure in MEASURES:
            add("step", f"{s['rule']}:{s['step']}", measure, s[measure])
        for reason, n in s["skip_reasons"].items():
            add("step", f"{s['rule']}:{s['step']}", f"skipped: {reason}", n)
        for code, n in s["error_codes"].items():
            add("step", f"{s['rule']}:{s['step']}", f"error: {code}", n)
    for d in report["days"]:
        for measure in MEASURES[1:]:
            add("day", d["day"], measure, d[measure])
    for r in report["runs"]:
        add("run", r["run_id"], "api_calls", r["api_calls"])
    for r in report["risks"]:
        for measure in ("due_now", "at_risk", "errors", "tasks_past_due"):
            add("risk", r["rule"], measure, len(r[measure]))
    return rows
