"""Lookups: what the org holds now (targets' stamps, records carrying an action's key in
its key field or text marker, updates already in place, converted Leads), read in batched
queries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from worker import schema
from worker.actions import (
    Action,
)
from worker.keys import (
    keys_in_text,
)
from worker.ports import TargetState
from worker.records import RecordRef, parse_sf_datetime
from worker.salesforce.reads import every_row
from worker.salesforce.soql import AnyOf, Condition, Select, select
from worker.salesforce.writes.state import (
    IDS_PER_QUERY,
    STAMP_IDS_PER_QUERY,
    PreparedRecord,
    WriteContext,
    ids_by_object,
    in_chunks,
)


def current_state(ctx: WriteContext, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
    """Each target's SystemModstamp now, with ``IsClosed``/``IsConverted`` where its
    object has them: one query per object and :data:`STAMP_IDS_PER_QUERY` Ids, five
    queries a call. A target missing from the answer is deleted. Converted Leads seen here
    are remembered, so no update is sent to them."""
    soqls = [
        select(
            Select(
                sobject,
                (schema.ID, schema.SYSTEM_MODSTAMP, *schema.STATE_FIELDS.get(sobject, ())),
                (Condition(schema.ID, "IN", tuple(chunk)),),
            )
        )
        for sobject, ids in ids_by_object(targets).items()
        for chunk in in_chunks(ids, STAMP_IDS_PER_QUERY)
    ]
    # Salesforce answers with 18-character Ids; a target may hold a 15-character one.
    found: dict[str, TargetState] = {}
    for row in every_row(ctx.client, soqls, all_rows=False, kind="stamps"):
        rid = str(row.get(schema.ID))
        state = TargetState(
            row.get(schema.SYSTEM_MODSTAMP),
            closed=row.get(schema.IS_CLOSED) is True,
            converted=row.get(schema.IS_CONVERTED) is True,
        )
        if state.converted:
            ctx.converted.add(rid)
        found[rid[:15]] = state
    return {t.id: found[t.id[:15]] for t in targets if t.id[:15] in found}


def find_keyed(
    ctx: WriteContext, items: Sequence[tuple[int, Action, str, tuple[str, ...]]]
) -> dict[int, str]:
    """Index -> id of an existing record (deleted ones included) carrying the action's
    key marker. Long text cannot be filtered in SOQL, so the parents' Tasks, Comments
    or EmailMessages are read and the markers matched here."""
    parents: dict[str, set[str]] = {}
    for _, _, sobject, ps in items:
        parents.setdefault(sobject, set()).update(ps)
    soqls = []
    for sobject, ids in parents.items():
        for chunk in in_chunks(sorted(ids), IDS_PER_QUERY):
            soqls.append(_marker_query(sobject, tuple(chunk)))
    if not soqls:
        return {}
    by_key: dict[str, str] = {}
    for row in every_row(ctx.client, soqls, all_rows=True, kind="lookup"):
        text = (
            row.get(schema.DESCRIPTION) or row.get(schema.COMMENT_BODY) or row.get(schema.TEXT_BODY)
        )
        for key in keys_in_text(text if isinstance(text, str) else None):
            by_key.setdefault(key, str(row.get(schema.ID)))
    return {i: by_key[a.key] for i, a, _, _ in items if a.key in by_key}


def tasks_by_key(ctx: WriteContext, keys: Sequence[str]) -> dict[str, str]:
    """Action key -> id of the Task (deleted ones included) holding it in the key field."""
    field_name = ctx.task_key_field
    soqls = [
        select(
            Select(
                schema.TASK,
                (schema.ID, field_name),
                (Condition(field_name, "IN", tuple(chunk)),),
            )
        )
        for chunk in in_chunks(list(keys), IDS_PER_QUERY)
    ]
    return {
        str(row.get(field_name)): str(row.get(schema.ID))
        for row in every_row(ctx.client, soqls, all_rows=True, kind="lookup")
    }


def updates_in_place(ctx: WriteContext, updates: Sequence[PreparedRecord]) -> list[PreparedRecord]:
    """The updates whose target already holds every value the update was to write."""
    by_object: dict[str, list[PreparedRecord]] = {}
    for p in updates:
        by_object.setdefault(p.sobject, []).append(p)
    soqls = []
    for sobject, group in by_object.items():
        names = sorted({n for p in group for n in p.record if n not in _NOT_FIELDS})
        ids = sorted({p.action.target.id for p in group})
        for chunk in in_chunks(ids, IDS_PER_QUERY):
            soqls.append(
                select(
                    Select(
                        sobject,
                        (schema.ID, *names),
                        (Condition(schema.ID, "IN", tuple(chunk)),),
                    )
                )
            )
    if not soqls:
        return []
    current = {
        str(row.get(schema.ID))[:15]: row
        for row in every_row(ctx.client, soqls, all_rows=False, kind="lookup")
    }
    done = []
    for p in updates:
        row = current.get(p.action.target.id[:15])
        if row is not None and all(
            _same(row.get(n), v) for n, v in p.record.items() if n not in _NOT_FIELDS
        ):
            done.append(p)
    return done


def converted_leads(
    ctx: WriteContext, lead_ids: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """Lead id -> (the id a conversion answers with, the new opportunity's id if no one
    has changed it since it was created) for the converted ones."""
    fields = (
        schema.ID,
        schema.IS_CONVERTED,
        "ConvertedOpportunityId",
        "ConvertedAccountId",
        "ConvertedOpportunity.CreatedDate",
        "ConvertedOpportunity.SystemModstamp",
    )
    soqls = [
        select(Select(schema.LEAD, fields, (Condition(schema.ID, "IN", tuple(chunk)),)))
        for chunk in in_chunks(list(lead_ids), IDS_PER_QUERY)
    ]
    out: dict[str, tuple[str, str | None]] = {}
    requested = {rid[:15]: rid for rid in lead_ids}
    for row in every_row(ctx.client, soqls, all_rows=False, kind="lookup"):
        if row.get(schema.IS_CONVERTED) is True:
            rid = str(row.get(schema.ID))
            ctx.converted.add(rid)
            opp_id = row.get("ConvertedOpportunityId")
            sf_id = opp_id or row.get("ConvertedAccountId") or rid
            opp = row.get("ConvertedOpportunity")
            untouched = isinstance(opp, Mapping) and opp.get(schema.CREATED_DATE) == opp.get(
                schema.SYSTEM_MODSTAMP
            )
            out[requested.get(rid[:15], rid)] = (str(sf_id), str(opp_id) if untouched else None)
    return out


def _marker_query(sobject: str, parent_ids: tuple[str, ...]) -> str:
    if sobject == schema.TASK:
        return select(
            Select(
                schema.TASK,
                (schema.ID, schema.DESCRIPTION),
                (
                    AnyOf(
                        (
                            Condition(schema.WHAT_ID, "IN", parent_ids),
                            Condition(schema.WHO_ID, "IN", parent_ids),
                        )
                    ),
                ),
            )
        )
    if sobject == schema.EMAIL_MESSAGE:
        return select(
            Select(
                schema.EMAIL_MESSAGE,
                (schema.ID, schema.TEXT_BODY),
                (Condition(schema.RELATED_TO_ID, "IN", parent_ids),),
            )
        )
    return select(
        Select(
            schema.CASE_COMMENT,
            (schema.ID, schema.COMMENT_BODY),
            (Condition(schema.PARENT_ID, "IN", parent_ids),),
        )
    )


_NOT_FIELDS = frozenset({schema.ID, schema.ATTRIBUTES})


def _same(current: Any, sent: Any) -> bool:
    """Does a value read back from the org equal the JSON value that was sent?"""
    if current in (None, "") or sent in (None, ""):
        return current in (None, "") and sent in (None, "")
    if isinstance(sent, bool) or isinstance(current, bool):
        return current is sent
    if isinstance(sent, (int, float)) and isinstance(current, (int, float)):
        return math.isclose(current, sent, rel_tol=1e-9)
    if isinstance(sent, str) and isinstance(current, str) and "T" in sent and sent[:4].isdigit():
        try:
            return parse_sf_datetime(current) == parse_sf_datetime(sent)
        except ValueError:
            return current == sent
    return bool(current == sent)
