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
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.actions import Action, AddCaseComment, CloseRecord, Outcome, UpdateRecord, due_text
from worker.findings import Finding, FindingKind, Severity
from worker.mapping import LoadedMapping
from worker.pipeline import Explanation
from worker.plan import PLAN_CSV_COLUMNS, Plan, Skip
from worker.rules.base import Rule
from worker.store import ActionOutcome, AuditRow


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
            "change": change_detail(a),
            "reason": a.reason,
        }
        for a in plan.actions
    ]


def machine_text(fmt: str, data: Any, columns: Sequence[str] = ()) -> str:
    """Output for programs: ``json`` one document; ``jsonl`` one line per item; ``csv`` one
    row per item under ``columns``, a nested value (before/after) as JSON text."""
    if fmt == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    items = data if isinstance(data, list) else [data]
    if fmt == "jsonl":
        return "".join(json.dumps(item, sort_keys=True, default=str) + "\n" for item in items)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for item in items:
            writer.writerow(
                {
                    k: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v
                    for k, v in item.items()
                }
            )
        return buf.getvalue()
    raise ValueError(f"not a machine format: {fmt}")


def plan_csv(plan: Plan) -> str:
    return machine_text("csv", plan_rows(plan), PLAN_CSV_COLUMNS)


def change_detail(action: Action) -> str:
    """What an action changes, every value in full: a short one-line field change reads
    ``field: before -> after``; a long or multi-line one (a Next Steps log) is shown as
    blocks, line by line."""
    if isinstance(action, UpdateRecord):
        lines = ["close:"] if isinstance(action, CloseRecord) else []
        for change in action.changes:
            before, after = _value(change.before), _value(change.after)
            if "\n" not in before + after and len(before) + len(after) <= 80:
                lines.append(f"{change.field}: {before} -> {after}")
            else:
                lines.append(f"{change.field}:")
                lines.extend(_block("before", before))
                lines.extend(_block("after", after))
        return "\n".join(lines)
    if isinstance(action, AddCaseComment):
        return f"{'public' if action.published else 'internal'} comment:\n{action.body}"
    return action.summary()


def _value(value: Any) -> str:
    return "(empty)" if value in (None, "") else str(value)


def _block(label: str, text: str) -> list[str]:
    return [f"  {label}:"] + [f"    {line}" for line in text.splitlines() or [""]]


def plan_totals(plan: Plan) -> str:
    remaining = "unknown" if plan.remaining_daily is None else f"{plan.remaining_daily:,}"
    return (
        f"{len(plan.actions)} action(s) to apply, {len(plan.skipped)} skipped, "
        f"{len(plan.superseded)} superseded, "
        + (f"{len(plan.deferred)} deferred to the next run, " if plan.deferred else "")
        + f"{len(plan.suppressed)} suppressed, "
        f"{len(plan.done)} already done, "
        f"{len(plan.errors)} record error(s). Cost: {plan.api_calls} API call(s); "
        f"daily allowance remaining: {remaining}."
    )


def print_plan_summary(plan: Plan, console: Console) -> None:
    """What the plan will do, on one screen: actions by rule and step, then the totals."""
    table = Table(title=f"Plan for {plan.org.label()} as of {plan.as_of}: what will happen")
    table.add_column("Rule")
    table.add_column("SOP step")
    table.add_column("Actions", justify="right")
    for (rule, step), n in Counter((a.rule, a.step) for a in plan.actions).items():
        table.add_row(rule, step, str(n))
    for label, n in (
        ("skipped (missed while the worker was not running)", len(plan.skipped)),
        ("superseded (a stronger rule acts on the same record)", len(plan.superseded)),
        ("deferred (another rule writes the records now; next run)", len(plan.deferred)),
        ("suppressed (a call or email to a person who may not be contacted)", len(plan.suppressed)),
        ("records that could not be evaluated", len(plan.errors)),
    ):
        if n:
            table.add_row(f"[dim]{label}[/dim]", "", str(n))
    console.print(table)
    console.print(plan_totals(plan))


