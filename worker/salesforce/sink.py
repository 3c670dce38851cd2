"""SalesforceSink: every action written once, in as few API calls as possible.

Writes (:meth:`SalesforceSink.write`):

- Record writes are grouped by (sObject, operation) into sObject Collections of at most
  200 records with ``allOrNone: false``, and up to five collections travel in one
  Composite call (``allOrNone: false`` there too): one API call for up to 1,000 records.
  Each per-record result is matched back to its action by position.
- ``UpdateRecord``/``CloseRecord``: ``PATCH composite/sobjects``.
- ``CreateTask`` with the mapping's Task key field: ``PATCH
  composite/sobjects/Task/<KeyField>`` (upsert on the action key): replaying it can never
  make a duplicate. An upsert that matches a Task the org already holds is refused by
  Salesforce (``INVALID_FIELD_FOR_INSERT_UPDATE``: ``TaskSubtype`` is createable, not
  updateable); the refused keys are then looked up (one query per 200) and a Task found is
  that action applied before: APPLIED, left unchanged. This costs nothing in the common
  case (a new Task), where a lookup before every upsert would cost a call per write. Without the field, and for ``AddCaseComment`` (CaseComment takes no
  custom fields), the action key sits in the text as ``[sop-worker <key>]`` and the sink
  first looks for an existing record carrying it (a queryAll on the parents: long text
  cannot be filtered in SOQL) before a plain ``POST composite/sobjects`` create.
- ``SendEmail``: ``POST actions/standard/emailSimple``, many inputs per call, each with
  ``logEmailOnSend`` on its ``log_on_id`` record and the action key marker at the end of
  the body. Salesforce logs the email in the same transaction that sends it: a Task whose
  description holds the body, or with Enhanced Email an EmailMessage whose ``TextBody``
  does. Before sending, the sink looks for that log (like a keyed create): an email found
  there went out already and is not sent again.
- ``ConvertLead``: the SOAP ``convertLead`` call (:mod:`worker.salesforce.soap`).

Idempotent composites (updates, upserts) are sent apart from creating ones, so a lost
answer to the former is simply retried, and a lost answer to the latter marks its actions
``SENT`` (error ``UNKNOWN_OUTCOME``) for :meth:`SalesforceSink.reconcile`, never resent.

Order within one write: creates (CaseComments first), emails, updates and upserts, lead
conversions. The notes of a step go before the change that moves the SOP on (its Task, a
status, a closure): a run that stops between two requests leaves the step visibly undone,
so the rules plan it again next run, and the notes already written are found by their keys.

Per-record ``UNABLE_TO_LOCK_ROW``/``SERVER_UNAVAILABLE`` errors are sent again under the
client's one retry policy; any other record error fails that action only, with its
``errorCode`` and message.

Guards applied before sending (requirement C.27): a Task whose WhoId is a Lead gets no
WhatId; ``ActivityDate`` is written ``YYYY-MM-DD``; ``Subject``/``NextStep`` are cut to 255
characters, ``CommentBody`` to 4,000 bytes (the key marker kept), each noted in the
result's message; a Lead known to be converted is never updated.

API budget: before each batch the client's reserve is checked. If it is reached before
anything was sent, ``write`` raises :class:`~worker.errors.ApiLimitError`; if some batches
already went out, the rest come back ``PLANNED`` with error ``API_LIMIT`` (not sent, plan
them again next run) and the next call raises. A stop (SIGTERM/SIGINT, see the client) is
handled the same way, with error ``STOP_REQUESTED``: no composite starts after it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

import requests
import structlog

from worker import schema
from worker.actions import (
    Action,
    ActionResult,
    AddCaseComment,
    ConvertLead,
    CreateTask,
    Outcome,
    SendEmail,
    StopCause,
    UpdateRecord,
    stop_code,
)
from worker.errors import (
    ApiLimitError,
    AuthError,
    RetriableError,
    SalesforceError,
    StopRequested,
)
from worker.mapping import OrgMapping
from worker.ports import ApiUsage, TargetState
from worker.records import RecordRef, format_sf_datetime, parse_sf_datetime
from worker.rules.kit import key_marker, keys_in_text, with_key_marker
from worker.salesforce.client import (
    AUTO_ASSIGN_HEADER,
    SalesforceClient,
    SubRequest,
    SubResponse,
)
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
    Disposition,
    RecordFailure,
    UnknownOutcomeError,
    record_errors,
)
from worker.salesforce.reads import composites_for, every_row
from worker.salesforce.soap import (
    LeadConvertRequest,
    convert_lead_envelope,
    parse_convert_response,
    soap_error,
    soap_path,
)
from worker.salesforce.soql import AnyOf, Condition, Select, select

log = structlog.get_logger(__name__)
T = TypeVar("T")

COLLECTION_MAX = 200
COLLECTIONS_PER_COMPOSITE = 5
IDS_PER_QUERY = 200  # keeps an IN (...) list well under SOQL's statement length limit
# Neither limit is documented per action; both are kept well inside what the APIs take.
EMAILS_PER_CALL = 100
CONVERTS_PER_CALL = 100
TEXT_255_FIELDS = frozenset({schema.SUBJECT, "NextStep"})
MAX_255 = schema.SUBJECT_MAX_CHARS

CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
# An upsert that matched an existing record and carried a field that can be set on create
# only (TaskSubtype): Salesforce refuses the update. Also the answer when field-level
# security forbids a field, so the key lookup decides which it was.
NOT_UPDATEABLE = "INVALID_FIELD_FOR_INSERT_UPDATE"


class Operation(StrEnum):
    UPDATE = "update"  # PATCH composite/sobjects
    UPSERT = "upsert"  # PATCH composite/sobjects/<Object>/<ExternalIdField>
    CREATE = "create"  # POST composite/sobjects (after a key-marker lookup)

    @property
    def idempotent(self) -> bool:
        return self is not Operation.CREATE


@dataclass(frozen=True)
class PreparedRecord:
    """One action as the record Salesforce will receive, with notes on what guards did."""

    index: int
    action: Action
    sobject: str
    operation: Operation
    record: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()  # where to look for the key marker (CREATE only)

    @property
    def group(self) -> tuple[str, Operation, bool]:
        """Records of one group share a collection: one sObject, one operation, and one
        ``Sforce-Auto-Assign`` value (a subrequest's header covers all its records)."""
        return (self.sobject, self.operation, self.action.auto_assign)


@dataclass
class _WriteState:
    results: list[ActionResult | None]
    sent_any: bool = False
    last_error: dict[int, RecordFailure] = field(default_factory=dict)
    refused_upserts: list[PreparedRecord] = field(default_factory=list)  # see NOT_UPDATEABLE


class SalesforceSink:
    """A :class:`~worker.ports.Sink` over a live org."""

    name = "salesforce"

    def __init__(self, client: SalesforceClient, *, task_key_field: str | OrgMapping = "") -> None:
        self._client = client
        if isinstance(task_key_field, OrgMapping):
            task_key_field = task_key_field.org.task_key_field
        self.task_key_field = task_key_field.strip()
        self._calls = 0
        self._converted: set[str] = set()
        self._stopped: StopCause | None = None

    def api_calls(self) -> int:
        return self._calls

    def usage(self) -> ApiUsage | None:
        return self._client.usage()

    # -- conflict detection -------------------------------------------------------------------
    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        """Each target's SystemModstamp now, with ``IsClosed``/``IsConverted`` where its
        object has them: one query per object and 200 Ids, five queries a call. A target
        missing from the answer is deleted. Converted Leads seen here are remembered, so no
        update is sent to them."""
        before = self._client.api_calls()
        try:
            soqls = [
                select(
                    Select(
                        sobject,
                        (schema.ID, schema.SYSTEM_MODSTAMP, *schema.STATE_FIELDS.get(sobject, ())),
                        (Condition(schema.ID, "IN", tuple(chunk)),),
                    )
                )
                for sobject, ids in _ids_by_object(targets).items()
                for chunk in _chunks(ids, IDS_PER_QUERY)
            ]
            # Salesforce answers with 18-character Ids; a target may hold a 15-character one.
            found: dict[str, TargetState] = {}
            for row in every_row(self._client, soqls, all_rows=False, kind="stamps"):
                rid = str(row.get(schema.ID))
                state = TargetState(
                    row.get(schema.SYSTEM_MODSTAMP),
                    closed=row.get(schema.IS_CLOSED) is True,
                    converted=row.get(schema.IS_CONVERTED) is True,
                )
                if state.converted:
                    self._converted.add(rid)
                found[rid[:15]] = state
            return {t.id: found[t.id[:15]] for t in targets if t.id[:15] in found}
        finally:
            self._calls += self._client.api_calls() - before

    # -- writes ---------------------------------------------------------------------------------
    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        if self._stopped is not None:
            raise self._stopped
        before = self._client.api_calls()
        state = _WriteState(results=[None] * len(actions))
        try:
            self._write(actions, state)
        except (ApiLimitError, AuthError, StopRequested) as exc:
            # The run must stop. If nothing went out, say so by raising; otherwise hand back
            # what was done (the rest still PLANNED) and raise on the next call instead.
            if not state.sent_any:
                raise
            self._stopped = exc
            code = stop_code(exc)
            log.warning("salesforce.write_stopped", reason=code, message=exc.message)
            for i, result in enumerate(state.results):
                if result is None:
                    state.results[i] = ActionResult(
                        actions[i].key, Outcome.PLANNED, error_code=code, message=exc.message
                    )
        finally:
            self._calls += self._client.api_calls() - before
        out = []
        for action, result in zip(actions, state.results, strict=True):
            out.append(
                result
                or ActionResult(
                    action.key, Outcome.FAILED, error_code="NOT_SENT", message="not sent"
                )
            )
        return out

    def _write(self, actions: Sequence[Action], state: _WriteState) -> None:
        records: list[PreparedRecord] = []
        emails: list[tuple[int, SendEmail]] = []
        converts: list[tuple[int, ConvertLead]] = []
        for i, action in enumerate(actions):
            prepared = self.prepare(i, action)
            if isinstance(prepared, ActionResult):
                state.results[i] = prepared
            elif isinstance(prepared, PreparedRecord):
                records.append(prepared)
            elif isinstance(action, SendEmail):
                emails.append((i, action))
            elif isinstance(action, ConvertLead):
                converts.append((i, action))
        creates = [p for p in records if p.operation is Operation.CREATE]
        if creates or emails:
            existing = self._find_keyed(
                [(p.index, p.action, p.sobject, p.parents) for p in creates]
                + [item for i, a in emails for item in _logged_email_lookups(i, a)]
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
        self._send_records([p for p in records if not p.operation.idempotent], state)
        self._send_emails(emails, state)
        self._send_records([p for p in records if p.operation.idempotent], state)
        self._convert_leads(converts, state)

    def prepare(self, index: int, action: Action) -> PreparedRecord | ActionResult | None:
        """The record an action becomes after the guards; an ActionResult when a guard
        refuses it without a call; None for emails and conversions (not records)."""
        try:
            return self._prepare(index, action)
        except ValueError as exc:  # a value Salesforce cannot take (a naive datetime, ...)
            return ActionResult(
                action.key, Outcome.FAILED, error_code="INVALID_VALUE", message=str(exc)
            )

    def _prepare(self, index: int, action: Action) -> PreparedRecord | ActionResult | None:
        if isinstance(action, UpdateRecord):  # CloseRecord included
            return self._prepare_update(index, action)
        if isinstance(action, CreateTask):
            return self._prepare_task(index, action)
        if isinstance(action, AddCaseComment):
            return self._prepare_comment(index, action)
        if isinstance(action, ConvertLead) and action.target.id in self._converted:
            return _converted_lead(action)
        if isinstance(action, SendEmail) and not action.log_on_id:
            return ActionResult(
                action.key,
                Outcome.FAILED,
                error_code="EMAIL_NOT_LOGGED",
                message="an email must be logged on a record (log_on_id), or a lost database "
                "could send it again; not sent",
            )
        if isinstance(action, (SendEmail, ConvertLead)):
            return None
        return ActionResult(
            action.key,
            Outcome.FAILED,
            error_code="UNSUPPORTED_ACTION",
            message=type(action).__name__,
        )

    def _prepare_update(self, index: int, action: UpdateRecord) -> PreparedRecord | ActionResult:
        target = action.target
        if target.sobject == schema.LEAD and target.id in self._converted:
            return _converted_lead(action)
        notes: list[str] = []
        record: dict[str, Any] = {"attributes": {"type": target.sobject}, schema.ID: target.id}
        for name, value in action.values().items():
            if name in (schema.ID, schema.ATTRIBUTES):
                continue
            record[name] = _guard_text(name, _json_value(value), notes)
        return PreparedRecord(index, action, target.sobject, Operation.UPDATE, record, tuple(notes))

    def _prepare_task(self, index: int, action: CreateTask) -> PreparedRecord | ActionResult:
        notes: list[str] = []
        record: dict[str, Any] = {"attributes": {"type": schema.TASK}}
        for name, value in action.fields.items():
            if name not in (schema.ID, schema.ATTRIBUTES):
                record[name] = _json_value(value)
        record[schema.SUBJECT] = _guard_text(schema.SUBJECT, action.subject, notes)
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
        if what and isinstance(who, str) and who.startswith(schema.LEAD_ID_PREFIX):
            # Salesforce rejects a WhatId beside a Lead WhoId (FIELD_INTEGRITY_EXCEPTION).
            record.pop(schema.WHAT_ID, None)
            notes.append("WhatId dropped: the Task's WhoId is a Lead")
            what = None
        elif what:
            record[schema.WHAT_ID] = what
        description = action.description
        if self.task_key_field:
            record[self.task_key_field] = action.key
            operation = Operation.UPSERT
        else:
            description = with_key_marker(description, action.key)
            operation = Operation.CREATE
        record[schema.DESCRIPTION] = _cut_keeping_marker(
            description,
            key_marker(action.key),
            schema.TASK_DESCRIPTION_MAX_CHARS,
            unit="chars",
            notes=notes,
            field_name=schema.DESCRIPTION,
        )
        parents = tuple(p for p in (what, who) if isinstance(p, str) and p)
        return PreparedRecord(index, action, schema.TASK, operation, record, tuple(notes), parents)

    def _prepare_comment(self, index: int, action: AddCaseComment) -> PreparedRecord:
        notes: list[str] = []
        body = _cut_keeping_marker(
            with_key_marker(action.body, action.key),
            key_marker(action.key),
            schema.COMMENT_BODY_MAX_BYTES,
            unit="bytes",
            notes=notes,
            field_name=schema.COMMENT_BODY,
        )
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

    # -- collections in composites ------------------------------------------------------------------
    def _send_records(self, records: Sequence[PreparedRecord], state: _WriteState) -> None:
        pending = list(records)
        if not pending:
            return
        try:
            for attempt in self._client.retrying(kind="records", what="record errors"):
                with attempt:
                    pending = self._send_round(pending, state)
                    if pending:
                        first = state.last_error.get(pending[0].index)
                        raise RetriableError(
                            f"{len(pending)} record(s) hit a transient error",
                            error_code=first.code if first else None,
                        )
        except RetriableError:
            for p in pending:
                err = state.last_error.get(
                    p.index, RecordFailure("UNKNOWN_ERROR", "retries exhausted")
                )
                state.results[p.index] = _failed(p, err.code, err.describe())
        self._settle_refused_upserts(state)

    def _settle_refused_upserts(self, state: _WriteState) -> None:
        """Upserts refused with NOT_UPDATEABLE: a Task the org already holds under the key
        is this action, applied before (two runs racing, a retry after a lost answer, a
        database lost mid-write): a success, and the Task is left as a person may have
        worked it since. Without such a Task the refusal stands (field-level security)."""
        refused, state.refused_upserts = state.refused_upserts, []
        if not refused:
            return
        found = self._tasks_by_key([p.action.key for p in refused])
        for p in refused:
            sf_id = found.get(p.action.key)
            if sf_id:
                state.results[p.index] = ActionResult(
                    p.action.key,
                    Outcome.APPLIED,
                    sf_id=sf_id,
                    message="already in Salesforce (found by its key field); left as it is",
                )
            else:
                err = state.last_error[p.index]
                state.results[p.index] = _failed(p, err.code, err.describe())

    def _send_round(
        self, records: Sequence[PreparedRecord], state: _WriteState
    ) -> list[PreparedRecord]:
        retry: list[PreparedRecord] = []
        for batch in _composites(records):
            self._client.check_budget(1)
            subs = [self._subrequest(j, chunk) for j, chunk in enumerate(batch)]
            idempotent = all(chunk[0].operation.idempotent for chunk in batch)
            try:
                responses = self._client.composite(subs, kind="write", idempotent=idempotent)
            except UnknownOutcomeError as exc:
                state.sent_any = True
                log.warning("salesforce.unknown_outcome", records=sum(map(len, batch)))
                for chunk in batch:
                    for p in chunk:
                        state.results[p.index] = ActionResult(
                            p.action.key,
                            Outcome.SENT,
                            error_code=UNKNOWN_OUTCOME,
                            message=exc.message,
                        )
                continue
            except (ApiLimitError, AuthError):
                raise  # the run stops; state says what was already sent
            except SalesforceError as exc:
                # The whole composite was refused (after the transport's own retries).
                state.sent_any = True
                for chunk in batch:
                    for p in chunk:
                        state.results[p.index] = _failed(
                            p, exc.error_code or f"HTTP_{exc.status or 0}", exc.message
                        )
                continue
            state.sent_any = True
            for chunk, response in zip(batch, responses, strict=True):
                retry.extend(self._apply_results(chunk, response, state))
        return retry

    def _subrequest(self, j: int, chunk: Sequence[PreparedRecord]) -> SubRequest:
        first = chunk[0]
        body = {"allOrNone": False, "records": [p.record for p in chunk]}
        # The client sends Sforce-Auto-Assign: FALSE on every write; a step whose mapping
        # lists it in assignment_rule_steps lets the org's assignment rules run instead.
        headers = {AUTO_ASSIGN_HEADER: "TRUE"} if first.action.auto_assign else {}
        if first.operation is Operation.UPSERT:
            url = self._client.data_path(
                f"composite/sobjects/{first.sobject}/{self.task_key_field}"
            )
            return SubRequest("PATCH", url, f"c{j}", body, headers)
        method = "POST" if first.operation is Operation.CREATE else "PATCH"
        url = self._client.data_path("composite/sobjects")
        return SubRequest(method, url, f"c{j}", body, headers)

    def _apply_results(
        self, chunk: Sequence[PreparedRecord], response: SubResponse, state: _WriteState
    ) -> list[PreparedRecord]:
        retry: list[PreparedRecord] = []
        if not response.ok or not isinstance(response.body, list):
            err = response.error()
            if isinstance(err, ApiLimitError):
                raise err
            code = err.error_code or f"HTTP_{response.status}"
            if isinstance(err, RetriableError):
                for p in chunk:
                    state.last_error[p.index] = RecordFailure(code, err.message)
                return list(chunk)
            for p in chunk:
                state.results[p.index] = _failed(p, code, err.message)
            return []
        if len(response.body) != len(chunk):
            for p in chunk:
                state.results[p.index] = _failed(
                    p, "RESULT_MISMATCH", f"{len(response.body)} results for {len(chunk)} records"
                )
            return []
        for p, item in zip(chunk, response.body, strict=True):
            item = item if isinstance(item, Mapping) else {}
            if item.get("success") is True:
                state.results[p.index] = ActionResult(
                    p.action.key,
                    Outcome.APPLIED,
                    sf_id=str(item.get("id") or "") or None,
                    message="; ".join(p.notes) or None,
                )
                continue
            errors = record_errors(item.get("errors")) or (RecordFailure("UNKNOWN_ERROR", ""),)
            first = errors[0]
            if first.disposition is Disposition.RETRY:
                state.last_error[p.index] = first
                retry.append(p)
            elif p.operation is Operation.UPSERT and first.code == NOT_UPDATEABLE:
                state.last_error[p.index] = first
                state.refused_upserts.append(p)
            else:
                state.results[p.index] = _failed(p, first.code, first.describe())
                if first.code == CONVERTED_LEAD:
                    self._converted.add(p.action.target.id)
        return retry

    @staticmethod
    def _send_batch(
        batch: Sequence[tuple[int, Action]],
        state: _WriteState,
        send: Callable[[], requests.Response],
    ) -> requests.Response | None:
        """Send one email or SOAP batch. If Salesforce refused it, or its answer was lost,
        every action of the batch is marked (FAILED / SENT) and None is returned; running out
        of API reserve or of session stops the run."""
        code: str | None
        try:
            response = send()
        except (ApiLimitError, AuthError):
            raise
        except UnknownOutcomeError as exc:
            outcome, code, message = Outcome.SENT, UNKNOWN_OUTCOME, exc.message
        except SalesforceError as exc:
            outcome, code, message = Outcome.FAILED, exc.error_code, exc.message
        else:
            state.sent_any = True
            return response
        state.sent_any = True
        for i, a in batch:
            state.results[i] = ActionResult(a.key, outcome, error_code=code, message=message)
        return None

    # -- emails ---------------------------------------------------------------------------------
    def _send_emails(self, emails: Sequence[tuple[int, SendEmail]], state: _WriteState) -> None:
        for batch in _chunks(emails, EMAILS_PER_CALL):
            self._client.check_budget(1)
            inputs = [_email_input(a) for _, a in batch]
            response = self._send_batch(
                batch,
                state,
                partial(
                    self._client.request,
                    "POST",
                    self._client.data_path("actions/standard/emailSimple"),
                    kind="email",
                    json={"inputs": inputs},
                    idempotent=False,
                    ok_statuses=frozenset({400}),  # per-input results come back with a 400
                ),
            )
            if response is None:
                continue
            body = _json_or_none(response)
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

    # -- lead conversion -----------------------------------------------------------------------
    def _convert_leads(
        self, converts: Sequence[tuple[int, ConvertLead]], state: _WriteState
    ) -> None:
        path = soap_path(self._client.api_version)
        for batch in _chunks(converts, CONVERTS_PER_CALL):
            self._client.check_budget(1)
            requests_ = [
                LeadConvertRequest(
                    lead_id=a.target.id,
                    converted_status=a.converted_status,
                    create_opportunity=a.create_opportunity,
                    opportunity_name=a.opportunity_name,
                    owner_id=a.owner_id,
                )
                for _, a in batch
            ]
            response = self._send_batch(
                batch,
                state,
                partial(
                    self._client.request,
                    "POST",
                    path,
                    kind="soap",
                    body_factory=partial(convert_lead_envelope, converts=requests_),
                    headers={
                        "Content-Type": "text/xml; charset=UTF-8",
                        "SOAPAction": "convertLead",
                        "Accept": "text/xml",
                    },
                    idempotent=False,
                    error_parser=soap_error,
                ),
            )
            if response is None:
                continue
            try:
                results, usage = parse_convert_response(response.content)
            except SalesforceError as exc:
                # Answered, but unreadably: the conversions may have happened.
                for i, a in batch:
                    state.results[i] = ActionResult(
                        a.key, Outcome.SENT, error_code=UNKNOWN_OUTCOME, message=exc.message
                    )
                continue
            if usage is not None:
                self._client.note_usage(usage)
            follow_ups: list[PreparedRecord] = []
            for pos, (i, a) in enumerate(batch):
                res = results[pos] if pos < len(results) else None
                if res is not None and res.success:
                    self._converted.add(a.target.id)
                    state.results[i] = ActionResult(
                        a.key, Outcome.APPLIED, sf_id=res.opportunity_id or res.account_id
                    )
                    if res.opportunity_id and a.opportunity_values:
                        follow_ups.append(_opportunity_update(i, a, res.opportunity_id))
                else:
                    err = (
                        res.errors[0] if res and res.errors else RecordFailure("UNKNOWN_ERROR", "")
                    )
                    state.results[i] = ActionResult(
                        a.key, Outcome.FAILED, error_code=err.code, message=err.describe()
                    )
            self._set_opportunity_values(follow_ups, state)

    def _set_opportunity_values(
        self, updates: Sequence[PreparedRecord], state: _WriteState
    ) -> None:
        """After conversions: set the mapped fields on the new opportunities. The conversion
        stands whatever happens here; a failure is noted on its (applied) result."""
        if not updates:
            return
        follow = _WriteState(results=[None] * len(state.results))
        self._send_records(updates, follow)
        for p in updates:
            outcome = follow.results[p.index]
            converted = state.results[p.index]
            if converted is None or outcome is None or outcome.outcome is Outcome.APPLIED:
                continue
            note = (
                f"converted, but the new opportunity's fields were not set "
                f"({outcome.error_code}: {outcome.message}); set them by hand"
            )
            log.warning("salesforce.opportunity_values_not_set", key=p.action.key, problem=note)
            state.results[p.index] = dataclasses.replace(converted, message=note)

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        """For actions left ``SENT``: what the org shows. A Task upserted on its key field,
        or created with its key marker, is APPLIED when the org has it; an email when the
        org logged it (a Task or EmailMessage on its ``log_on_id`` record, the key marker in
        the body); an update when the target holds every value it was to write; a
        conversion when the Lead is converted. The others are safe to send again (None): an
        email Salesforce did not log was not sent, since the log is written in the same
        transaction as the send and Salesforce sends only once that transaction commits."""
        before = self._client.api_calls()
        try:
            out: list[ActionResult | None] = [None] * len(actions)
            keyed: list[tuple[int, Action, str, tuple[str, ...]]] = []
            upserted: dict[str, list[int]] = {}
            updates: list[PreparedRecord] = []
            leads: dict[str, list[int]] = {}
            for i, action in enumerate(actions):
                if isinstance(action, CreateTask) and self.task_key_field:
                    upserted.setdefault(action.key, []).append(i)
                elif isinstance(action, UpdateRecord):
                    prepared = self.prepare(i, action)
                    if isinstance(prepared, PreparedRecord):
                        updates.append(prepared)
                elif isinstance(action, CreateTask):
                    parents = tuple(p for p in (action.what_id, action.who_id) if p)
                    keyed.append((i, action, schema.TASK, parents))
                elif isinstance(action, AddCaseComment):
                    keyed.append((i, action, schema.CASE_COMMENT, (action.target.id,)))
                elif isinstance(action, SendEmail) and action.log_on_id:
                    keyed.extend(_logged_email_lookups(i, action))
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
            found = self._find_keyed(keyed)
            for i, sf_id in found.items():
                message = "found by its key marker"
                if isinstance(actions[i], SendEmail):
                    message = "sent: Salesforce logged it (found by its key marker)"
                out[i] = ActionResult(actions[i].key, Outcome.APPLIED, sf_id=sf_id, message=message)
            for key, sf_id in self._tasks_by_key(list(upserted)).items():
                for i in upserted[key]:
                    out[i] = ActionResult(
                        key, Outcome.APPLIED, sf_id=sf_id, message="found by its key field"
                    )
            for p in self._updates_in_place(updates):
                out[p.index] = ActionResult(
                    p.action.key,
                    Outcome.APPLIED,
                    message="the org holds the values it was to write",
                )
            follow_ups: list[PreparedRecord] = []
            converted = self._converted_leads(list(leads)) if leads else {}
            for rid, (sf_id, fresh_opportunity) in converted.items():
                for i in leads.get(rid, []):
                    action = actions[i]
                    message = "lead is converted"
                    if isinstance(action, ConvertLead) and action.opportunity_values:
                        if fresh_opportunity:
                            follow_ups.append(_opportunity_update(i, action, fresh_opportunity))
                        else:
                            message += (
                                "; its opportunity was changed since, so the mapped values "
                                "were not set"
                            )
                    out[i] = ActionResult(action.key, Outcome.APPLIED, sf_id=sf_id, message=message)
            if follow_ups:
                state = _WriteState(results=list(out))
                self._set_opportunity_values(follow_ups, state)
                out = list(state.results)
            return out
        finally:
            self._calls += self._client.api_calls() - before

    def estimate_calls(self, actions: Sequence[Action]) -> int:
        """API calls applying these actions will spend: re-reading every target
        (:meth:`current_state`), then :meth:`estimate_write_calls`."""
        by_object = _ids_by_object([a.target for a in actions])
        queries = sum(math.ceil(len(ids) / IDS_PER_QUERY) for ids in by_object.values())
        return composites_for(queries) + self.estimate_write_calls(actions)

    def estimate_write_calls(self, actions: Sequence[Action]) -> int:
        """API calls :meth:`write` will make (no retries; lookups paged once)."""
        chunks: dict[bool, int] = {True: 0, False: 0}
        counts: dict[tuple[str, Operation, bool], int] = {}
        lookup_parents: dict[str, set[str]] = {}
        emails = 0
        converts: list[ConvertLead] = []
        for i, action in enumerate(actions):
            prepared = self.prepare(i, action)
            if isinstance(prepared, PreparedRecord):
                counts[prepared.group] = counts.get(prepared.group, 0) + 1
                if prepared.operation is Operation.CREATE and prepared.parents:
                    lookup_parents.setdefault(prepared.sobject, set()).update(prepared.parents)
            elif prepared is None and isinstance(action, SendEmail):
                emails += 1
                for _, _, sobject, parents in _logged_email_lookups(i, action):
                    lookup_parents.setdefault(sobject, set()).update(parents)
            elif prepared is None and isinstance(action, ConvertLead):
                converts.append(action)
        for (_, operation, _), n in counts.items():
            chunks[operation.idempotent] += math.ceil(n / COLLECTION_MAX)
        lookups = sum(math.ceil(len(p) / IDS_PER_QUERY) for p in lookup_parents.values())
        return (
            math.ceil(chunks[True] / COLLECTIONS_PER_COMPOSITE)
            + math.ceil(chunks[False] / COLLECTIONS_PER_COMPOSITE)
            + composites_for(lookups)
            + math.ceil(emails / EMAILS_PER_CALL)
            + math.ceil(len(converts) / CONVERTS_PER_CALL)
            # one update composite after each conversion call that sets opportunity fields
            + sum(
                1
                for batch in _chunks(converts, CONVERTS_PER_CALL)
                if any(a.opportunity_values for a in batch)
            )
        )

    # -- lookups ------------------------------------------------------------------------------
    def _find_keyed(
        self, items: Sequence[tuple[int, Action, str, tuple[str, ...]]]
    ) -> dict[int, str]:
        """Index -> id of an existing record (deleted ones included) carrying the action's
        key marker. Long text cannot be filtered in SOQL, so the parents' Tasks, Comments
        or EmailMessages are read and the markers matched here."""
        parents: dict[str, set[str]] = {}
        for _, _, sobject, ps in items:
            parents.setdefault(sobject, set()).update(ps)
        soqls = []
        for sobject, ids in parents.items():
            for chunk in _chunks(sorted(ids), IDS_PER_QUERY):
                soqls.append(_marker_query(sobject, tuple(chunk)))
        if not soqls:
            return {}
        by_key: dict[str, str] = {}
        for row in every_row(self._client, soqls, all_rows=True, kind="lookup"):
            text = (
                row.get(schema.DESCRIPTION)
                or row.get(schema.COMMENT_BODY)
                or row.get(schema.TEXT_BODY)
            )
            for key in keys_in_text(text if isinstance(text, str) else None):
                by_key.setdefault(key, str(row.get(schema.ID)))
        return {i: by_key[a.key] for i, a, _, _ in items if a.key in by_key}

    def _tasks_by_key(self, keys: Sequence[str]) -> dict[str, str]:
        """Action key -> id of the Task (deleted ones included) holding it in the key field."""
        field_name = self.task_key_field
        soqls = [
            select(
                Select(
                    schema.TASK,
                    (schema.ID, field_name),
                    (Condition(field_name, "IN", tuple(chunk)),),
                )
            )
            for chunk in _chunks(list(keys), IDS_PER_QUERY)
        ]
        return {
            str(row.get(field_name)): str(row.get(schema.ID))
            for row in every_row(self._client, soqls, all_rows=True, kind="lookup")
        }

    def _updates_in_place(self, updates: Sequence[PreparedRecord]) -> list[PreparedRecord]:
        """The updates whose target already holds every value the update was to write."""
        by_object: dict[str, list[PreparedRecord]] = {}
        for p in updates:
            by_object.setdefault(p.sobject, []).append(p)
        soqls = []
        for sobject, group in by_object.items():
            names = sorted({n for p in group for n in p.record if n not in _NOT_FIELDS})
            ids = sorted({p.action.target.id for p in group})
            for chunk in _chunks(ids, IDS_PER_QUERY):
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
            for row in every_row(self._client, soqls, all_rows=False, kind="lookup")
        }
        done = []
        for p in updates:
            row = current.get(p.action.target.id[:15])
            if row is not None and all(
                _same(row.get(n), v) for n, v in p.record.items() if n not in _NOT_FIELDS
            ):
                done.append(p)
        return done

    def _converted_leads(self, lead_ids: Sequence[str]) -> dict[str, tuple[str, str | None]]:
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
            for chunk in _chunks(list(lead_ids), IDS_PER_QUERY)
        ]
        out: dict[str, tuple[str, str | None]] = {}
        requested = {rid[:15]: rid for rid in lead_ids}
        for row in every_row(self._client, soqls, all_rows=False, kind="lookup"):
            if row.get(schema.IS_CONVERTED) is True:
                rid = str(row.get(schema.ID))
                self._converted.add(rid)
                opp_id = row.get("ConvertedOpportunityId")
                sf_id = opp_id or row.get("ConvertedAccountId") or rid
                opp = row.get("ConvertedOpportunity")
                untouched = isinstance(opp, Mapping) and opp.get(schema.CREATED_DATE) == opp.get(
                    schema.SYSTEM_MODSTAMP
                )
                out[requested.get(rid[:15], rid)] = (str(sf_id), str(opp_id) if untouched else None)
        return out


