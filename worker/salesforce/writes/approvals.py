"""Approval submissions: ``SubmitApproval`` actions sent to the REST ``process/approvals``
resource, and where a submission is found again (its key marker in the comments Salesforce
keeps on the instance's first ``ProcessInstanceStep``).

Each submission travels alone in its call: Salesforce commits the requests of a call that
succeed and answers the others with an error, and a refused single request comes back as
an HTTP 400 whose error (``NO_APPLICABLE_PROCESS`` when the record does not meet the
process's entry criteria, ``ALREADY_IN_PROCESS`` when it is pending already) then belongs
to that record alone. Approvals are few (a discount or budget changed), so a call each is
cheap; a lost answer is never sent again blind: :func:`submitted` settles it from the org.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

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


def submit_approvals(
    ctx: WriteContext, submissions: Sequence[tuple[int, SubmitApproval]], state: WriteState
) -> None:
    for i, action in submissions:
        ctx.client.check_budget(1)
        response = send_batch(
            [(i, action)],
            state,
            partial(
                ctx.client.request,
                "POST",
                ctx.client.data_path(APPROVALS_PATH),
                kind="approval",
                json={"requests": [_request(action)]},
                idempotent=False,
                ok_statuses=frozenset({400}),  # a refused request: its error is in the body
            ),
        )
        if response is None:
            continue
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