def print_plan(plan: Plan, console: Console) -> None:
    """The summary first, then every action with its full change and its reason, then
    what was left out and why."""
    print_plan_summary(plan, console)
    if plan.actions:
        table = Table(title=f"Actions ({len(plan.actions)})", show_lines=True, expand=True)
        for name, ratio in (("Record", 2), ("Rule / SOP step", 2), ("Change", 4), ("Reason", 3)):
            table.add_column(name, ratio=ratio, overflow="fold")
        for action in plan.actions:
            table.add_row(
                f"{action.target.sobject}\n{escape(action.target.name or action.target.id)}\n"
                f"[dim]{action.target.id}[/dim]",
                f"{action.rule}\n[dim]{action.sop}[/dim]\n{escape(action.step)}",
                escape(change_detail(action)),
                escape(action.reason),
            )
        console.print(table)
    _print_left_out(plan, console)


def _left_out_table(title: str, skips: Sequence[Skip]) -> Table:
    """Actions left out of a plan: the record, the rule, the change it would make, why."""
    table = Table(title=title, expand=True)
    for name in ("Record", "Rule", "Change", "Why"):
        table.add_column(name, overflow="fold")
    for s in skips:
        table.add_row(
            s.action.target.name or s.action.target.id, s.action.rule, s.action.summary(), s.why
        )
    return table


def _print_left_out(plan: Plan, console: Console) -> None:
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
    for title, skips in (
        ("Superseded (a stronger rule acts on the same record)", plan.superseded),
        ("Deferred to the next run (another rule writes the records)", plan.deferred),
        ("Suppressed (the person may not be called or emailed)", plan.suppressed),
    ):
        if skips:
            console.print(_left_out_table(title, skips))
    if plan.errors:
        errors = Table(
            title="Records that could not be evaluated (skipped, nothing written)", expand=True
        )
        for name in ("Record", "Rule", "Problem"):
            errors.add_column(name, overflow="fold")
        for e in plan.errors:
            errors.add_row(f"{e.target.sobject} {e.target.name or e.target.id}", e.rule, e.why)
        console.print(errors)


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"Run {summary['run_id']} as of {summary['as_of']}"
        f"{' (dry run)' if summary['dry_run'] else ''}"
    )
    table.add_column("What")
    table.add_column("Count", justify="right")
    table.add_row("status", summary["status"])
    for sobject, n in summary["records_read"].items():
        table.add_row(f"records read: {sobject}", str(n))
    for key, n in summary["actions"].items():
        table.add_row(f"actions {key}", str(n))
    table.add_row("record errors", str(summary["record_errors"]))
    table.add_row("outcomes unknown (checked next run)", str(summary["unknown_outcomes"]))
    table.add_row("API calls used", str(summary["api_calls"]))
    table.add_row(
        "API calls remaining today",
        "unknown" if summary["api_remaining"] is None else str(summary["api_remaining"]),
    )
    table.add_row("seconds", str(summary["seconds"]))
    if summary.get("stopped"):
        table.add_row("stopped", escape(summary["stopped"]))
    console.print(table)


AUDIT_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditRow))


def audit_records(rows: Iterable[AuditRow]) -> list[dict[str, Any]]:
    """Audit rows as plain data, ``before`` and ``after`` as the objects they hold."""
    return [
        {**dataclasses.asdict(r), "before": _parsed(r.before), "after": _parsed(r.after)}
        for r in rows
    ]


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# One row per action, as Data Loader writes its success and error files.
RESULT_COLUMNS = (
    "key",
    "record_id",
    "record_name",
    "rule",
    "step",
    "kind",
    "outcome",
    "error_code",
    "message",
    "created_id",
    "before",
    "after",
)


def results_csv(outcomes: Sequence[ActionOutcome]) -> str:
    """How each action of a run ended, with its before and after values in full."""
    rows = [
        {**record, "created_id": o.created_id}
        for o, record in zip(outcomes, audit_records(o.audit for o in outcomes), strict=True)
    ]
    return machine_text("csv", rows, RESULT_COLUMNS)


