"""The report as one self-contained HTML page: inline CSS and inline SVG charts, no script
or font or image from anywhere, so it opens offline, from an email attachment or from a
one-off dyno's output. Charts are drawn by pygal (static SVG, its tooltip script left out).

Rendering only: every figure on the page comes from the JSON report
(:func:`worker.reporting.build.build_report`), which the browser test checks it against.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pygal
from pygal.style import Style


def _style(*colors: str) -> Style:
    return Style(
        background="white",
        plot_background="white",
        foreground="#333",
        foreground_strong="#111",
        foreground_subtle="#888",
        font_family="system-ui, sans-serif",
        colors=colors,
    )


# Outcomes: done green, skipped grey, failed red, conflicts orange, unknown, not sent.
_STYLE = _style("#2e7d32", "#9e9e9e", "#c62828", "#ef6c00", "#6a1b9a", "#1565c0")
# Series that are rules, not outcomes: no green-for-good, red-for-bad reading.
_RULE_STYLE = _style("#1565c0", "#6a1b9a", "#00838f", "#8d6e63", "#5c6bc0", "#26a69a", "#78909c")
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:16px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85;font-size:14px}main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:17px;margin:4px 0 10px}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border-radius:6px;padding:8px 12px;min-width:150px;border:1px solid #ddd;background:#f5f5f5}
.card.met{background:#e8f5e9;border-color:#a5d6a7}.card.missed{background:#ffebee;border-color:#ef9a9a}
.card .label{font-size:12px;color:#555}.card .value{font-size:22px;font-weight:600}
.card .target{font-size:12px;color:#555}.card .why{font-size:11px;color:#777;max-width:220px}.card .status{font-size:11px;text-transform:uppercase;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.formula{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#333}
.muted{color:#777;font-size:12px}svg.pygal-chart{max-width:900px;height:auto}
"""
_TOTALS = (
    ("targets_met", "Targets met"),
    ("targets_missed", "Targets missed"),
    ("not_measured", "Not measured"),
    ("actions_done", "SOP actions done"),
    ("actions_failed", "Actions failed"),
    ("conflicts", "Conflicts"),
    ("records_due_now", "Records with a step due now"),
    ("records_at_risk", "Records at risk"),
    ("tasks_past_due", "SOP Tasks past due"),
    ("runs", "Runs"),
    ("api_calls", "API calls"),
)


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render(report: Mapping[str, Any]) -> str:
    org = report["org"]
    title = f"SOP report: {org.get('name') or org.get('id') or 'org'}"
    period = report["period"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)} {e(period['first'])} to {e(period['last'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>{e(title)}</h1><p>{e(period['first'])} to {e(period['last'])} "
        f"({e(period['days'])} days, as of {e(report['as_of'])}) · org {e(org.get('id'))} · "
        f"mapping {e(report['mapping'])} · generated {e(report['generated_at'][:19])} UTC</p>"
        "</header><main>",
        _headline(report),
        _activity(report),
        _steps(report["steps"]),
        _risks(report["risks"]),
        _api(report),
        _figures(report["figures"]),
    ]
    if report.get("simulation"):
        parts.append(_simulation(report["simulation"]))
    if report.get("record"):
        parts.append(_record(report["record"]))
    parts.append("</main></body></html>\n")
    return "".join(parts)


def _headline(report: Mapping[str, Any]) -> str:
    cards = []
    for f in report["figures"]:
        cards.append(
            f"<div class='card {e(f['status'].replace(' ', '-'))}' data-figure='{e(f['id'])}'>"
            f"<div class='label'>{e(f['label'])}</div><div class='value'>{e(f['shown'])}</div>"
            f"<div class='target'>target {e(f['target'])}</div>"
            f"<div class='status'>{e(f['status'])}</div>"
            + (f"<div class='why'>{e(f['note'])}</div>" if f["value"] is None else "")
            + "</div>"
        )
    head = report["headline"]
    totals = "".join(
        f"<div class='card' data-total='{name}'><div class='label'>{e(label)}</div>"
        f"<div class='value'>{e(head[name])}</div></div>"
        for name, label in _TOTALS
    )
    return (
        "<section id='headline'><h2>Targets (SOP 004)</h2>"
        f"<div class='cards'>{''.join(cards) or '<p class=muted>No figures in [report].</p>'}"
        f"</div><h2>This period</h2><div class='cards'>{totals}</div></section>"
    )


def _chart(chart: Any) -> str:
    return str(chart.render(is_unicode=True))


def _config(title: str, labels: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {
        "title": title,
        "x_labels": list(labels),
        "js": [],  # no tooltip script: the page loads nothing from anywhere
        "disable_xml_declaration": True,
        "style": _STYLE,
        "width": 900,
        "height": 360,
        "x_label_rotation": 30,
        "legend_at_bottom": True,
        "print_values": False,
        **extra,
    }


def _activity(report: Mapping[str, Any]) -> str:
    days = report["days"]
    chart = pygal.StackedBar(**_config("SOP actions per day", [d["day"] for d in days]))
    for measure, label in (
        ("done", "done"),
        ("skipped", "skipped (catch-up)"),
        ("failed", "failed"),
        ("conflicts", "conflicts"),
        ("unknown", "unknown"),
        ("not_sent", "not sent"),
    ):
        chart.add(label, [d[measure] for d in days])
    return f"<section id='activity'><h2>SOP actions over the period</h2>{_chart(chart)}</section>"


def _counts(values: Mapping[str, int]) -> str:
    return "<br>".join(f"{e(k)}: {e(n)}" for k, n in values.items())


def _steps(steps: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "Rule",
        "SOP step",
        "Due",
        "Done",
        "Skipped",
        "Failed",
        "Conflicts",
        "Unknown",
        "Not sent",
        "Skip reasons",
        "Error codes",
    )
    rows = []
    for s in steps:
        nums = "".join(
            f"<td class='n'>{e(s[m])}</td>"
            for m in ("due", "done", "skipped", "failed", "conflicts", "unknown", "not_sent")
        )
        rows.append(
            f"<tr data-step='{e(s['rule'])}:{e(s['step'])}'><td>{e(s['rule'])}<br>"
            f"<span class='muted'>{e(s['sop'])}</span></td><td>{e(s['step'])}"
            + (f"<br><span class='muted'>{e(s['label'])}</span>" if s["label"] != s["step"] else "")
            + f"</td>{nums}"
            f"<td>{_counts(s['skip_reasons'])}</td><td>{_counts(s['error_codes'])}</td></tr>"
        )
    return (
        "<section id='steps'><h2>Per rule and SOP step</h2>"
        + _table(head, rows, "No SOP action was taken in this period.")
        + "</section>"
    )


def _table(head: Iterable[str], rows: Sequence[str], empty: str) -> str:
    if not rows:
        return f"<p class='muted'>{e(empty)}</p>"
    ths = "".join(f"<th>{e(h)}</th>" for h in head)
    return f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _risks(risks: Sequence[Mapping[str, Any]]) -> str:
    """Per rule, the counts first, then the records behind each (folded)."""
    summary = [
        f"<tr data-risk='{e(r['rule'])}'><td>{e(r['rule'])}</td>"
        + "".join(
            f"<td class='n'>{len(r[k])}</td>"
            for k in ("due_now", "tasks_past_due", "at_risk", "errors")
        )
        + "</tr>"
        for r in risks
    ]
    details = []
    for r in risks:
        rows = [
            _risk_row("due now", item, ", ".join(item["steps"]), item["why"])
            for item in r["due_now"]
        ]
        rows += [
            _risk_row("Task past due", item, item["step"], f"{item['subject']} (due {item['due']})")
            for item in r["tasks_past_due"]
        ]
        rows += [
            _risk_row("at risk", item, item["next_step"] or "", f"next step due {item['next_due']}")
            for item in r["at_risk"]
        ]
        rows += [_risk_row("cannot evaluate", item, "", item["why"]) for item in r["errors"]]
        if rows:
            details.append(
                f"<details><summary>{e(r['rule'])}: {len(rows)} record(s)</summary>"
                + _table(("State", "Record", "Step", "Why"), rows, "")
                + "</details>"
            )
    head = ("Rule", "Step due now, not done", "SOP Tasks past due", "At risk", "Cannot evaluate")
    return (
        "<section id='risks'><h2>Records overdue or at risk</h2>"
        "<p class='muted'>Due now: the rule acts on the record today and no run has yet. "
        "Tasks past due: the worker's open Tasks whose due date has passed. At risk: the "
        "next step (as explain says) falls due within [report] at_risk_days.</p>"
        + _table(head, summary, "No rule is enabled.")
        + "".join(details)
        + "</section>"
    )


def _risk_row(state: str, item: Mapping[str, Any], step: str, why: str) -> str:
    name = item.get("name") or ""
    return (
        f"<tr><td>{e(state)}</td><td>{e(name)} "
        f"<span class='muted'>{e(item['record_id'])}</span></td><td>{e(step)}</td>"
        f"<td>{e(why)}</td></tr>"
    )


def _api(report: Mapping[str, Any]) -> str:
    runs = report["runs"]
    allowance = report["api"]["daily_allowance"]
    labels = [f"{r['as_of']} {str(r['run_id'])[:6]}" for r in runs]
    chart = pygal.Bar(**_config("API calls per run", labels))
    chart.add("API calls", [r["api_calls"] for r in runs])
    if allowance:
        chart.add("daily allowance", [allowance] * len(runs))
    rows = [
        f"<tr><td>{e(r['run_id'])}</td><td>{e(r['mode'])}</td><td>{e(r['as_of'])}</td>"
        f"<td>{e(r['status'])}</td><td class='n'>{e(r['api_calls'])}</td>"
        f"<td class='n'>{e(r['share_of_allowance'] if r['share_of_allowance'] is not None else '')}"
        f"</td><td class='n'>{e(r['api_remaining'] if r['api_remaining'] is not None else '')}</td></tr>"
        for r in runs
    ]
    note = (
        f"Daily allowance: {allowance} calls ([report] daily_api_allowance)."
        if allowance
        else "Daily allowance not set ([report] daily_api_allowance); a live run reports the calls left."
    )
    head = ("Run", "Mode", "As of", "Status", "API calls", "% of allowance", "Remaining after")
    return (
        f"<section id='api'><h2>API calls per run</h2><p class='muted'>{e(note)}</p>"
        f"{_chart(chart) if runs else ''}{_table(head, rows, 'No run in this period.')}</section>"
    )


def _figures(figures: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        f"<tr data-formula='{e(f['id'])}'><td>{e(f['label'])}<br><span class='muted'>"
        f"{e(f['group'])} · {e(f['sop'])}</span></td><td class='formula'>{e(f['formula'])}</td>"
        f"<td class='n'>{e(f['numerator'] if f['numerator'] is not None else '')}</td>"
        f"<td class='n'>{e(f['denominator'] if f['denominator'] is not None else '')}</td>"
        f"<td>{e(f['shown'])}</td><td>{e(f['target'])}</td><td>{e(f['status'])}</td>"
        f"<td>{e(f['note'])}</td></tr>"
        for f in figures
    ]
    head = ("Figure", "Formula", "Counted", "Out of", "Value", "Target", "Status", "Note")
    return (
        "<section id='figures'><h2>How each figure is computed</h2>"
        + _table(head, rows, "No figures in the mapping's [report] section.")
        + "</section>"
    )


def _simulation(sim: Mapping[str, Any]) -> str:
    days = sim["days"]
    labels = [d["day"] for d in days]
    chart = pygal.StackedBar(
        **{**_config("Simulated SOP actions per day", labels), "style": _RULE_STYLE}
    )
    rules = sorted({rule for d in days for rule in d["by_rule"]})
    for rule in rules:
        chart.add(rule, [d["by_rule"].get(rule, 0) for d in days])
    assumptions = "; ".join(f"{k}: {v}" for k, v in sim["assumptions"].items())
    return (
        "<section id='simulation'><h2>Forward simulation</h2>"
        f"<p class='muted'>Assumptions: {e(assumptions)}</p>{_chart(chart)}</section>"
    )


def _record(found: Mapping[str, Any]) -> str:
    rows = [
        f"<tr><td>{e(h['updated_at'][:19])}</td><td>{e(h['run_id'])}</td><td>{e(h['rule'])}"
        f"<br>{e(h['step'])}</td><td>{e(h['status'])} {e(h['error_code'] or '')}</td>"
        f"<td>{e(h['change'])}</td></tr>"
        for h in found["timeline"]
    ]
    nxt = [
        f"<tr><td>{e(r['rule'])}</td><td>{e(r['verdict'])}</td><td>{e(r['why'])}</td>"
        f"<td>{e(r['next_step'] or '')} {e(r['next_due'] or '')}</td></tr>"
        for r in found["rules"]
    ]
    return (
        f"<section id='record'><h2>SOP timeline of {e(found['sobject'])} {e(found['name'])} "
        f"({e(found['record_id'])})</h2>"
        + _table(("Updated", "Run", "Step", "Status", "Change"), rows, "No SOP action yet.")
        + "<h2>Next steps</h2>"
        + _table(("Rule", "Verdict", "Why", "Next"), nxt, "No rule looks at this record.")
        + "</section>"
    )
