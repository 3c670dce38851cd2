"""What people read: plan tables, CSV/JSON exports, run summaries, audit listings.

Rendering only; no decisions. Tables use rich, so they read well on a terminal and stay
plain text when piped.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.actions import Outcome
from worker.pipeline import Explanation
from worker.plan import Plan
from worker.salesforce.doctor import Finding, Severity
from worker.store import AuditRow

PLAN_CSV_COLUMNS = (
    "key",
    "kind",
    "rule",
    "sop",
    "step",
    "sobject",
    "record_id",
    "record_name",
    "change",
    "reason",
)


def plan_rows(plan: Plan) -> list[dict[str, str]]:
    return [
        {
            "key": a.key,
            "kind": a.kind.value,
            "rule": a.rule,
            "sop": a.sop,
            "step": a.step,
            "sobject": a.target.sobject,
            "record_id": a.target.id,
            "record_name": a.target.name,
            "change": a.summary(),
            "reason": a.reason,
        }
        for a in plan.actions
    ]


def plan_csv(plan: Plan) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PLAN_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(plan_rows(plan))
    return buf.getvalue()


def print_plan(plan: Plan, console: Console) -> None:
    table = Table(
        title=f"Plan for {plan.org.label()} as of {plan.as_of} ({len(plan.actions)} actions)",
        show_lines=True,
        expand=True,
    )
    for name, ratio in (("Record", 2), ("Rule / SOP step", 2), ("Change", 4), ("Reason", 3)):
        table.add_column(name, ratio=ratio, overflow="fold")
    for action in plan.actions:
        table.add_row(
            f"{action.target.sobject}\n{action.target.name or action.target.id}\n"
            f"[dim]{action.target.id}[/dim]",
            f"{action.rule}\n[dim]{action.sop}[/dim]\n{action.step}",
            action.summary(),
            action.reason,
        )
    console.print(table)
    if plan.skipped:
        skipped = Table(title="Skipped (missed while the worker was not running)", expand=True)
        for name in ("Record", "Rule", "Step", "Why"):
            skipped.add_column(name, overflow="fold")
        for s in plan.skipped:
            skipped.add_row(
                s.action.target.name or s.action.target.id,
                s.action.rule,
                s.action.step,
                s.action.reason,
            )
        console.print(skipped)
    if plan.superseded:
        lost = Table(title="Superseded (a stronger rule acts on the same record)", expand=True)
        for name in ("Record", "Rule", "Change", "Why"):
            lost.add_column(name, overflow="fold")
        for s in plan.superseded:
            lost.add_row(
                s.action.target.name or s.action.target.id, s.action.rule, s.action.summary(), s.why
            )
        console.print(lost)
    if plan.errors:
        errors = Table(
            title="Records that could not be evaluated (skipped, nothing written)", expand=True
        )
        for name in ("Record", "Rule", "Problem"):
            errors.add_column(name, overflow="fold")
        for e in plan.errors:
            errors.add_row(f"{e.target.sobject} {e.target.name or e.target.id}", e.rule, e.why)
        console.print(errors)
    remaining = "unknown" if plan.remaining_daily is None else f"{plan.remaining_daily:,}"
    console.print(
        f"{len(plan.actions)} action(s) to apply, {len(plan.skipped)} skipped, "
        f"{len(plan.superseded)} superseded, {len(plan.done)} already done, "
        f"{len(plan.errors)} record error(s). Cost: {plan.api_calls} API call(s); "
        f"daily allowance remaining: {remaining}."
    )


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"Run {summary['run_id']} as of {summary['as_of']}"
        f"{' (dry run)' if summary['dry_run'] else ''}"
    )
    table.add_column("What")
    table.add_column("Count", justify="right")
    for sobject, n in summary["records_read"].items():
        table.add_row(f"records read: {sobject}", str(n))
    for key, n in summary["actions"].items():
        table.add_row(f"actions {key}", str(n))
    table.add_row("record errors", str(summary["record_errors"]))
    table.add_row("API calls used", str(summary["api_calls"]))
    table.add_row(
        "API calls remaining today",
        "unknown" if summary["api_remaining"] is None else str(summary["api_remaining"]),
    )
    table.add_row("seconds", str(summary["seconds"]))
    if summary.get("stopped"):
        table.add_row("stopped", summary["stopped"])
    console.print(table)


AUDIT_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditRow))


def audit_csv(rows: Iterable[AuditRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AUDIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(dataclasses.asdict(r) for r in rows)
    return buf.getvalue()


def audit_jsonl(rows: Iterable[AuditRow]) -> str:
    return "".join(json.dumps(dataclasses.asdict(r), sort_keys=True) + "\n" for r in rows)


def print_audit(rows: Sequence[AuditRow], console: Console) -> None:
    table = Table(title=f"Audit ({len(rows)} rows)", expand=True)
    for name in ("When", "Run", "Event", "Outcome", "Record", "Rule / step", "Change", "Error"):
        table.add_column(name, overflow="fold")
    for r in rows:
        change = r.after or ""
        if r.before:
            change = f"{r.before} -> {r.after}"
        error = " ".join(p for p in (r.error_code, r.message) if p)
        table.add_row(
            r.ts[:19],
            r.run_id[:8],
            r.event,
            r.outcome,
            f"{r.record_name or r.record_id}\n[dim]{r.record_id}[/dim]",
            f"{r.rule}\n{r.step}",
            change,
            error,
        )
    console.print(table)


def print_runs(runs: Sequence[Mapping[str, Any]], console: Console) -> None:
    """Recent runs, newest first: when, what kind, how it ended, what it did and spent."""
    table = Table(title=f"Runs ({len(runs)})", expand=True)
    for name in (
        "Run",
        "Org",
        "Started",
        "Mode",
        "As of",
        "Status",
        "Actions",
        "API calls",
        "Seconds",
    ):
        table.add_column(name, overflow="fold")
    for run in runs:
        summary = json.loads(run.get("summary") or "{}")
        actions = "\n".join(f"{k}: {n}" for k, n in (summary.get("actions") or {}).items())
        status = str(run.get("status") or "")
        if summary.get("stopped"):
            status += f"\n{summary['stopped']}"
        table.add_row(
            str(run["run_id"]),
            str(run.get("org_id") or ""),
            str(run.get("started_at") or "")[:19],
            str(run.get("mode") or ""),
            str(run.get("as_of") or ""),
            status,
            actions or "-",
            str(summary.get("api_calls", "")),
            str(summary.get("seconds", "")),
        )
    console.print(table)


def print_explanation(found: Explanation, as_of: dt.date, console: Console) -> None:
    record = found.record
    title = found.record_id
    if record is not None:
        title = f"{record.sobject} {found.name} ({record.id})".replace("  ", " ")
    console.print(f"[bold]{title}[/bold] as of {as_of}")
    table = Table(show_lines=True, expand=True)
    for name in ("Rule", "Verdict", "Why", "Next"):
        table.add_column(name, overflow="fold")
    for e in found.evaluations:
        verdict = e.verdict.value
        lines = [e.why]
        for action in e.actions:
            state = found.ledger.get(action.key)
            done = next((h for h in found.history if h.key == action.key), None)
            if state is Outcome.APPLIED and done:
                lines.append(
                    f"already done on {done.updated_at[:10]} by run {done.run_id}: "
                    f"{action.summary()}"
                )
            else:
                lines.append(f"acts: {action.summary()}")
        for skipped in e.skipped:
            lines.append(f"skipped {skipped.step} due {skipped.due}: {skipped.reason}")
        nxt = f"{e.next_step or ''} on {e.next_due}" if e.next_due else ""
        table.add_row(e.rule, verdict, "\n".join(lines), nxt)
    for rule in found.out_of_scope:
        table.add_row(rule, "excluded", "not in this rule's scope (see its mapping filters)", "")
    console.print(table)
    if found.history:
        timeline = Table(title="SOP timeline (ledger)", expand=True)
        for name in ("Updated", "Run", "Step", "Status", "Change"):
            timeline.add_column(name, overflow="fold")
        for h in found.history:
            timeline.add_row(
                h.updated_at[:19],
                h.run_id,
                f"{h.action.rule}\n{h.action.step}",
                h.status.value + (f" {h.error_code}" if h.error_code else ""),
                h.action.summary(),
            )
        console.print(timeline)
    else:
        console.print("No SOP action recorded for this record yet.")


def print_findings(findings: Sequence[Finding], checked: int, console: Console) -> None:
    """Doctor's answer: each problem with its fix, then one line saying how it went."""
    if findings:
        table = Table(title="What the org lacks for this mapping", show_lines=True, expand=True)
        for name in ("Severity", "Where", "Problem", "Fix"):
            table.add_column(name, overflow="fold")
        for f in findings:
            where = ".".join(p for p in (f.sobject, f.field) if p) or f.kind.value
            table.add_row(f.severity.value, where, f.message, f.fix)
        console.print(table)
    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = len(findings) - errors
    if errors:
        console.print(f"{errors} problem(s) and {warnings} warning(s): fix the problems first.")
    else:
        console.print(
            f"The org has all {checked} field(s) and picklist value(s) the mapping uses"
            + (f" ({warnings} warning(s))." if warnings else ".")
        )


def findings_json(findings: Sequence[Finding]) -> str:
    return json.dumps([dataclasses.asdict(f) for f in findings], indent=2) + "\n"
