"""One write in order: guards, the key lookups that keep creates and emails from repeating,
then creates, emails, updates and upserts, approval submissions, lead conversions, merges;
and the API calls that will cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from worker.actions import (
    Action,
    ActionResult,
    ConvertLead,
    MergeRecords,
    Outcome,
    SendEmail,
    SubmitApproval,
)
from worker.salesforce.reads import composites_for
from worker.salesforce.writes.approvals import approval_batches, submit_approvals
from worker.salesforce.writes.collections import (
    COLLECTION_MAX,
    COLLECTIONS_PER_COMPOSITE,
    send_records,
)
from worker.salesforce.writes.conversion import CONVERTS_PER_CALL, convert_leads
from worker.salesforce.writes.emails import EMAILS_PER_CALL, logged_email_lookups, send_emails
from worker.salesforce.writes.lookups import find_keyed
from worker.salesforce.writes.merges import estimate_calls as estimate_merge_calls
from worker.salesforce.writes.merges import merge_records
from worker.salesforce.writes.prepare import prepare
from worker.salesforce.writes.state import (
    IDS_PER_QUERY,
    Operation,
    PreparedRecord,
    WriteContext,
    WriteState,
    in_chunks,
)


def write_all(ctx: WriteContext, actions: Sequence[Action], state: WriteState) -> None:
    """Write ``actions``, each result into ``state`` by position."""
    records: list[PreparedRecord] = []
    emails: list[tuple[int, SendEmail]] = []
    converts: list[tuple[int, ConvertLead]] = []
    submissions: list[tuple[int, SubmitApproval]] = []
    merges: list[tuple[int, MergeRecords]] = []
    for i, action in enumerate(actions):
        prepared = prepare(ctx, i, action)
        if isinstance(prepared, ActionResult):
            state.results[i] = prepared
        elif isinstance(prepared, PreparedRecord):
            records.append(prepared)
        elif isinstance(action, SendEmail):
            emails.append((i, action))
        elif isinstance(action, ConvertLead):
            converts.append((i, action))
        elif isinstance(action, SubmitApproval):
            submissions.append((i, action))
        elif isinstance(action, MergeRecords):
            merges.append((i, action))
    creates = [p for p in records if p.operation is Operation.CREATE]
    if creates or emails:
        existing = find_keyed(
            ctx,
            [(p.index, p.action, p.sobject, p.parents) for p in creates]
            + [item for i, a in emails for item in logged_email_lookups(i, a)],
        )
        for p in creates:
            if p.index in existing:
                state.results[p.index] = ActionResult(
                    p.action.key,
                    Outcome.APPLIED,
                    sf_id=existing[p.index],
                    message="already in Salesforce (found by its key marker); not created again",
                )
        for i, a in emails:
            if i in existing:
                state.results[i] = ActionResult(
                    a.key,
                    Outcome.APPLIED,
                    sf_id=existing[i],
                    message="already sent: Salesforce logged it (found by its key marker); "
                    "not sent again",
                )
        records = [p for p in records if state.results[p.index] is None]
        emails = [(i, a) for i, a in emails if state.results[i] is None]
    # Notes before the state they go with: a run that stops halfway leaves the step
    # visibly undone (no Task, case still open), so the next run plans it again and
    # the notes already written are found by their keys.
    send_records(ctx, [p for p in records if not p.operation.idempotent], state)
    send_emails(ctx, emails, state)
    send_records(ctx, [p for p in records if p.operation.idempotent], state)
    submit_approvals(ctx, submissions, state)
    convert_leads(ctx, converts, state)
    merge_records(ctx, merges, state)


def estimate_write_calls(ctx: WriteContext, actions: Sequence[Action]) -> int:
    """API calls :func:`write_all` will make (no retries; lookups paged once)."""
    chunks: dict[bool, int] = {True: 0, False: 0}
    counts: dict[tuple[str, Operation, bool], int] = {}
    lookup_parents: dict[str, set[str]] = {}
    emails = 0
    submissions: list[tuple[int, SubmitApproval]] = []
    converts: list[ConvertLead] = []
    merges: list[MergeRecords] = []
    for i, action in enumerate(actions):
        prepared = prepare(ctx, i, action)
        if isinstance(prepared, PreparedRecord):
            counts[prepared.group] = counts.get(prepared.group, 0) + 1
            if prepared.operation is Operation.CREATE and prepared.parents:
                lookup_parents.setdefault(prepared.sobject, set()).update(prepared.parents)
        elif prepared is None and isinstance(action, SendEmail):
            emails += 1
            for _, _, sobject, parents in logged_email_lookups(i, action):
                lookup_parents.setdefault(sobject, set()).update(parents)
        elif prepared is None and isinstance(action, ConvertLead):
            converts.append(action)
        elif prepared is None and isinstance(action, SubmitApproval):
            submissions.append((i, action))
        elif prepared is None and isinstance(action, MergeRecords):
            merges.append(action)
    for (_, operation, _), n in counts.items():
        chunks[operation.idempotent] += math.ceil(n / COLLECTION_MAX)
    lookups = sum(math.ceil(len(p) / IDS_PER_QUERY) for p in lookup_parents.values())
    return (
        math.ceil(chunks[True] / COLLECTIONS_PER_COMPOSITE)
        + math.ceil(chunks[False] / COLLECTIONS_PER_COMPOSITE)
        + composites_for(lookups)
        + math.ceil(emails / EMAILS_PER_CALL)
        + len(approval_batches(submissions))
        + math.ceil(len(converts) / CONVERTS_PER_CALL)
        + estimate_merge_calls(merges)
        # one update composite after each conversion call that sets opportunity fields
        + sum(
            1
            for batch in in_chunks(converts, CONVERTS_PER_CALL)
            if any(a.opportunity_values for a in batch)
        )
    )
