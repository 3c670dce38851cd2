"""Reconcile: for actions whose write had an unknown outcome, what the org shows."""

from __future__ import annotations

from collections.abc import Sequence

from worker import schema
from worker.actions import (
    Action,
    ActionResult,
    AddCaseComment,
    ConvertLead,
    CreateTask,
    MergeRecords,
    Outcome,
    SendEmail,
    SubmitApproval,
    UpdateRecord,
)
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
)
from worker.salesforce.writes.approvals import submitted
from worker.salesforce.writes.conversion import opportunity_update, set_opportunity_values
from worker.salesforce.writes.emails import logged_email_lookups
from worker.salesforce.writes.lookups import (
    converted_leads,
    find_keyed,
    tasks_by_key,
    updates_in_place,
)
from worker.salesforce.writes.merges import merged
from worker.salesforce.writes.prepare import prepare
from worker.salesforce.writes.state import PreparedRecord, WriteContext, WriteState


def reconcile(ctx: WriteContext, actions: Sequence[Action]) -> list[ActionResult | None]:
    """For actions left ``SENT``: what the org shows. A Task upserted on its key field,
    or created with its key marker, is APPLIED when the org has it; an email when the
    org logged it (a Task or EmailMessage on its ``log_on_id`` record, the key marker in
    the body); an update when the target holds every value it was to write; a
    conversion when the Lead is converted; a merge when queryAll shows its victims deleted
    with the master as their MasterRecordId; an approval submission when an instance on its
    target carries its key in its first step's comments. The others are safe to send
    again (None): an email Salesforce did not log was not sent, since the log is written
    in the same transaction as the send and Salesforce sends only once that transaction
    commits; a submission is committed with its instance and first step, or not at all; a
    campaign member sent again answers DUPLICATE_VALUE when it was added, which is done."""
    out: list[ActionResult | None] = [None] * len(actions)
    keyed: list[tuple[int, Action, str, tuple[str, ...]]] = []
    upserted: dict[str, list[int]] = {}
    updates: list[PreparedRecord] = []
    leads: dict[str, list[int]] = {}
    submissions: list[tuple[int, SubmitApproval]] = []
    merges: list[tuple[int, MergeRecords]] = []
    for i, action in enumerate(actions):
        if isinstance(action, CreateTask) and ctx.task_key_field:
            upserted.setdefault(action.key, []).append(i)
        elif isinstance(action, UpdateRecord):
            prepared = prepare(ctx, i, action)
            if isinstance(prepared, PreparedRecord):
                updates.append(prepared)
        elif isinstance(action, CreateTask):
            parents = tuple(p for p in (action.what_id, action.who_id) if p)
            keyed.append((i, action, schema.TASK, parents))
        elif isinstance(action, AddCaseComment):
            keyed.append((i, action, schema.CASE_COMMENT, (action.target.id,)))
        elif isinstance(action, SendEmail) and action.log_on_id:
            keyed.extend(logged_email_lookups(i, action))
        elif isinstance(action, SendEmail):
            # Sent unlogged (a plan from before emails were logged): nothing to check.
            out[i] = ActionResult(
                action.key,
                Outcome.SKIPPED,
                error_code=UNKNOWN_OUTCOME,
                message="the email may have been sent and was not logged; not sent "
                "again to avoid a duplicate",
            )
        elif isinstance(action, ConvertLead):
            leads.setdefault(action.target.id, []).append(i)
        elif isinstance(action, SubmitApproval):
            submissions.append((i, action))
        elif isinstance(action, MergeRecords):
            merges.append((i, action))
    for i, result in merged(ctx, merges).items():
        out[i] = result
    found = find_keyed(ctx, keyed)
    for i, sf_id in found.items():
        message = "found by its key marker"
        if isinstance(actions[i], SendEmail):
            message = "sent: Salesforce logged it (found by its key marker)"
        out[i] = ActionResult(actions[i].key, Outcome.APPLIED, sf_id=sf_id, message=message)
    for key, sf_id in tasks_by_key(ctx, list(upserted)).items():
        for i in upserted[key]:
            out[i] = ActionResult(
                key, Outcome.APPLIED, sf_id=sf_id, message="found by its key field"
            )
    for p in updates_in_place(ctx, updates):
        out[p.index] = ActionResult(
            p.action.key,
            Outcome.APPLIED,
            message="the org holds the values it was to write",
        )
    instances = submitted(ctx, [a for _, a in submissions]) if submissions else {}
    for i, a in submissions:
        if a.key in instances:
            out[i] = ActionResult(
                a.key,
                Outcome.APPLIED,
                sf_id=instances[a.key],
                message="submitted: the approval's first step carries its key",
            )
    follow_ups: list[PreparedRecord] = []
    converted = converted_leads(ctx, list(leads)) if leads else {}
    for rid, (sf_id, fresh_opportunity) in converted.items():
        for i in leads.get(rid, []):
            action = actions[i]
            message = "lead is converted"
            if isinstance(action, ConvertLead) and action.opportunity_values:
                if fresh_opportunity:
                    follow_ups.append(opportunity_update(i, action, fresh_opportunity))
                else:
                    message += (
                        "; its opportunity was changed since, so the mapped values were not set"
                    )
            out[i] = ActionResult(action.key, Outcome.APPLIED, sf_id=sf_id, message=message)
    if follow_ups:
        state = WriteState(results=list(out))
        set_opportunity_values(ctx, follow_ups, state)
        out = list(state.results)
    return out
