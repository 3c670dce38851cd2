"""Merges: ``MergeRecords`` actions over the SOAP ``merge()`` call, each after a snapshot of
what it changes is in the org.

For the actions of one write:

1. The master and victims as the org holds them now, from ``queryAll`` (a merged victim is
   in the recycle bin, ``IsDeleted`` with its ``MasterRecordId``): one query per object and
   200 Ids. A merge whose victims all show the master as their ``MasterRecordId`` happened
   already (a lost answer, a lost database): APPLIED, not sent again. A victim deleted or
   converted by now refuses that merge (a ``conflict`` naming the victim and why); the
   next cycle plans afresh. (A victim changed since it was planned, its ``SystemModstamp``
   moved, was refused before the first write of the apply: see
   :meth:`~worker.actions.MergeRecords.checked_records`.)
2. The children that will move to the master (Tasks and Events by ``WhoId``, campaign
   members by ``LeadId``/``ContactId``; for accounts their contacts, opportunities and
   activities), then one ``SOP_Merge_Snapshot__c`` record per merge, upserted on its
   ``Merge_Key__c`` (the action key): the master's and victims' values of the action's
   ``snapshot_fields``, the values the merge sets on the master, and the children, as a
   JSON body. A merge whose snapshot is not in the org is not sent.
3. ``merge()``, up to 200 requests a call, each its own transaction: success is APPLIED
   (the merged Ids and the number of related records moved in the message), an error fails
   that action alone with its ``statusCode`` (``DUPLICATES_DETECTED`` when a duplicate rule
   blocks the master's new values). A lost answer leaves the call's actions ``SENT`` for
   :func:`merged`, which reads the victims from ``queryAll`` and never sends them blind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import structlog

from worker import schema
from worker.actions import ActionResult, MergeRecords, Outcome
from worker.errors import ApiLimitError, AuthError, SalesforceError
from worker.salesforce.client import SubRequest
from worker.salesforce.errors import UNKNOWN_OUTCOME, RecordFailure, record_errors
from worker.salesforce.reads import composites_for, every_row
from worker.salesforce.soap import (
    MERGE_REQUESTS_PER_CALL,
    MergeRequest,
    merge_envelope,
    parse_merge_response,
    soap_call,
)
from worker.salesforce.soql import Condition, Select, select
from worker.salesforce.writes.collections import COLLECTION_MAX, COLLECTIONS_PER_COMPOSITE
from worker.salesforce.writes.state import (
    IDS_PER_QUERY,
    WriteContext,
    WriteState,
    in_chunks,
    send_batch,
)

log = structlog.get_logger(__name__)

SNAPSHOT_OBJECT = schema.MERGE_SNAPSHOT
SNAPSHOT_KEY = schema.MERGE_SNAPSHOT_KEY
SNAPSHOT_MASTER = schema.MERGE_SNAPSHOT_MASTER
SNAPSHOT_BODY = schema.MERGE_SNAPSHOT_BODY
SNAPSHOT_BODY_MAX = 131_072
MASTER_RECORD_ID = "MasterRecordId"
# The children a merge moves to the master, per merged object: (child object, its field
# naming the merged record, the fields the snapshot keeps besides Id).
CHILDREN: Mapping[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "Lead": (
        (schema.TASK, schema.WHO_ID, ()),
        ("Event", schema.WHO_ID, ()),
        ("CampaignMember", "LeadId", ("CampaignId", schema.STATUS)),
    ),
    "Contact": (
        (schema.TASK, schema.WHO_ID, ()),
        ("Event", schema.WHO_ID, ()),
        ("CampaignMember", "ContactId", ("CampaignId", schema.STATUS)),
    ),
    "Account": (
        ("Contact", "AccountId", ()),
        (schema.OPPORTUNITY, "AccountId", ()),
        (schema.TASK, schema.WHAT_ID, ()),
        ("Event", schema.WHAT_ID, ()),
    ),
}


def merge_records(
    ctx: WriteContext, merges: Sequence[tuple[int, MergeRecords]], state: WriteState
) -> None:
    if not merges:
        return
    rows = current_rows(ctx, [a for _, a in merges])
    ready: list[tuple[int, MergeRecords]] = []
    for i, a in merges:
        verdict = check(a, rows)
        if verdict is None:
            ready.append((i, a))
        else:
            state.results[i] = verdict
    if not ready:
        return
    children = moving_children(ctx, [a for _, a in ready])
    ready = write_snapshots(ctx, ready, rows, children, state)
    for batch in in_chunks(ready, MERGE_REQUESTS_PER_CALL):
        ctx.client.check_budget(1)
        requests_ = [
            MergeRequest(a.target.sobject, a.target.id, a.victim_ids, a.master_values)
            for _, a in batch
        ]
        response = send_batch(
            batch,
            state,
            partial(soap_call, ctx.client, "merge", partial(merge_envelope, requests_=requests_)),
        )
        if response is None:
            continue
        try:
            results, usage = parse_merge_response(response.content)
        except SalesforceError as exc:
            for i, a in batch:  # answered, but unreadably: the merges may have happened
                state.results[i] = ActionResult(
                    a.key, Outcome.SENT, error_code=UNKNOWN_OUTCOME, message=exc.message
                )
            continue
        if usage is not None:
            ctx.client.note_usage(usage)
        for pos, (i, a) in enumerate(batch):
            res = results[pos] if pos < len(results) else None
            if res is not None and res.success:
                state.results[i] = ActionResult(
                    a.key,
                    Outcome.APPLIED,
                    sf_id=res.master_id or a.target.id,
                    message=f"merged {', '.join(res.merged_ids or a.victim_ids)}; "
                    f"{len(res.updated_related_ids)} related record(s) moved; "
                    f"undo with: sop-worker undo-merge {a.key}",
                )
            else:
                err = res.errors[0] if res and res.errors else RecordFailure("UNKNOWN_ERROR", "")
                log.error("salesforce.merge_failed", key=a.key, error_code=err.code)
                state.results[i] = ActionResult(
                    a.key, Outcome.FAILED, error_code=err.code, message=err.describe()
                )


def current_rows(ctx: WriteContext, actions: Sequence[MergeRecords]) -> dict[str, dict[str, Any]]:
    """The masters and victims as the org holds them now, recycle bin included, by their
    15-character Id."""
    by_object: dict[str, dict[str, set[str]]] = {}
    for a in actions:
        entry = by_object.setdefault(a.target.sobject, {"ids": set(), "fields": set()})
        entry["ids"].update((a.target.id, *a.victim_ids))
        entry["fields"].update(a.snapshot_fields, a.master_values)
    soqls = []
    for sobject, entry in by_object.items():
        fields = [schema.ID, schema.IS_DELETED, MASTER_RECORD_ID, schema.SYSTEM_MODSTAMP]
        if sobject == schema.LEAD:
            fields.append(schema.IS_CONVERTED)
        fields += sorted(entry["fields"] - set(fields))
        for chunk in in_chunks(sorted(entry["ids"]), IDS_PER_QUERY):
            soqls.append(
                select(Select(sobject, tuple(fields), (Condition(schema.ID, "IN", tuple(chunk)),)))
            )
    return {
        str(row[schema.ID])[:15]: row
        for row in every_row(ctx.client, soqls, all_rows=True, kind="merge")
    }


def check(action: MergeRecords, rows: Mapping[str, Mapping[str, Any]]) -> ActionResult | None:
    """APPLIED when the org shows the merge done, a conflict naming the victim that cannot
    be merged and why, or None: send it."""
    master = action.target.id[:15]
    merged = [
        v
        for v in action.victim_ids
        if (row := rows.get(v[:15])) is not None
        and row.get(schema.IS_DELETED) is True
        and str(row.get(MASTER_RECORD_ID) or "")[:15] == master
    ]
    if len(merged) == len(action.victim_ids):
        return ActionResult(
            action.key,
            Outcome.APPLIED,
            sf_id=action.target.id,
            message=f"already merged: queryAll shows {', '.join(merged)} deleted with "
            f"MasterRecordId {action.target.id}; not sent again",
        )
    for victim in action.victim_ids:
        row = rows.get(victim[:15])
        code, why = None, ""
        if row is None or row.get(schema.IS_DELETED) is True:
            code, why = "ENTITY_IS_DELETED", "was deleted after planning"
        elif row.get(schema.IS_CONVERTED) is True:
            code, why = (
                "LEAD_CONVERTED",
                "was converted after planning (converted leads cannot be merged)",
            )
        if code:
            return ActionResult(
                action.key,
                Outcome.CONFLICT,
                error_code=code,
                message=f"not merged: {action.target.sobject} {victim} {why}; "
                "re-planned next cycle",
            )
    return None


def moving_children(
    ctx: WriteContext, actions: Sequence[MergeRecords]
) -> dict[str, list[dict[str, Any]]]:
    """Victim Id (15 characters) -> the children the merge will move: object, Id, the field
    naming the victim, and what else the snapshot keeps of them."""
    soqls = child_queries(actions)
    specs = {
        (child, field_name): extra
        for a in actions
        for child, field_name, extra in CHILDREN.get(a.target.sobject, ())
    }
    wanted = {v[:15] for a in actions for v in a.victim_ids}
    out: dict[str, list[dict[str, Any]]] = {}
    for row in every_row(ctx.client, soqls, all_rows=False, kind="merge"):
        child = str((row.get("attributes") or {}).get("type") or "")
        for (sobject, field_name), extra in specs.items():
            parent = str(row.get(field_name) or "")[:15]
            if sobject != child or parent not in wanted:
                continue
            item = {"sobject": child, schema.ID: row.get(schema.ID), "field": field_name}
            item.update({name: row.get(name) for name in extra})
            out.setdefault(parent, []).append(item)
    return out


def child_queries(actions: Sequence[MergeRecords]) -> list[str]:
    victims: dict[str, set[str]] = {}
    for a in actions:
        victims.setdefault(a.target.sobject, set()).update(a.victim_ids)
    return [
        select(
            Select(
                child, (schema.ID, field_name, *extra), (Condition(field_name, "IN", tuple(chunk)),)
            )
        )
        for sobject, ids in victims.items()
        for child, field_name, extra in CHILDREN.get(sobject, ())
        for chunk in in_chunks(sorted(ids), IDS_PER_QUERY)
    ]


def snapshot_body(
    action: MergeRecords,
    rows: Mapping[str, Mapping[str, Any]],
    children: Mapping[str, Sequence[Mapping[str, Any]]],
) -> str:
    def values(record_id: str) -> dict[str, Any]:
        row = rows.get(record_id[:15], {})
        return {
            schema.ID: record_id,
            schema.SYSTEM_MODSTAMP: row.get(schema.SYSTEM_MODSTAMP),
            "values": {
                n: row.get(n) for n in sorted({*action.snapshot_fields, *action.master_values})
            },
        }

    body = {
        "version": 1,
        "key": action.key,
        "sobject": action.target.sobject,
        "master": values(action.target.id),
        "master_values": dict(action.master_values),
        "victims": [values(v) for v in action.victim_ids],
        "children": [{**c, "from": v} for v in action.victim_ids for c in children.get(v[:15], ())],
    }
    return json.dumps(body, sort_keys=True, default=str)


def write_snapshots(
    ctx: WriteContext,
    ready: Sequence[tuple[int, MergeRecords]],
    rows: Mapping[str, Mapping[str, Any]],
    children: Mapping[str, Sequence[Mapping[str, Any]]],
    state: WriteState,
) -> list[tuple[int, MergeRecords]]:
    """Upsert each merge's snapshot on its key; the merges whose snapshot is in the org."""
    records: list[tuple[int, MergeRecords, dict[str, Any]]] = []
    for i, a in ready:
        body = snapshot_body(a, rows, children)
        if len(body) > SNAPSHOT_BODY_MAX:
            state.results[i] = ActionResult(
                a.key,
                Outcome.FAILED,
                error_code="SNAPSHOT_TOO_LARGE",
                message=f"the snapshot is {len(body)} characters ({SNAPSHOT_BODY_MAX} at "
                "most): not merged, since the merge could not be undone",
            )
            continue
        records.append(
            (
                i,
                a,
                {
                    "attributes": {"type": SNAPSHOT_OBJECT},
                    SNAPSHOT_KEY: a.key,
                    SNAPSHOT_MASTER: a.target.id,
                    SNAPSHOT_BODY: body,
                },
            )
        )
    written: list[tuple[int, MergeRecords]] = []
    url = ctx.client.data_path(f"composite/sobjects/{SNAPSHOT_OBJECT}/{SNAPSHOT_KEY}")
    for composite in in_chunks(in_chunks(records, COLLECTION_MAX), COLLECTIONS_PER_COMPOSITE):
        ctx.client.check_budget(1)
        subs = [
            SubRequest(
                "PATCH", url, f"s{j}", {"allOrNone": False, "records": [r for *_, r in chunk]}
            )
            for j, chunk in enumerate(composite)
        ]
        try:
            answers = ctx.client.composite(subs, kind="write", idempotent=True)
        except (ApiLimitError, AuthError):
            raise  # the run stops; these merges are not sent
        except SalesforceError as exc:
            for chunk in composite:
                for i, a, _ in chunk:
                    state.results[i] = _unsnapshotted(
                        a, exc.error_code or "SNAPSHOT_FAILED", exc.message
                    )
            state.sent_any = True
            continue
        state.sent_any = True
        for chunk, answer in zip(composite, answers, strict=True):
            items = answer.body if answer.ok and isinstance(answer.body, list) else None
            for pos, (i, a, _) in enumerate(chunk):
                item = items[pos] if items is not None and pos < len(items) else None
                if isinstance(item, Mapping) and item.get("success") is True:
                    written.append((i, a))
                    continue
                if item is None:
                    err = answer.error()
                    code, message = err.error_code or f"HTTP_{answer.status}", err.message
                else:
                    first = (
                        record_errors(item.get("errors")) or (RecordFailure("UNKNOWN_ERROR", ""),)
                    )[0]
                    code, message = first.code, first.describe()
                state.results[i] = _unsnapshotted(a, code, message)
    return written


