"""SOP 004 duplicate check, incremental: with the snapshot's ``changed_since`` set, only the
groups that leads, contacts or accounts changed since touch are decided, and the actions are
those of a full pass over the same records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from worker.mapping import LoadedMapping
from worker.records import Record, Snapshot
from worker.rules import ALL_RULES, Evaluation, evaluate_rule

from .test_lead_dedupe import DAY, account, lead

RULE = next(r for r in ALL_RULES if r.id == "lead_dedupe")
HORIZON = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
OLD = "2026-11-20T10:00:00.000+0000"
NEW = "2026-11-23T09:30:00.000+0000"
LINKED = {
    "Matched_Account__c": "001TstD000000001AAA",
    "Account_Match_Tier__c": "domain",
    "Account_Match_Evidence__c": "email domain globex.com = website",
}


def records() -> list[dict[str, Any]]:
    return [
        account(1, "Globex", "https://globex.com", SystemModstamp=OLD),
        account(2, "Hooli", "https://www.hooli.com", SystemModstamp=NEW),  # new accounts
        account(3, "Soylent", SystemModstamp=NEW),
        account(4, "Massive Dynamics", BillingCountry="US", SystemModstamp=NEW),
        # An old lead, linked before, and a new lead with its address: one group.
        lead(1, Email="jo@globex.com", SystemModstamp=OLD, **LINKED),
        lead(2, Email="Jo+news@Globex.com", SystemModstamp=NEW),
        # Neither is merged: one converted (new), one out of the scope (old).
        lead(12, Email="jo@globex.com", IsConverted=True, SystemModstamp=NEW),
        lead(
            13, Email="JO@globex.com", RecordType={"DeveloperName": "HomeCare"}, SystemModstamp=OLD
        ),
        # An old pair decided before (linked; merged only with merges on).
        lead(3, Email="pat@globex.com", FirstName="Pat", SystemModstamp=OLD, **LINKED),
        lead(4, Email="PAT@globex.com", FirstName="Pat", SystemModstamp=OLD, **LINKED),
        # Old and untouched.
        lead(
            5, Email="lee@initech.example", FirstName="Lee", Company="Initech", SystemModstamp=OLD
        ),
        # Old, with an address a new contact has.
        lead(
            6, Email="ana@umbrella.example", FirstName="Ana", Company="Umbrella", SystemModstamp=OLD
        ),
        {
            "attributes": {"type": "Contact"},
            "Id": "003TstD000000001AAA",
            "Name": "Ana Reyes",
            "Email": "ana@umbrella.example",
            "AccountId": None,
            "SystemModstamp": NEW,
        },
        # Old, at the new account's domain.
        lead(7, Email="kim@hooli.com", FirstName="Kim", Company="Kim Co", SystemModstamp=OLD),
        # Old, with the other new account's name.
        lead(10, Email="ray@soylent.example", FirstName="Ray", Company="Soylent Inc."),
        # Old, a letter from the third one's name, in its country.
        lead(11, Email="ivy@massive.example", FirstName="Ivy", Company="Massive Dynamic"),
        # A new lead with an old lead's phone and name, another address: a possible duplicate.
        lead(
            8, Email="sam@stark.example", FirstName="Sam", Phone="+14155550188", SystemModstamp=NEW
        ),
        lead(
            9,
            Email="sam.b@wayne.example",
            FirstName="Sam",
            Company="Wayne",
            Phone="(415) 555-0188",
            SystemModstamp=OLD,
        ),
    ]


def evaluate(
    mapping: LoadedMapping, since: dt.datetime | None, **overrides: Any
) -> dict[str, Evaluation]:
    settings = mapping.rules["lead_dedupe"].model_copy(update=overrides)
    snapshot = Snapshot.build((Record.from_json(r) for r in records()), changed_since=since)
    return {e.target.id: e for e in evaluate_rule(RULE, snapshot, DAY, settings, mapping.common)}


def actions(found: dict[str, Evaluation]) -> list[dict[str, Any]]:
    return sorted((a.to_dict() for e in found.values() for a in e.actions), key=lambda a: a["key"])


@pytest.mark.parametrize("merge", [False, True])
def test_an_incremental_pass_plans_what_a_full_pass_plans(
    mapping: LoadedMapping, merge: bool
) -> None:
    full = evaluate(mapping, None, merge=merge)
    incremental = evaluate(mapping, HORIZON, merge=merge)

    assert actions(incremental) == actions(full)
    for record_id, evaluation in incremental.items():  # each decided as a full pass decides it
        assert evaluation == full[record_id]
    ids = {n: f"00QTstD00000000{n}AAA" for n in range(1, 10)}
    # The new lead that duplicates an old one is decided with it.
    assert "same email jo@globex.com" in incremental[ids[2]].why
    assert {ids[1], ids[2]} <= incremental.keys()
    assert not {"00QTstD0000000012AAA", "00QTstD0000000013AAA"} & incremental.keys()
    # A new contact, a new account and a new lead's phone reach the old leads they touch.
    assert "email matches contact 003TstD000000001AAA" in incremental[ids[6]].why
    assert "account 001TstD000000002AAA by domain" in incremental[ids[7]].why
    assert "account 001TstD000000003AAA by name" in incremental["00QTstD0000000010AAA"].why
    assert "account 001TstD000000004AAA by fuzzy" in incremental["00QTstD0000000011AAA"].why
    assert f"possible duplicate {ids[9]}" in incremental[ids[8]].why
    # What nothing changed touches is not decided again: the untouched old lead, and the old
    # pair decided before (with merges on, a pair still there may be a merge not yet made,
    # so it is decided each pass, and planned as a full pass plans it).
    assert ids[5] not in incremental
    assert ids[9] not in incremental  # named in the new lead's verdict only
    assert ({ids[3], ids[4]} <= incremental.keys()) is merge


def test_the_old_pair_is_planned_once(mapping: LoadedMapping) -> None:
    full = evaluate(mapping, None, merge=True)
    incremental = evaluate(mapping, HORIZON, merge=True)
    merges = [a for a in actions(incremental) if a["kind"] == "merge"]
    assert len({a["key"] for a in merges}) == len(merges) == 2  # 1<-2 and 3<-4, once each
    assert merges == [a for a in actions(full) if a["kind"] == "merge"]


def test_without_a_horizon_every_lead_is_decided(mapping: LoadedMapping) -> None:
    assert len(evaluate(mapping, None)) == 11
