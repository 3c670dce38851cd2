"""Undoing a merge from its snapshot in the org (``sop-worker undo-merge KEY``).

The snapshot (``SOP_Merge_Snapshot__c``, written before the merge, see
:mod:`worker.salesforce.writes.merges`) holds the master's and the victims' values, the
values the merge set on the master, and the children it moved. Undo reads it and the
records as they are now (``queryAll``), then:

1. refuses when a victim is not in the recycle bin as this merge left it (not deleted, or
   merged into another record: never merged, or undone already), when the recycle bin no
   longer holds it or the merge is older than the org's 15-day recycle window, or when the
   master changed since the merge (its ``SystemModstamp`` is later than the victims'
   deletion, give or take :data:`SAME_TRANSACTION`);
2. undeletes the victims (SOAP ``undelete()``);
3. sets the master's values back to the snapshot's, and points each child that still names
   the master back at its victim (Tasks and Events by ``WhoId``/``WhatId``, contacts and
   opportunities by ``AccountId``). A campaign member's ``LeadId``/``ContactId`` cannot be
   updated: the victim is added to the campaign again with the member's status, and the
   member the merge moved to the master is deleted.

Every write goes with ``Sforce-Auto-Assign: FALSE`` (the client's REST default) and the
SOAP ``AssignmentRuleHeader`` off. Undeleting does not undo the re-parenting (object
reference), which is why step 3 exists.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog

from worker import schema
from worker.actions import Outcome
from worker.errors import ConfigError, SalesforceError
from worker.records import parse_sf_datetime
from worker.salesforce.client import SalesforceClient, SubRequest
from worker.salesforce.errors import record_errors
from worker.salesforce.reads import every_row
from worker.salesforce.soap import (
    parse_undelete_response,
    soap_call,
    undelete_envelope,
)
from worker.salesforce.soql import Condition, Select, select
from worker.salesforce.writes.state import IDS_PER_QUERY, in_chunks

log = structlog.get_logger(__name__)

RECYCLE_DAYS = 15  # the recycle bin keeps deleted records 15 days
# The master's update and the victims' deletion are one transaction: their stamps may differ
# by the transaction's length, never by more than this.
SAME_TRANSACTION = dt.timedelta(minutes=2)
CAMPAIGN_MEMBER = "CampaignMember"


class UndoRefused(SalesforceError):
    """The merge cannot be undone safely; the message says why."""


@dataclass
class UndoPlan:
    key: str
    sobject: str
    master_id: str
    victims: tuple[str, ...]
    merged_at: dt.datetime | None
    restore: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (now, before)
    repoint: list[dict[str, Any]] = field(default_factory=list)  # {sobject, Id, field, to}
    rejoin: list[dict[str, Any]] = field(default_factory=list)  # campaign members to re-add
    left: list[str] = field(default_factory=list)  # children not re-pointed, and why
    done: list[str] = field(default_factory=list)  # what was written

    def lines(self) -> list[str]:
        out = [f"undelete {self.sobject} {', '.join(self.victims)}"]
        for name, (now, before) in sorted(self.restore.items()):
            out.append(f"master {self.master_id}: {name} {now!r} -> {before!r}")
        for c in self.repoint:
            out.append(f"{c['sobject']} {c['Id']}: {c['field']} {self.master_id} -> {c['to']}")
        for c in self.rejoin:
            out.append(
                f"CampaignMember {c['Id']}: campaign {c['CampaignId']} member again as "
                f"{c['to']} ({c.get(schema.STATUS)}); the member moved to the master deleted"
            )
        out += [f"left as it is: {why}" for why in self.left]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "sobject": self.sobject,
            "master": self.master_id,
            "victims": list(self.victims),
            "merged_at": self.merged_at.isoformat() if self.merged_at else None,
            "steps": self.lines(),
            "done": self.done,
        }


def read_snapshot(client: SalesforceClient, key: str) -> dict[str, Any]:
    soql = select(
        Select(
            schema.MERGE_SNAPSHOT,
            (schema.ID, schema.MERGE_SNAPSHOT_MASTER, schema.MERGE_SNAPSHOT_BODY),
            (Condition(schema.MERGE_SNAPSHOT_KEY, "=", key),),
        )
    )
    rows = list(every_row(client, [soql], all_rows=False, kind="merge"))
    if not rows:
        raise ConfigError(
            f"no merge snapshot with key {key!r} in the org ({schema.MERGE_SNAPSHOT})"
        )
    try:
        body = json.loads(str(rows[0].get(schema.MERGE_SNAPSHOT_BODY) or ""))
        readable = (
            isinstance(body, dict)
            and isinstance(body.get("master"), dict)
            and schema.ID in body["master"]
            and isinstance(body.get("victims"), list)
            and all(isinstance(v, dict) and schema.ID in v for v in body["victims"])
        )
    except ValueError:
        readable = False
    if not readable:
        raise ConfigError(f"the merge snapshot {rows[0].get(schema.ID)} is not readable")
    return dict(body)


def plan_undo(client: SalesforceClient, key: str, now: dt.datetime) -> UndoPlan:
    """What undoing the merge ``key`` writes; raises :class:`UndoRefused` saying why not."""
    snap = read_snapshot(client, key)
    sobject = str(snap["sobject"])
    master_id = str(snap["master"][schema.ID])
    victims = tuple(str(v[schema.ID]) for v in snap["victims"])
    before = dict(snap["master"].get("values") or {})
    names = sorted(set(snap.get("master_values") or {}))
    rows = _rows(client, sobject, (master_id, *victims), names)

    def refuse(why: str) -> UndoRefused:
        log.error("merge.undo_refused", key=key, reason=why)
        return UndoRefused(f"undo-merge {key} refused: {why}")

    stamps = []
    for victim in victims:
        row = rows.get(victim[:15])
        if row is None:
            raise refuse(
                f"{sobject} {victim} is no longer in the recycle bin (Salesforce empties it "
                f"after {RECYCLE_DAYS} days): it cannot be undeleted"
            )
        if row.get(schema.IS_DELETED) is not True:
            raise refuse(f"{sobject} {victim} is not deleted: never merged, or undone already")
        if str(row.get("MasterRecordId") or "")[:15] != master_id[:15]:
            raise refuse(f"{sobject} {victim} was merged into {row.get('MasterRecordId')}")
        stamps.append(parse_sf_datetime(str(row[schema.SYSTEM_MODSTAMP])))
    merged_at = max(stamps)
    if now - merged_at > dt.timedelta(days=RECYCLE_DAYS):
        raise refuse(
            f"merged {merged_at.isoformat()}, past the org's {RECYCLE_DAYS}-day recycle window"
        )
    master = rows.get(master_id[:15])
    if master is None or master.get(schema.IS_DELETED) is True:
        raise refuse(f"the master {master_id} is deleted")
    master_stamp = parse_sf_datetime(str(master[schema.SYSTEM_MODSTAMP]))
    if master_stamp > merged_at + SAME_TRANSACTION:
        raise refuse(
            f"the master {master_id} changed since the merge (SystemModstamp "
            f"{master[schema.SYSTEM_MODSTAMP]}, merged {merged_at.isoformat()}): restoring "
            "its values would overwrite that change"
        )
    plan = UndoPlan(key, sobject, master_id, victims, merged_at)
    for name in names:
        if master.get(name) != before.get(name):
            plan.restore[name] = (master.get(name), before.get(name))
    children = list(snap.get("children") or [])
    current = _children_now(client, children)
    for child in children:
        now_row = current.get(str(child[schema.ID])[:15])
        where = f"{child['sobject']} {child[schema.ID]}"
        if now_row is None:
            plan.left.append(f"{where} is gone")
        elif str(now_row.get(child["field"]) or "")[:15] != master_id[:15]:
            plan.left.append(f"{where} no longer names the master ({child['field']})")
        elif child["sobject"] == CAMPAIGN_MEMBER:
            plan.rejoin.append({**child, "to": child["from"]})
        else:
            plan.repoint.append({**child, "to": child["from"]})
    return plan


def apply_undo(client: SalesforceClient, plan: UndoPlan) -> UndoPlan:
    """Write ``plan``: undelete, then the master's values and the children in one composite,
    then the campaign members."""
    response = soap_call(client, "undelete", partial(undelete_envelope, ids=plan.victims))
    results, usage = parse_undelete_response(response.content)
    if usage is not None:
        client.note_usage(usage)
    results += [(None, False, ())] * (len(plan.victims) - len(results))
    failed = [
        f"{victim}: {errors[0].describe() if errors else 'no result'}"
        for victim, (_, ok, errors) in zip(plan.victims, results, strict=False)
        if not ok
    ]
    if failed:
        raise SalesforceError(f"undelete refused: {'; '.join(failed)}")
    plan.done.append(f"undeleted {', '.join(plan.victims)}")
    updates: list[dict[str, Any]] = []
    if plan.restore:
        record: dict[str, Any] = {"attributes": {"type": plan.sobject}, schema.ID: plan.master_id}
        record.update({name: before for name, (_, before) in plan.restore.items()})
        updates.append(record)
    for c in plan.repoint:
        updates.append(
            {"attributes": {"type": c["sobject"]}, schema.ID: c[schema.ID], c["field"]: c["to"]}
        )
    creates = [
        {
            "attributes": {"type": CAMPAIGN_MEMBER},
            "CampaignId": c["CampaignId"],
            c["field"]: c["to"],
            **({schema.STATUS: c[schema.STATUS]} if c.get(schema.STATUS) else {}),
        }
        for c in plan.rejoin
    ]
    subs = []
    if updates:
        subs.append(
            SubRequest(
                "PATCH",
                client.data_path("composite/sobjects"),
                "restore",
                {"allOrNone": False, "records": updates},
            )
        )
    if creates:
        subs.append(
            SubRequest(
                "POST",
                client.data_path("composite/sobjects"),
                "rejoin",
                {"allOrNone": False, "records": creates},
            )
        )
        ids = ",".join(str(c[schema.ID]) for c in plan.rejoin)
        subs.append(
            SubRequest(
                "DELETE",
                client.data_path(f"composite/sobjects?ids={ids}&allOrNone=false"),
                "moved",
            )
        )
    problems: list[str] = []
    if subs:
        answers = client.composite(subs, kind="write", idempotent=False)
        for sub, answer in zip(subs, answers, strict=True):
            items = answer.body if answer.ok and isinstance(answer.body, list) else None
            if items is None:
                problems.append(f"{sub.reference_id}: {answer.error().message}")
                continue
            for item in items:
                if isinstance(item, Mapping) and item.get("success") is not True:
                    errors = record_errors(item.get("errors"))
                    problems.append(
                        f"{sub.reference_id}: {errors[0].describe() if errors else 'refused'}"
                    )
    plan.done += [line for line in plan.lines()[1:] if not line.startswith("left as it is")]
    if problems:
        raise SalesforceError(
            f"undo-merge {plan.key}: the victims are undeleted, but some writes were refused "
            f"({'; '.join(problems)}); set those by hand"
        )
    log.info("merge.undone", key=plan.key, victims=list(plan.victims), restored=len(plan.restore))
    return plan


def audit_events(
    plan: UndoPlan, outcome: str, message: str | None = None, *, undeleted: bool
) -> list[dict[str, Any]]:
    """The audit rows of ``plan``'s writes (``Store.record_events``), keyed by the merge's
    own key. ``undeleted``: the victims' undelete is ``applied`` and ``outcome`` (with
    ``message``) is the other writes'; else ``outcome`` is the undelete's, and the other
    writes were never sent (``planned``)."""
    rule, step = plan.key.split(":", 1)[0], "undo-merge"
    rest = outcome if undeleted else Outcome.PLANNED.value
    events: list[dict[str, Any]] = [
        {"key": plan.key, "rule": rule, "step": step, "kind": "undelete", "record_id": victim,
         "after": {schema.IS_DELETED: False, "MasterRecordId": None},
         "outcome": Outcome.APPLIED.value if undeleted else outcome, "message": message}
        for victim in plan.victims
    ]  # fmt: skip
    if plan.restore:
        events.append({
            "key": plan.key, "rule": rule, "step": step, "kind": "update",
            "record_id": plan.master_id,
            "before": {name: now for name, (now, _) in plan.restore.items()},
            "after": {name: before for name, (_, before) in plan.restore.items()},
            "outcome": rest, "message": message,
        })  # fmt: skip
    events += [
        {"key": plan.key, "rule": rule, "step": step, "kind": "update", "record_id": c[schema.ID],
         "before": {c["field"]: plan.master_id}, "after": {c["field"]: c["to"]},
         "outcome": rest, "message": message}
        for c in plan.repoint
    ]  # fmt: skip
    events += [
        {"key": plan.key, "rule": rule, "step": step, "kind": "campaign_member",
         "record_id": c[schema.ID], "before": {c["field"]: plan.master_id},
         "after": {c["field"]: c["to"], "CampaignId": c["CampaignId"]},
         "outcome": rest, "message": message}
        for c in plan.rejoin
    ]  # fmt: skip
    return events


def _rows(
    client: SalesforceClient, sobject: str, ids: Sequence[str], names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    fields = [schema.ID, schema.IS_DELETED, "MasterRecordId", schema.SYSTEM_MODSTAMP]
    fields += [n for n in names if n not in fields]
    soql = select(Select(sobject, tuple(fields), (Condition(schema.ID, "IN", tuple(ids)),)))
    return {
        str(r[schema.ID])[:15]: r for r in every_row(client, [soql], all_rows=True, kind="merge")
    }


def _children_now(
    client: SalesforceClient, children: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    by_object: dict[str, tuple[set[str], set[str]]] = {}
    for c in children:
        ids, fields = by_object.setdefault(str(c["sobject"]), (set(), set()))
        ids.add(str(c[schema.ID]))
        fields.add(str(c["field"]))
    soqls = [
        select(
            Select(
                sobject, (schema.ID, *sorted(fields)), (Condition(schema.ID, "IN", tuple(chunk)),)
            )
        )
        for sobject, (ids, fields) in by_object.items()
        for chunk in in_chunks(sorted(ids), IDS_PER_QUERY)
    ]
    if not soqls:
        return {}
    return {
        str(r[schema.ID])[:15]: r for r in every_row(client, soqls, all_rows=False, kind="merge")
    }