# -- helpers -------------------------------------------------------------------------------------
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


def _logged_email_lookups(
    index: int, action: SendEmail
) -> list[tuple[int, Action, str, tuple[str, ...]]]:
    """Where the org logs an email sent with ``logEmailOnSend``: a Task on the record
    (Enhanced Email off) or an EmailMessage related to it (Enhanced Email on)."""
    parents = (action.log_on_id,) if action.log_on_id else ()
    return [(index, action, schema.TASK, parents), (index, action, schema.EMAIL_MESSAGE, parents)]


def _composites(records: Sequence[PreparedRecord]) -> list[list[list[PreparedRecord]]]:
    """Records -> composites (<=5 collections) of chunks (<=200 records of one
    :attr:`PreparedRecord.group`). Idempotent chunks and creating chunks never share a composite; creates go
    first, CaseComments first among them."""
    groups: dict[tuple[str, Operation, bool], list[PreparedRecord]] = {}
    for p in records:
        groups.setdefault(p.group, []).append(p)
    out: list[list[list[PreparedRecord]]] = []
    for idempotent in (False, True):
        chunks = [
            chunk
            for (_, op, _), group in sorted(
                groups.items(), key=lambda kv: kv[0][0] != schema.CASE_COMMENT
            )
            if op.idempotent is idempotent
            for chunk in _chunks(group, COLLECTION_MAX)
        ]
        out.extend(_chunks(chunks, COLLECTIONS_PER_COMPOSITE))
    return out


