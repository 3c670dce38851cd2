"""Preparation and guards: each action as the record Salesforce will receive, with
Salesforce's field rules applied (:mod:`worker.keys`) and notes on what they changed, or a
result when a guard refuses it without a call.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from worker import schema
from worker.actions import (
    Action,
    ActionResult,
    AddCampaignMember,
    AddCaseComment,
    ConvertLead,
    CreateTask,
    MergeRecords,
    Outcome,
    SendEmail,
    SubmitApproval,
    UpdateRecord,
)
from worker.keys import (
    comment_body,
    cut_keeping_marker,
    cut_text,
    task_what_id,
    with_key_marker,
)
from worker.records import format_sf_datetime
from worker.salesforce.soap import MERGE_MAX_RECORDS, MERGEABLE
from worker.salesforce.soql import identifier
from worker.salesforce.writes.state import Operation, PreparedRecord, WriteContext, converted_lead


def prepare(ctx: WriteContext, index: int, action: Action) -> PreparedRecord | ActionResult | None:
    """The record an action becomes after the guards; an ActionResult when a guard
    refuses it without a call; None for emails, conversions and approval submissions (not
    records)."""
    try:
        return _prepare(ctx, index, action)
    except ValueError as exc:  # a value Salesforce cannot take (a naive datetime, ...)
        return ActionResult(
            action.key, Outcome.FAILED, error_code="INVALID_VALUE", message=str(exc)
        )


def _prepare(ctx: WriteContext, index: int, action: Action) -> PreparedRecord | ActionResult | None:
    if isinstance(action, UpdateRecord):  # CloseRecord included
        return _prepare_update(ctx, index, action)
    if isinstance(action, CreateTask):
        return _prepare_task(ctx, index, action)
    if isinstance(action, AddCaseComment):
        return _prepare_comment(ctx, index, action)
    if isinstance(action, AddCampaignMember):
        return _prepare_member(index, action)
    if isinstance(action, ConvertLead) and action.target.id in ctx.converted:
        return converted_lead(action)
    if isinstance(action, SendEmail) and not action.log_on_id:
        return ActionResult(
            action.key,
            Outcome.FAILED,
            error_code="EMAIL_NOT_LOGGED",
            message="an email must be logged on a record (log_on_id), or a lost database "
            "could send it again; not sent",
        )
    if isinstance(action, MergeRecords) and action.target.sobject not in MERGEABLE:
        return ActionResult(
            action.key,
            Outcome.FAILED,
            error_code="INVALID_TYPE",
            message=f"merge() takes Lead, Contact and Account records, not {action.target.sobject}",
        )
    if isinstance(action, MergeRecords) and not 1 <= len(action.victim_ids) < MERGE_MAX_RECORDS:
        return ActionResult(
            action.key,
            Outcome.FAILED,
            error_code="LIMIT_EXCEEDED",
            message="a merge request takes at most 3 records, the master included",
        )
    if isinstance(action, MergeRecords):
        for name in action.master_values:  # a field of the master, never markup
            if "." in identifier(name):
                raise ValueError(f"not a field of the master: {name!r}")
    if isinstance(action, (SendEmail, ConvertLead, SubmitApproval, MergeRecords)):
        return None
    return ActionResult(
        action.key,
        Outcome.FAILED,
        error_code="UNSUPPORTED_ACTION",
        message=type(action).__name__,
    )


def _prepare_update(
    ctx: WriteContext, index: int, action: UpdateRecord
) -> PreparedRecord | ActionResult:
    target = action.target
    if target.sobject == schema.LEAD and target.id in ctx.converted:
        return converted_lead(action)
    notes: list[str] = []
    record: dict[str, Any] = {"attributes": {"type": target.sobject}, schema.ID: target.id}
    for name, value in action.values().items():
        if name in (schema.ID, schema.ATTRIBUTES):
            continue
        record[name] = cut_text(name, json_value(value), notes)
    return PreparedRecord(index, action, target.sobject, Operation.UPDATE, record, tuple(notes))


def _prepare_task(
    ctx: WriteContext, index: int, action: CreateTask
) -> PreparedRecord | ActionResult:
    notes: list[str] = []
    record: dict[str, Any] = {"attributes": {"type": schema.TASK}}
    for name, value in action.fields.items():
        if name not in (schema.ID, schema.ATTRIBUTES):
            record[name] = json_value(value)
    record[schema.SUBJECT] = cut_text(schema.SUBJECT, action.subject, notes)
    due = _activity_date(record.get(schema.ACTIVITY_DATE, action.due))
    if due is None:
        return ActionResult(
            action.key,
            Outcome.FAILED,
            error_code="INVALID_ACTIVITY_DATE",
            message=f"ActivityDate is not a date: {record.get(schema.ACTIVITY_DATE)!r}",
        )
    record[schema.ACTIVITY_DATE] = due
    if action.owner_id:
        record[schema.OWNER_ID] = action.owner_id
    who = action.who_id or record.get(schema.WHO_ID)
    what = action.what_id or record.get(schema.WHAT_ID)
    if who:
        record[schema.WHO_ID] = who
    if what and task_what_id(who, what) is None:
        record.pop(schema.WHAT_ID, None)
        notes.append("WhatId dropped: the Task's WhoId is a Lead")
        what = None
    elif what:
        record[schema.WHAT_ID] = what
    description = action.description
    if ctx.task_key_field:
        record[ctx.task_key_field] = action.key
        operation = Operation.UPSERT
    else:
        description = with_key_marker(description, action.key)
        operation = Operation.CREATE
    record[schema.DESCRIPTION] = cut_keeping_marker(
        description,
        action.key,
        schema.TASK_DESCRIPTION_MAX_CHARS,
        unit="chars",
        notes=notes,
        field_name=schema.DESCRIPTION,
    )
    parents = tuple(p for p in (what, who) if isinstance(p, str) and p)
    return PreparedRecord(index, action, schema.TASK, operation, record, tuple(notes), parents)


def _prepare_member(index: int, action: AddCampaignMember) -> PreparedRecord:
    person = schema.LEAD_ID if action.member_id.startswith(schema.LEAD_ID_PREFIX) else "ContactId"
    record: dict[str, Any] = {
        "attributes": {"type": schema.CAMPAIGN_MEMBER},
        "CampaignId": action.campaign_id,
        person: action.member_id,
    }
    if action.status:
        record[schema.STATUS] = action.status
    return PreparedRecord(index, action, schema.CAMPAIGN_MEMBER, Operation.CREATE_UNIQUE, record)


def _prepare_comment(ctx: WriteContext, index: int, action: AddCaseComment) -> PreparedRecord:
    notes: list[str] = []
    body = comment_body(action.body, action.key, notes)
    record = {
        "attributes": {"type": schema.CASE_COMMENT},
        schema.PARENT_ID: action.target.id,
        schema.COMMENT_BODY: body,
        schema.IS_PUBLISHED: action.published,
    }
    return PreparedRecord(
        index,
        action,
        schema.CASE_COMMENT,
        Operation.CREATE,
        record,
        tuple(notes),
        (action.target.id,),
    )


def _activity_date(value: Any) -> str | None:
    """``ActivityDate`` as ``YYYY-MM-DD`` (a date field: a time would be rejected)."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            return None
    return None


def json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("datetimes written to Salesforce must be timezone-aware")
        return format_sf_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (tuple, set, frozenset)):
        return ";".join(str(v) for v in value)  # multi-select picklist
    return value
