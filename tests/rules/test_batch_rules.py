"""Batch rules: a rule that decides over a group of records together (a territory's new
leads, dealt out by round robin), with one verdict and reason per record for `explain`,
and whose turn it is taken from the org's records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from rich.console import Console

from worker import report
from worker.actions import UpdateRecord
from worker.errors import RecordError
from worker.mapping import LoadedMapping, OrgMapping, RuleSettings
from worker.pipeline import Explanation
from worker.records import Record, Snapshot
from worker.rules import AsOf, Batch, Evaluation, Rule, Verdict, evaluate_rule
from worker.rules.kit import Emit, round_robin

ANN, BOB, CY = "005000000000000ANN", "005000000000000BOB", "005000000000000CYY"
QUEUE = "00G000000000000QUE"
DAY = dt.date(2026, 11, 23)


def lead(n: int, territory: str, owner: str = QUEUE, created: str = "2026-11-23T14:00") -> Record:
    rid = f"00Q00000000000{n:02d}AA"
    return Record(
        "Lead",
        rid,
        {
            "Id": rid,
            "Name": f"Lead {n}",
            "Territory__c": territory,
            "OwnerId": owner,
            "CreatedDate": f"{created}:00.000+0000",
            "SystemModstamp": f"{created}:00.000+0000",
        },
    )


# -- round robin -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("history", "expected"),
    [
        pytest.param([], [ANN, BOB, CY, ANN], id="first-round-starts-with-the-first"),
        pytest.param([(BOB, "2026-11-20T10:00")], [CY, ANN, BOB, CY], id="after-bob"),
        pytest.param(
            [(CY, "2026-11-20T10:00"), (ANN, "2026-11-21T10:00")], [BOB, CY, ANN, BOB], id="latest"
        ),
        # Records owned by someone out of the rotation (a manager, a queue) do not count.
        pytest.param(
            [(ANN, "2026-11-20T10:00"), ("005000000000000MGR", "2026-11-22T10:00")],
            [BOB, CY, ANN, BOB],
            id="outsiders-ignored",
        ),
    ],
)
def test_round_robin_takes_the_turn_from_the_orgs_records(
    history: list[tuple[str, str]], expected: list[str]
) -> None:
    assigned = [lead(50 + i, "West", owner, when) for i, (owner, when) in enumerate(history)]
    new = [lead(i, "West", created=f"2026-11-23T1{i}:00") for i in range(4)]
    dealt = round_robin([ANN, BOB, CY], assigned, reversed(new))
    assert [record.id for record, _ in dealt] == [r.id for r in new]  # oldest first
    assert [owner for _, owner in dealt] == expected


def test_round_robin_ties_are_broken_by_id() -> None:
    same = "2026-11-20T10:00"
    assigned = [lead(2, "West", CY, same), lead(1, "West", ANN, same)]
    ((_, owner),) = round_robin([ANN, BOB, CY], assigned, [lead(9, "West")])
    assert owner == ANN  # lead 2 (Cy) is the latest: the turn is Ann's


def test_round_robin_needs_members() -> None:
    with pytest.raises(ValueError, match="no members"):
        round_robin([], [], [lead(1, "West")])


# -- a batch rule (a test double: per territory, new queue-owned leads dealt out) ------------
class RouteSettings(RuleSettings):
    required_steps: ClassVar[tuple[str, ...]] = ("assign",)
    reps: dict[str, tuple[str, ...]]


def _batches(snapshot: Snapshot, s: RouteSettings, org: OrgMapping) -> Iterable[Batch]:
    for territory in sorted(s.reps):
        leads = tuple(r for r in snapshot.of("Lead") if r.text("Territory__c") == territory)
        if leads:
            yield Batch(f"territory:{territory}", leads)


def _decide_batch(
    batch: Batch, snapshot: Snapshot, at: AsOf, s: RouteSettings, org: OrgMapping
) -> Iterable[Evaluation]:
    territory = batch.key.split(":", 1)[1]
    queued = [r for r in batch.records if r.text("OwnerId") == QUEUE]
    for record in batch.records:
        if record.text("Territory__c") == "???":
            raise RecordError(record.id, "Territory__c", "not a territory")
    dealt = dict(
        (r.id, owner) for r, owner in round_robin(s.reps[territory], batch.records, queued)
    )
    for record in batch.records:
        emit = Emit.on("route", s, org, record)
        owner = dealt.get(record.id)
        if owner is None:
            yield Evaluation("route", emit.target, Verdict.DONE, "already owned by a rep")
            continue
        action = emit.update("assign", {"OwnerId": owner}, reason=f"round robin in {territory}")
        assert action is not None
        yield Evaluation(
            "route", emit.target, Verdict.ACT, f"{owner}'s turn in {territory}", (action,)
        )


ROUTE: Rule[RouteSettings] = Rule(
    id="route",
    title="Round robin within a territory",
    settings_model=RouteSettings,
    step_ids=("assign",),
    batches=_batches,
    decide_batch=_decide_batch,
)


@pytest.fixture
def settings() -> RouteSettings:
    return RouteSettings(
        sop_file="004.txt",
        steps={"assign": "Apply round-robin within territory"},
        reps={"West": (ANN, BOB), "East": (CY,)},
    )


def evaluations(mapping: LoadedMapping, settings: RouteSettings, *leads: Record) -> list[Any]:
    return list(evaluate_rule(ROUTE, Snapshot.build(leads), DAY, settings, mapping.common))


def test_a_batch_rule_acts_on_several_records_with_a_verdict_each(
    mapping: LoadedMapping, settings: RouteSettings
) -> None:
    west_old = lead(1, "West", BOB, "2026-11-20T10:00")
    west_new = [
        lead(2, "West", created="2026-11-23T14:00"),
        lead(3, "West", created="2026-11-23T15:00"),
    ]
    east_new = lead(4, "East")
    found = {e.target.id: e for e in evaluations(mapping, settings, west_old, *west_new, east_new)}
    assert found[west_old.id].verdict is Verdict.DONE
    owners = {
        rid: e.actions[0].values()["OwnerId"]
        for rid, e in found.items()
        if e.verdict is Verdict.ACT and isinstance(e.actions[0], UpdateRecord)
    }
    # Bob had the last West lead: Ann, then Bob; East has one rep.
    assert owners == {west_new[0].id: ANN, west_new[1].id: BOB, east_new.id: CY}
    assert {e.batch for e in found.values()} == {"territory:West", "territory:East"}
    assert found[west_new[0].id].why == f"{ANN}'s turn in West"
    keys = [a.key for e in found.values() for a in e.actions]
    assert len(set(keys)) == len(keys) == 3  # one key per record and step


def test_the_next_turn_survives_a_lost_database(
    mapping: LoadedMapping, settings: RouteSettings
) -> None:
    """After the first lead was written to Ann, a fresh evaluation of the org deals the
    next one to Bob: the turn is in the org's records, not in the worker's database."""
    first = lead(2, "West", created="2026-11-23T14:00")
    (done,) = evaluations(mapping, settings, first)
    assert done.actions[0].values()["OwnerId"] == ANN
    written = lead(2, "West", ANN, "2026-11-23T14:00")
    second = lead(3, "West", created="2026-11-23T15:00")
    found = {e.target.id: e for e in evaluations(mapping, settings, written, second)}
    assert found[second.id].actions[0].values()["OwnerId"] == BOB


def test_a_record_that_cannot_be_read_holds_its_batch_only(
    mapping: LoadedMapping, settings: RouteSettings
) -> None:
    good, east = lead(5, "West"), lead(7, "East")
    odd = Record("Lead", lead(8, "West").id, {**lead(8, "West").fields, "Territory__c": "???"})

    def batches(snapshot: Snapshot, s: RouteSettings, org: OrgMapping) -> Iterable[Batch]:
        yield Batch("territory:West", (good, odd))
        yield Batch("territory:East", (east,))

    rule = Rule(
        id="route",
        title="t",
        settings_model=RouteSettings,
        step_ids=("assign",),
        batches=batches,
        decide_batch=_decide_batch,
    )
    found = {
        e.target.id: e
        for e in evaluate_rule(rule, Snapshot.build([]), DAY, settings, mapping.common)
    }
    assert found[odd.id].verdict is Verdict.ERROR
    assert "Territory__c: not a territory" in found[odd.id].why
    assert found[good.id].verdict is Verdict.ERROR
    assert found[good.id].why.startswith("not decided: batch territory:West has a record")
    assert found[good.id].actions == ()
    assert found[east.id].verdict is Verdict.ACT  # the other batch goes on


def test_explain_names_the_batch(mapping: LoadedMapping, settings: RouteSettings) -> None:
    record = lead(2, "West")
    (evaluation,) = evaluations(mapping, settings, record)
    found = Explanation(record.id, record, "Lead 2", (evaluation,), (), {}, (), ())
    console = Console(record=True, width=200)
    report.print_explanation(found, DAY, console)
    text = console.export_text()
    assert "decided together with batch territory:West" in text
    assert f"{ANN}'s turn in West" in text
    assert report.explanation_record(found, DAY)["rules"][0]["batch"] == "territory:West"


def test_a_rule_has_one_shape() -> None:
    with pytest.raises(TypeError, match="candidates and decide, or batches and decide_batch"):
        Rule(id="x", title="x", settings_model=RouteSettings, step_ids=(), batches=_batches)
    with pytest.raises(TypeError):
        Rule(
            id="x",
            title="x",
            settings_model=RouteSettings,
            step_ids=(),
            candidates=lambda s, t, o: (),
            decide=lambda *a: None,  # type: ignore[arg-type,return-value]
            batches=_batches,
            decide_batch=_decide_batch,
        )


def test_a_verdict_outside_the_batch_is_a_rule_bug(
    mapping: LoadedMapping, settings: RouteSettings
) -> None:
    other = lead(9, "East")

    def wrong(batch: Batch, *_: Any) -> Iterable[Evaluation]:
        yield Evaluation("route", other.ref(), Verdict.DONE, "x")

    rule = Rule(
        id="route",
        title="t",
        settings_model=RouteSettings,
        step_ids=("assign",),
        batches=_batches,
        decide_batch=wrong,
    )
    with pytest.raises(ValueError, match="not a record of the batch"):
        list(evaluate_rule(rule, Snapshot.build([lead(1, "West")]), DAY, settings, mapping.common))
