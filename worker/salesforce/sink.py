"""SalesforceSink: every action written once, in as few API calls as possible.

The class is the :class:`~worker.ports.Sink` port over a live org; its jobs live in
:mod:`worker.salesforce.writes` (one module each).

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
- ``MergeRecords``: a snapshot upserted to ``SOP_Merge_Snapshot__c``, then the SOAP
  ``merge()`` call (:mod:`worker.salesforce.writes.merges`).
- ``AddCampaignMember``: ``POST composite/sobjects`` of a CampaignMember. Salesforce keeps
  one membership per person and campaign and refuses a second with ``DUPLICATE_VALUE``:
  that person is a member already, so the action is APPLIED. That makes the create safe to
  send again, and it travels with the idempotent collections (a lost answer is retried).
- ``SubmitApproval``: ``POST process/approvals`` (actionType ``Submit``), fifty requests a
  call, each answer matched to its record, so a refusal (``NO_APPLICABLE_PROCESS``: the
  record fails the process's entry criteria) fails that action alone; the key marker
  travels in the comments, which Salesforce keeps on the instance's first
  ``ProcessInstanceStep``, where a lost or partial answer is reconciled
  (:mod:`worker.salesforce.writes.approvals`).

Idempotent composites (updates, upserts) are sent apart from creating ones, so a lost
answer to the former is simply retried, and a lost answer to the latter marks its actions
``SENT`` (error ``UNKNOWN_OUTCOME``) for :meth:`SalesforceSink.reconcile`, never resent.

Order within one write: creates (CaseComments first), emails, updates and upserts,
approval submissions, lead conversions, merges. The notes of a step go before the change that
moves the SOP on (its Task, a status, a closure): a run that stops between two requests leaves the step visibly undone,
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

import math
from collections.abc import Mapping, Sequence

import structlog

from worker.actions import Action, ActionResult, Outcome, StopCause, stop_code
from worker.errors import ApiLimitError, AuthError, StopRequested
from worker.mapping import OrgMapping
from worker.ports import ApiUsage, TargetState
from worker.records import RecordRef
from worker.salesforce.client import SalesforceClient
from worker.salesforce.reads import composites_for
from worker.salesforce.writes import apply, lookups, reconcile
from worker.salesforce.writes.state import (
    STAMP_IDS_PER_QUERY,
    WriteContext,
    WriteState,
    ids_by_object,
)

log = structlog.get_logger(__name__)


class SalesforceSink:
    """A :class:`~worker.ports.Sink` over a live org."""

    name = "salesforce"
    dry_run = False

    def __init__(self, client: SalesforceClient, *, task_key_field: str | OrgMapping = "") -> None:
        if isinstance(task_key_field, OrgMapping):
            task_key_field = task_key_field.org.task_key_field
        self._ctx = WriteContext(client, task_key_field.strip())
        self._calls = 0
        self._stopped: StopCause | None = None

    @property
    def task_key_field(self) -> str:
        return self._ctx.task_key_field

    def api_calls(self) -> int:
        return self._calls

    def usage(self) -> ApiUsage | None:
        return self._ctx.client.usage()

    def current_state(self, targets: Sequence[RecordRef]) -> Mapping[str, TargetState]:
        """Each target's SystemModstamp now (see :func:`.lookups.current_state`)."""
        before = self._ctx.client.api_calls()
        try:
            return lookups.current_state(self._ctx, targets)
        finally:
            self._calls += self._ctx.client.api_calls() - before

    def write(self, actions: Sequence[Action]) -> list[ActionResult]:
        if self._stopped is not None:
            raise self._stopped
        before = self._ctx.client.api_calls()
        state = WriteState(results=[None] * len(actions))
        try:
            apply.write_all(self._ctx, actions, state)
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
            self._calls += self._ctx.client.api_calls() - before
        out = []
        for action, result in zip(actions, state.results, strict=True):
            out.append(
                result
                or ActionResult(
                    action.key, Outcome.FAILED, error_code="NOT_SENT", message="not sent"
                )
            )
        return out

    def reconcile(self, actions: Sequence[Action]) -> list[ActionResult | None]:
        """For actions left ``SENT``: what the org shows (see :func:`.reconcile.reconcile`)."""
        before = self._ctx.client.api_calls()
        try:
            return reconcile.reconcile(self._ctx, actions)
        finally:
            self._calls += self._ctx.client.api_calls() - before

    def estimate_calls(self, batches: Sequence[Sequence[Action]]) -> int:
        """API calls applying these actions will spend: re-reading every target once
        (:meth:`current_state`), then :meth:`estimate_write_calls` of each batch, as the
        pipeline hands them to :meth:`write` (each batch's composites round up apart)."""
        by_object = ids_by_object(
            [r for batch in batches for a in batch for r in a.checked_records()]
        )
        queries = sum(math.ceil(len(ids) / STAMP_IDS_PER_QUERY) for ids in by_object.values())
        return composites_for(queries) + sum(self.estimate_write_calls(b) for b in batches)

    def estimate_write_calls(self, actions: Sequence[Action]) -> int:
        """API calls :meth:`write` will make (no retries; lookups paged once)."""
        return apply.estimate_write_calls(self._ctx, actions)
