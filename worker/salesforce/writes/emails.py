"""Emails: ``SendEmail`` actions sent through the standard ``emailSimple`` action, each
logged on its record with the key marker in the body, and where that log is looked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from worker import schema
from worker.actions import (
    Action,
    ActionResult,
    Outcome,
    SendEmail,
)
from worker.keys import (
    with_key_marker,
)
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
    RecordFailure,
    record_errors,
)
from worker.salesforce.writes.state import WriteContext, WriteState, in_chunks, send_batch

EMAILS_PER_CALL = 100


def send_emails(
    ctx: WriteContext, emails: Sequence[tuple[int, SendEmail]], state: WriteState
) -> None:
    for batch in in_chunks(emails, EMAILS_PER_CALL):
        ctx.client.check_budget(1)
        inputs = [_email_input(a) for _, a in batch]
        response = send_batch(
            batch,
            state,
            partial(
                ctx.client.request,
                "POST",
                ctx.client.data_path("actions/standard/emailSimple"),
                kind="email",
                json={"inputs": inputs},
                idempotent=False,
                ok_statuses=frozenset({400}),  # per-input results come back with a 400
            ),
        )
        if response is None:
            continue
        body = json_or_none(response)
        items = body if isinstance(body, list) and len(body) == len(batch) else None
        if items is None and response.status_code < 300:
            # Accepted, but without readable per-input results: sent, outcome unknown.
            for i, a in batch:
                state.results[i] = ActionResult(
                    a.key,
                    Outcome.SENT,
                    error_code=UNKNOWN_OUTCOME,
                    message="emailSimple answered without per-input results",
                )
            continue
        for pos, (i, a) in enumerate(batch):
            item = items[pos] if items is not None else None
            if isinstance(item, Mapping) and item.get("isSuccess") is True:
                state.results[i] = ActionResult(a.key, Outcome.APPLIED)
                continue
            errors = record_errors(item.get("errors") if isinstance(item, Mapping) else body)
            err = errors[0] if errors else RecordFailure(f"HTTP_{response.status_code}", "")
            state.results[i] = ActionResult(
                a.key, Outcome.FAILED, error_code=err.code, message=err.describe()
            )


def logged_email_lookups(
    index: int, action: SendEmail
) -> list[tuple[int, Action, str, tuple[str, ...]]]:
    """Where the org logs an email sent with ``logEmailOnSend``: a Task on the record
    (Enhanced Email off) or an EmailMessage related to it (Enhanced Email on)."""
    parents = (action.log_on_id,) if action.log_on_id else ()
    return [(index, action, schema.TASK, parents), (index, action, schema.EMAIL_MESSAGE, parents)]


def _email_input(action: SendEmail) -> dict[str, Any]:
    """The emailSimple input: logged on ``log_on_id`` (a Task, or an EmailMessage with
    Enhanced Email), the action key at the end of the body so the log carries it."""
    data: dict[str, Any] = {
        "emailAddresses": action.to_address,
        "emailSubject": action.subject,
        "emailBody": with_key_marker(action.body, action.key),
        "logEmailOnSend": True,
        "relatedRecordId": action.log_on_id,
    }
    if action.sender_type:
        data["senderType"] = action.sender_type
    if action.sender_address:
        data["senderAddress"] = action.sender_address
    return data


def json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
