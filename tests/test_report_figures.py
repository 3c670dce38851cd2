"""The report's figures, pure: SOP measures over records, and actions counted as they ended."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.records import Record, Snapshot
from worker.reporting.build import StoreView, build_report
from worker.reporting.config import Figure
from worker.reporting.figures import Period, compute
from worker.store import AuditRow

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC)
PERIOD = Period(dt.date(2026, 11, 19), dt.date(2026, 11, 25), NOW)


def lead(n: int, **fields: Any) -> Record:
    return Record("Lead", f"00Q{n:015d}", {"Id": f"00Q{n:015d}", **fields})


def figure(**settings: Any) -> Figure:
    return Figure.model_validate({"label": "x", "sobject": "Lead", **settings})


def test_a_share_counts_the_matching_records_of_the_population() -> None:
    snapshot = Snapshot.build(
        [
            lead(1, Status="MQL", CreatedDate="2026-11-20T10:00:00.000+0000"),
            lead(2, Status="New", CreatedDate="2026-11-21T10:00:00.000+0000"),
            lead(3, Status="SQL", CreatedDate="2026-11-22T10:00:00.000+0000"),
            lead(4, Status="MQL", CreatedDate="2026-10-01T10:00:00.000+0000"),  # before
        ]
    )
    found = compute(
        "mql",
        figure(
            kind="share",
            since_field="CreatedDate",
            match={"equals": {"Status": ["MQL", "SQL"]}},
            target=">35%",
        ),
        snapshot,
        [],
        PERIOD,
    )
    assert (found.numerator, found.denominator, found.status) == (2, 3, "met")
    assert found.shown() == "66.7%"


def test_duplicates_compare_values_loosely_and_count_every_record_of_a_pair() -> None:
    snapshot = Snapshot.build(
        [
            lead(1, Email="Ann@Example.com ", Phone="(312) 555-0101"),
            lead(2, Email="ann@example.com", Phone=None),
            lead(3, Email="bob@example.com", Phone="312.555.0101"),
            lead(4, Email="cy@example.com", Phone=""),
        ]
    )
    found = compute(
        "dupes",
        figure(kind="duplicates", keys=["Email", "Phone"], target="<2%"),
        snapshot,
        [],
        PERIOD,
    )
    assert (found.numerator, found.denominator, found.status) == (3, 4, "missed")


def test_elapsed_within_hours_counts_a_late_record_without_an_end_as_missed() -> None:
    snapshot = Snapshot.build(
        [
            lead(1, Created="2026-11-24T10:00:00.000+0000", First="2026-11-24T10:30:00.000+0000"),
            lead(2, Created="2026-11-23T10:00:00.000+0000", First=None),  # 56 h, none yet
            lead(3, Created="2026-11-25T17:00:00.000+0000", First=None),  # still within
        ]
    )
    settings = {"kind": "elapsed", "start_field": "Created", "end_field": "First"}
    within = compute(
        "sla", figure(**settings, within_hours=24, target=">95%"), snapshot, [], PERIOD
    )
    assert (within.numerator, within.denominator, within.shown()) == (1, 2, "50.0%")
    median = compute("rt", figure(**settings, target="<1h"), snapshot, [], PERIOD)
    assert (median.shown(), median.status) == ("0.5 h", "met")


def test_completeness_is_filled_values_over_all_cells() -> None:
    snapshot = Snapshot.build([lead(1, A="x", B=""), lead(2, A="y", B="z")])
    found = compute(
        "c", figure(kind="completeness", fields=["A", "B"], target=">95%"), snapshot, [], PERIOD
    )
    assert (found.numerator, found.denominator, found.status) == (3, 4, "missed")


@pytest.mark.parametrize(
    ("settings", "enabled", "note"),
    [
        ({"requires_rules": ["lead_sla"]}, [], "lead_sla not enabled"),
        ({"match": {"filled": ["EmailBouncedDate"]}}, ["lead_sla"], "EmailBouncedDate not cached"),
    ],
)
def test_a_figure_without_its_rule_or_fields_is_not_measured(
    settings: dict[str, Any], enabled: list[str], note: str
) -> None:
    snapshot = Snapshot.build([lead(1, Status="New")])
    base = {"kind": "share", "match": {"equals": {"Status": ["New"]}}, "target": ">1%"}
    found = compute("f", figure(**{**base, **settings}), snapshot, enabled, PERIOD)
    assert (found.status, found.value, found.shown()) == ("not measured", None, "not measured")
    assert note in found.note


def test_a_target_must_be_an_operator_and_a_number() -> None:
    with pytest.raises(ValueError, match="operator and a number"):
        figure(kind="share", match={"filled": ["A"]}, target="about a third")
    with pytest.raises(ValueError, match="needs keys"):
        figure(kind="duplicates", target="<2%")


def row(n: int, run: str, key: str, event: str, outcome: str, **extra: Any) -> AuditRow:
    rule, step, record = key.split(":")
    values: dict[str, Any] = {
        "id": n,
        "run_id": run,
        "ts": f"2026-11-2{n}T10:00:00+00:00",
        "actor": "sop-worker",
        "event": event,
        "key": key,
        "rule": rule,
        "sop": "000.txt",
        "step": step,
        "kind": "create_task",
        "record_id": record,
        "record_name": "",
        "before": None,
        "after": None,
        "outcome": outcome,
        "error_code": None,
        "message": None,
        "reason": None,
        **extra,
    }
    return AuditRow(**values)


def test_actions_count_once_as_they_ended_with_reasons_and_error_codes(mapping: Any) -> None:
    runs = [
        {"run_id": "r1", "mode": "run", "as_of": "2026-11-23", "summary": '{"api_calls": 12}'},
        {"run_id": "r2", "mode": "run", "as_of": "2026-11-24", "summary": '{"api_calls": 3}'},
    ]
    audit = [
        row(1, "r1", "payment_followup:s2:006A", "intent", "sent"),
        row(2, "r1", "payment_followup:s2:006A", "outcome", "sent"),  # answer lost
        row(3, "r1", "payment_followup:s2:006B", "outcome", "failed", error_code="FIELD_X"),
        row(
            4,
            "r1",
            "payment_followup:s1:006C",
            "skipped",
            "skipped",
            message="due 2026-11-20: fell due while the worker was not running",
        ),
        row(5, "r2", "payment_followup:s2:006A", "reconciled", "applied"),  # found applied
        row(
            6, "r2", "payment_followup:s2:006D", "outcome", "conflict", error_code="RECORD_CHANGED"
        ),
    ]
    report = build_report(
        view=StoreView(runs, audit, {}),
        mapping=mapping,
        snapshot=Snapshot.build([]),
        evaluations=[],
        period=PERIOD,
        org={"id": "00D", "name": "demo"},
        generated_at=NOW,
    )
    steps = {s["step"]: s for s in report["steps"]}
    s2 = steps["s2"]
    assert (s2["due"], s2["done"], s2["failed"], s2["conflicts"], s2["unknown"]) == (3, 1, 1, 1, 0)
    assert s2["error_codes"] == {"FIELD_X": 1, "RECORD_CHANGED": 1}
    assert steps["s1"]["skip_reasons"] == {"fell due while the worker was not running": 1}
    assert steps["s1"]["due"] == 0
    days = {d["day"]: d for d in report["days"]}
    assert days["2026-11-24"]["done"] == 1
    assert days["2026-11-23"]["done"] == 0
    assert [r["api_calls"] for r in report["runs"]] == [12, 3]
    assert report["headline"]["api_calls"] == 15
    assert report["runs"][0]["share_of_allowance"] == round(100 * 12 / 15000, 2)