def print_audit(rows: Sequence[AuditRow], console: Console) -> None:
    table = Table(title=f"Audit ({len(rows)} rows)", expand=True)
    for name in ("When", "Run", "Event", "Outcome", "Record", "Rule / step", "Change", "Error"):
        table.add_column(name, overflow="fold")
    for r in rows:
        change = r.after or ""
        if r.before:
            change = f"{r.before} -> {r.after}"
        error = escape(" ".join(p for p in (r.error_code, r.message) if p))
        table.add_row(
            r.ts[:19],
            r.run_id[:8],
            r.event,
            r.outcome,
            f"{escape(r.record_name or r.record_id)}\n[dim]{r.record_id}[/dim]",
            f"{r.rule}\n{escape(r.step)}",
            escape(change),
            escape(error),
        )
    console.print(table)


def run_records(runs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``runs`` as plain data, the summary as the object it holds."""
    return [{**run, "summary": _parsed(run.get("summary"))} for run in runs]


def rule_records(mapping: LoadedMapping, rules: Iterable[Rule[Any]]) -> list[dict[str, Any]]:
    """Each rule with its SOP file, steps (id and the mapping's label) and whether it is on."""
    out = []
    for rule in rules:
        section = mapping.rules.get(rule.id)
        out.append(
            {
                "rule": rule.id,
                "title": rule.title,
                "sop_file": section.sop_file if section else None,
                "steps": [
                    {"id": sid, "label": section.step_label(sid) if section else sid}
                    for sid in rule.step_ids
                ],
                "enabled": bool(section and section.enabled),
            }
        )
    return out


def print_rules(mapping: LoadedMapping, rules: Iterable[Rule[Any]], console: Console) -> None:
    table = Table(title=f"Rules in {mapping.path}", show_lines=True)
    for name in ("Rule", "Title", "SOP file", "Steps", "Enabled"):
        table.add_column(name, overflow="fold")
    for row in rule_records(mapping, rules):
        if row["sop_file"] is None:
            table.add_row(row["rule"], row["title"], "-", "-", "no (no mapping section)")
            continue
        steps = "\n".join(f"{s['id']}: {s['label']}" for s in row["steps"])
        table.add_row(
            row["rule"], row["title"], row["sop_file"], steps, "yes" if row["enabled"] else "no"
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
        "Errors",  # records skipped as unreadable
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
            escape(status),
            actions or "-",
            str(summary.get("record_errors", "")),
            str(summary.get("api_calls", "")),
            str(summary.get("seconds", "")),
        )
    console.print(table)


def explanation_record(found: Explanation, as_of: dt.date) -> dict[str, Any]:
    """``explain`` as plain data: each rule's verdict with its actions and their ledger
    state, the rules whose scope leaves the record out, and its SOP timeline."""
    record = found.record
    return {
        "record_id": found.record_id,
        "sobject": record.sobject if record else None,
        "name": found.name,
        "as_of": as_of.isoformat(),
        "rules": [
            {
                "rule": e.rule,
                "verdict": e.verdict.value,
                "why": e.why,
                "actions": [
                    {
                        "key": a.key,
                        "step": a.step,
                        "change": change_detail(a),
                        "state": found.ledger[a.key].value if a.key in found.ledger else None,
                    }
                    for a in e.actions
                ],
                "skipped": [
                    {"key": k.key, "step": k.step, "due": k.due.isoformat(), "why": k.reason}
                    for k in e.skipped
                ],
                "suppressed": [
                    {
                        "key": k.action.key,
                        "step": k.action.step,
                        "change": change_detail(k.action),
                        "why": k.why,
                    }
                    for k in e.suppressed
                ],
                "next_step": e.next_step,
                "next_due": e.next_due.isoformat() if e.next_due else None,
                "next_due_at": e.next_due_at.isoformat() if e.next_due_at else None,
                "batch": e.batch,
            }
            for e in found.evaluations
        ],
        "out_of_scope": list(found.out_of_scope),
        "timeline": [
            {
                "updated_at": h.updated_at,
                "run_id": h.run_id,
                "key": h.key,
                "rule": h.action.rule,
                "step": h.action.step,
                "status": h.status.value,
                "error_code": h.error_code,
                "change": change_detail(h.action),
            }
            for h in found.history
        ],
    }


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
        for held in e.suppressed:
            lines.append(f"skipped {held.action.summary()}: {held.why}")
        if e.batch:
            lines.append(f"decided together with batch {e.batch}")
        nxt = f"{e.next_step or ''} on {due_text(e.next_due, e.next_due_at)}" if e.next_due else ""
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
        kinds = {f.kind for f in findings if f.severity is Severity.ERROR}
        title = "What the org lacks for this mapping"
        if FindingKind.SETTINGS in kinds:
            title = "The Salesforce settings are incomplete"
        elif FindingKind.AUTH in kinds:
            title = "Could not sign in to the org"
        table = Table(title=title, show_lines=True, expand=True)
        for name in ("Severity", "Where", "Problem", "Fix"):
            table.add_column(name, overflow="fold")
        for f in findings:
            where = ".".join(p for p in (f.sobject, f.field) if p) or f.kind.value
            table.add_row(f.severity.value, where, escape(f.message), f.fix)
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


def finding_records(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(f) for f in findings]


def print_simulation(found: Mapping[str, Any], console: Console) -> None:
    """``simulate``: per simulated day the actions by rule, then the totals by rule and step."""
    assumptions = "; ".join(f"{k}: {v}" for k, v in found["assumptions"].items())
    console.print(
        f"[bold]Simulation of {found['horizon_days']} day(s) from {found['as_of']}[/bold] "
        f"(nothing written). Assumptions: {escape(assumptions)}"
    )
    days = Table(title="Per day", expand=True)
    for name in ("Day", "Actions", "By rule", "Skipped", "Failed", "Errors"):
        days.add_column(name, overflow="fold")
    for day in found["days"]:
        days.add_row(
            day["day"],
            str(day["actions"]),
            "\n".join(f"{rule}: {n}" for rule, n in day["by_rule"].items()) or "-",
            str(day["skipped"]),
            str(day["failed"]),
            str(day["errors"]),
        )
    console.print(days)
    totals = Table(title="Totals by rule and step", expand=True)
    totals.add_column("Rule:step", overflow="fold")
    totals.add_column("Actions", justify="right")
    for step, n in found["totals"].items():
        totals.add_row(escape(step), str(n))
    console.print(totals)


def print_mapping_diff(found: Mapping[str, Any], console: Console) -> None:
    """``diff``: per rule and step, the actions before and after and the records affected."""
    actions = found["actions"]
    console.print(
        f"[bold]{escape(found['current_mapping'])} -> {escape(found['new_mapping'])}[/bold] as "
        f"of {found['as_of']}: {actions['before']} -> {actions['after']} action(s), "
        f"{len(found['records_affected'])} record(s) affected"
    )
    table = Table(show_lines=True, expand=True)
    for name in ("Rule / step", "Actions", "Added", "Removed", "Changed", "Records"):
        table.add_column(name, overflow="fold")
    for row in found["steps"]:
        table.add_row(
            f"{row['rule']}\n{escape(row['step'])}",
            f"{row['before']} -> {row['after']}",
            "\n".join(escape(f"{i['record_name'] or i['record_id']}") for i in row["added"]),
            "\n".join(escape(f"{i['record_name'] or i['record_id']}") for i in row["removed"]),
            "\n".join(
                escape(f"{i['record_name'] or i['record_id']}: {i['before']} -> {i['after']}")
                for i in row["changed"]
            ),
            "\n".join(row["records_affected"]),
        )
    if found["steps"]:
        console.print(table)
    else:
        console.print("The new mapping plans the same actions.")
    for sobject, names in found["uncached_fields"].items():
        console.print(
            f"Not in the cache yet ({sobject}): {', '.join(names)}: the new plan sees them empty"
        )


def print_not_undone(left: Sequence[Mapping[str, Any]], console: Console) -> None:
    """``undo``: what the undo plan leaves as it is, and why (conflicts first)."""
    if not left:
        console.print("Every action of the run is reversed by this plan.")
        return
    table = Table(title=f"Not undone ({len(left)})", expand=True)
    for name in ("Record", "Kind", "Key", "Why"):
        table.add_column(name, overflow="fold")
    for item in sorted(left, key=lambda i: not i["conflict"]):
        table.add_row(
            escape(item["record_name"] or item["record_id"]),
            item["kind"],
            escape(item["key"]),
            ("[bold]conflict[/bold]: " if item["conflict"] else "") + escape(item["why"]),
        )
    console.print(table)