def _opportunity_update(index: int, action: ConvertLead, opportunity_id: str) -> PreparedRecord:
    record: dict[str, Any] = {"attributes": {"type": schema.OPPORTUNITY}, schema.ID: opportunity_id}
    record.update({k: _json_value(v) for k, v in action.opportunity_values.items()})
    return PreparedRecord(index, action, schema.OPPORTUNITY, Operation.UPDATE, record)


def _ids_by_object(targets: Sequence[RecordRef]) -> dict[str, list[str]]:
    """The targets' distinct Ids per sObject, in first-seen order."""
    out: dict[str, dict[str, None]] = {}
    for target in targets:
        out.setdefault(target.sobject, {})[target.id] = None
    return {sobject: list(ids) for sobject, ids in out.items()}


def _chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _failed(p: PreparedRecord, code: str, message: str) -> ActionResult:
    notes = "; ".join(p.notes)
    text = f"{message} [{notes}]" if notes else message
    return ActionResult(p.action.key, Outcome.FAILED, error_code=code, message=text)


def _converted_lead(action: Action) -> ActionResult:
    return ActionResult(
        action.key,
        Outcome.FAILED,
        error_code=CONVERTED_LEAD,
        message="the Lead is converted; converted Leads cannot be updated (not sent)",
    )


def _guard_text(name: str, value: Any, notes: list[str]) -> Any:
    if name in TEXT_255_FIELDS and isinstance(value, str) and len(value) > MAX_255:
        notes.append(f"{name} truncated from {len(value)} to {MAX_255} characters")
        return value[: MAX_255 - 1] + "…"
    return value


def _cut_keeping_marker(
    text: str, marker: str, limit: int, *, unit: str, notes: list[str], field_name: str
) -> str:
    """Cut ``text`` to ``limit`` (chars or UTF-8 bytes) keeping the key marker at its end."""

    def size(s: str) -> int:
        return len(s.encode()) if unit == "bytes" else len(s)

    if size(text) <= limit:
        return text
    head = text.replace(marker, "").rstrip()
    room = limit - size(marker) - size("…\n\n")
    if unit == "bytes":
        cut = head.encode()[: max(room, 0)].decode(errors="ignore")
    else:
        cut = head[: max(room, 0)]
    notes.append(f"{field_name} truncated to {limit} {unit}")
    return f"{cut}…\n\n{marker}"


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


def _json_value(value: Any) -> Any:
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


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