def _unsnapshotted(action: MergeRecords, code: str, message: str) -> ActionResult:
    log.error("salesforce.merge_snapshot_failed", key=action.key, error_code=code)
    return ActionResult(
        action.key,
        Outcome.FAILED,
        error_code=code,
        message=f"the merge's snapshot ({SNAPSHOT_OBJECT}) was not written ({message}): "
        "not merged, since the merge could not be undone",
    )


def merged(
    ctx: WriteContext, actions: Sequence[tuple[int, MergeRecords]]
) -> dict[int, ActionResult]:
    """For merges whose answer was lost: those the org shows done (queryAll)."""
    if not actions:
        return {}
    rows = current_rows(ctx, [a for _, a in actions])
    out = {}
    for i, a in actions:
        found = check(a, rows)
        if found is not None and found.outcome is Outcome.APPLIED:
            out[i] = ActionResult(
                a.key,
                Outcome.APPLIED,
                sf_id=a.target.id,
                message=f"merged (queryAll: the victims are deleted with MasterRecordId "
                f"{a.target.id}); undo with: sop-worker undo-merge {a.key}",
            )
    return out


def estimate_calls(actions: Sequence[MergeRecords]) -> int:
    """The reads (records, children: five queries a composite), the snapshot upserts and
    the merge calls of these merges."""
    if not actions:
        return 0
    by_object: dict[str, set[str]] = {}
    for a in actions:
        by_object.setdefault(a.target.sobject, set()).update((a.target.id, *a.victim_ids))
    row_queries = sum(math.ceil(len(ids) / IDS_PER_QUERY) for ids in by_object.values())
    return (
        composites_for(row_queries)
        + composites_for(len(child_queries(actions)))
        + math.ceil(len(actions) / (COLLECTION_MAX * COLLECTIONS_PER_COMPOSITE))
        + math.ceil(len(actions) / MERGE_REQUESTS_PER_CALL)
    )
