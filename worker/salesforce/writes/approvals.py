"""Approval submissions: ``SubmitApproval`` actions sent to the REST ``process/approvals``
resource, and where a submission is found again (its key marker in the comments Salesforce
keeps on the instance's first ``ProcessInstanceStep``).

Submissions travel up to :data:`APPROVALS_PER_CALL` in one call ("bulk approvals"), each
record at most once per call. Salesforce commits the requests that succeed and answers the
others with an error (``NO_APPLICABLE_PROCESS`` when the record does not meet the process's
entry criteria, ``ALREADY_IN_PROCESS`` when it is pending already); its answers need not
come in the order of the requests, so each is matched to its request by ``entityId``, the
record. A submission the answer does not account for (a whole call refused with HTTP 400,
an answer without the record's Id) is looked up in the org (:func:`submitted`, its key
marker on the instance's first step): found, it is applied; not there, it was not
committed, and it is sent again alone, where a refusal is an HTTP 400 whose error belongs to
that record. A lost answer is never sent again blind: :func:`submitted` settles it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

from worker import schema
from worker.actions import ActionResult, Outcome, SubmitApproval
from worker.keys import keys_in_text
from worker.salesforce.errors import UNKNOWN_OUTCOME, RecordFailure, record_errors
from worker.salesforce.reads import every_row
from worker.salesforce.soql import Condition, Select, select
from worker.salesforce.writes.emails import json_or_none
from worker.salesforce.writes.state import (
    IDS_PER_QUERY,
    WriteContext,
    WriteState,
    in_chunks,
    send_batch,
)

APPROVALS_PATH = "process/approvals"
# The resource documents no maximum; a call of fifty stays well inside the request size and
# the transaction's limits with the approval processes' own actions.
APPROVALS_PER_CALL = 50

T = TypeVar("T")


def approval_batches(
    submissions: Sequence[tuple[T, SubmitApproval]],
) -> list[list[tuple[T, SubmitApproval]]]:
    """The calls the submissions go in: in order, at most :data:`APPROVALS_PER_CALL` each,
    and a record at most once per call (its answer is found by the record's Id)."""
    batches: list[list[tuple[T, SubmitApproval]]] = []
    targets: list[set[str]] = []
    for item in submissions:
        target = item[1].target.id[:15]
        for batch, seen in zip(batches, targets, strict=True):
            if len(batch) < APPROVALS_PER_CALL and target not in seen:
                break
        else:
            batch, seen = [], set()
            batches.append(batch)
            targets.append(seen)
        batch.append(item)
        seen.add(target)
    return batches


def submit_approvals(
    ctx: WriteContext, submissions: Sequence[tuple[int, SubmitApproval]], state: WriteState
) -> None:
    for batch in approval_batches(submissions):
        ctx.client.check_budget(1)
        response = send_batch(batch, state, partial(_send, ctx, batch))
        if response is None:
            continue
        body = json_or_none(response)
        if len(batch) == 1:
            i, action = batch[0]
            state.results[i] = _result(action, response.status_code, body)
            continue
        answers = _by_record(body) if response.status_code < 300 else {}
        unaccounted: list[tuple[int, SubmitApproval]] = []
        for i, action in batch:
            item = answers.get(action.target.id[:15])
            if item is None:
                unaccounted.append((i, action))
            else:
                state.results[i] = _result(action, response.status_code, [item])
        if unaccounted:
            _settle_or_resend(ctx, unaccounted, state)


def _send(ctx: WriteContext, batch: Sequence[tuple[int, SubmitApproval]]) -> Any:
    return ctx.client.request(
        "POST",
        ctx.client.data_path(APPROVALS_PATH),
        kind="approval",
        json={"requests": [_request(action) for _, action in batch]},
        idempotent=False,
        ok_statuses=frozenset({400}),  # refused: the error is in the body
    )


def _by_record(body: Any) -> dict[str, Mapping[str, Any]]:
    """The answers of a bulk call by the 15-character Id of the record each names."""
    items = body if isinstance(body, list) else []
    return {
        str(item["entityId"])[:15]: item
        for item in items
        if isinstance(item, Mapping) and item.get("entityId")
    }


def _settle_or_resend(
    ctx: WriteContext, batch: Sequence[tuple[int, SubmitApproval]], state: WriteState
) -> None:
    """Submissions a bulk answer did not account for: applied when the org shows their
    instance, else (not committed) sent again, alone."""
    instances = submitted(ctx, [action for _, action in batch])
    again: list[tuple[int, SubmitApproval]] = []
    for i, action in batch:
        instance = instances.get(action.key)
        if instance is None:
            again.append((i, action))
        else:
            state.results[i] = ActionResult(
                action.key, Outcome.APPLIED, sf_id=instance, message="approval submitted"
            )
    for i, action in again:
        ctx.client.check_budget(1)
        response = send_batch([(i, action)], state, partial(_send, ctx, [(i, action)]))
        if response is not None:
            state.results[i] = _result(action, response.status_code, json_or_none(response))


def submitted(ctx: WriteContext, actions: Sequence[SubmitApproval]) -> dict[str, str]:
    """Action key -> the ProcessInstance its submission started, for the submissions the org
    shows: the instances on the actions' targets, then their steps' comments, where each
    submission's key marker is. Two queries per 200 targets."""
    targets = sorted({a.target.id for a in actions})
    wanted = {a.key for a in actions}
    instances: list[str] = []
    soqls = [
        select(
            Select(
                schema.PROCESS_INSTANCE,
                (schema.ID, schema.TARGET_OBJECT_ID),
                (Condition(schema.TARGET_OBJECT_ID, "IN", tuple(chunk)),),
            )
        )
        for chunk in in_chunks(targets, IDS_PER_QUERY)
    ]
    for row in every_row(ctx.client, soqls, all_rows=False, kind="lookup"):
        instances.append(str(row.get(schema.ID)))
    if not instances:
        return {}
    soqls = [
        select(
            Select(
                schema.PROCESS_INSTANCE_STEP,
                (schema.ID, schema.PROCESS_INSTANCE_ID, schema.COMMENTS),
                (Condition(schema.PROCESS_INSTANCE_ID, "IN", tuple(chunk)),),
            )
        )
        for chunk in in_chunks(instances, IDS_PER_QUERY)
    ]
    found: dict[str, str] = {}
    for row in every_row(ctx.client, soqls, all_rows=False, kind="lookup"):
        for key in keys_in_text(str(row.get(schema.COMMENTS) or "")):
            if key in wanted:
                found[key] = str(row.get(schema.PROCESS_INSTANCE_ID))
    return found


def _request(action: SubmitApproval) -> dict[str, Any]:
    request: dict[str, Any] = {
        "actionType": "Submit",
        "contextId": action.target.id,
        "comments": action.comments,
        "processDefinitionNameOrId": action.process,
        "skipEntryCriteria": False,
    }
    if action.approver_ids:
        request["nextApproverIds"] = list(action.approver_ids)
    if action.submitter_id:
        request["contextActorId"] = action.submitter_id
    return request


def _result(action: SubmitApproval, status: int, body: Any) -> ActionResult:
    item = body[0] if isinstance(body, list) and len(body) == 1 else None
    if status < 300 and isinstance(item, Mapping) and item.get("success") is True:
        return ActionResult(
            action.key,
            Outcome.APPLIED,
            sf_id=str(item.get("instanceId") or "") or None,
            message=f"approval {item.get('instanceStatus') or 'submitted'}",
        )
    if status < 300 and not isinstance(item, Mapping):
        return ActionResult(
            action.key,
            Outcome.SENT,
            error_code=UNKNOWN_OUTCOME,
            message="process/approvals answered without a result for the request",
        )
    raw = item.get("errors") if isinstance(item, Mapping) and "success" in item else body
    errors = record_errors(raw)
    err = errors[0] if errors else RecordFailure(f"HTTP_{status}", "")
    return ActionResult(action.key, Outcome.FAILED, error_code=err.code, message=err.describe())
