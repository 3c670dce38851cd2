"""Collections in composites: prepared records sent as sObject Collections (at most 200
records) in Composite calls (at most five collections), results matched back by position,
transient record errors retried, refused upserts settled by their key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from worker import schema
from worker.actions import (
    ActionResult,
    Outcome,
)
from worker.errors import ApiLimitError, AuthError, RetriableError, SalesforceError
from worker.salesforce.client import AUTO_ASSIGN_HEADER, SubRequest, SubResponse
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
    Disposition,
    RecordFailure,
    UnknownOutcomeError,
    record_errors,
)
from worker.salesforce.writes.lookups import tasks_by_key
from worker.salesforce.writes.state import (
    CONVERTED_LEAD,
    DUPLICATE_VALUE,
    NOT_UPDATEABLE,
    Operation,
    PreparedRecord,
    WriteContext,
    WriteState,
    failed,
    in_chunks,
)

log = structlog.get_logger(__name__)

COLLECTION_MAX = 200
COLLECTIONS_PER_COMPOSITE = 5


def send_records(ctx: WriteContext, records: Sequence[PreparedRecord], state: WriteState) -> None:
    """Send ``records`` in waves: Salesforce refuses an Id twice in one list ("Duplicate id
    in list"), so the second update of a record (two rules setting different fields of one
    lead) goes in the wave after the first."""
    for wave in _waves(records):
        _send_wave(ctx, wave, state)
    _settle_refused_upserts(ctx, state)


def _waves(records: Sequence[PreparedRecord]) -> list[list[PreparedRecord]]:
    waves: list[list[PreparedRecord]] = []
    seen: Counter[str] = Counter()
    for p in records:
        record_id = p.record.get(schema.ID)
        wave = 0
        if isinstance(record_id, str) and record_id:
            wave = seen[record_id]
            seen[record_id] += 1
        while len(waves) <= wave:
            waves.append([])
        waves[wave].append(p)
    return waves


def _send_wave(ctx: WriteContext, records: Sequence[PreparedRecord], state: WriteState) -> None:
    pending = list(records)
    if not pending:
        return
    try:
        for attempt in ctx.client.retrying(kind="records", what="record errors"):
            with attempt:
                pending = _send_round(ctx, pending, state)
                if pending:
                    first = state.last_error.get(pending[0].index)
                    raise RetriableError(
                        f"{len(pending)} record(s) hit a transient error",
                        error_code=first.code if first else None,
                    )
    except RetriableError:
        for p in pending:
            err = state.last_error.get(p.index, RecordFailure("UNKNOWN_ERROR", "retries exhausted"))
            state.results[p.index] = failed(p, err.code, err.describe())


def _settle_refused_upserts(ctx: WriteContext, state: WriteState) -> None:
    """Upserts refused with NOT_UPDATEABLE: a Task the org already holds under the key
    is this action, applied before (two runs racing, a retry after a lost answer, a
    database lost mid-write): a success, and the Task is left as a person may have
    worked it since. Without such a Task the refusal stands (field-level security)."""
    refused, state.refused_upserts = state.refused_upserts, []
    if not refused:
        return
    found = tasks_by_key(ctx, [p.action.key for p in refused])
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
            state.results[p.index] = failed(p, err.code, err.describe())


def _send_round(
    ctx: WriteContext, records: Sequence[PreparedRecord], state: WriteState
) -> list[PreparedRecord]:
    retry: list[PreparedRecord] = []
    for batch in _composites(records):
        ctx.client.check_budget(1)
        subs = [_subrequest(ctx, j, chunk) for j, chunk in enumerate(batch)]
        idempotent = all(chunk[0].operation.idempotent for chunk in batch)
        try:
            responses = ctx.client.composite(subs, kind="write", idempotent=idempotent)
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
                    state.results[p.index] = failed(
                        p, exc.error_code or f"HTTP_{exc.status or 0}", exc.message
                    )
            continue
        state.sent_any = True
        for chunk, response in zip(batch, responses, strict=True):
            retry.extend(_apply_results(ctx, chunk, response, state))
    return retry


def _subrequest(ctx: WriteContext, j: int, chunk: Sequence[PreparedRecord]) -> SubRequest:
    first = chunk[0]
    body = {"allOrNone": False, "records": [p.record for p in chunk]}
    # The client sends Sforce-Auto-Assign: FALSE on every write; a step whose mapping
    # lists it in assignment_rule_steps lets the org's assignment rules run instead.
    headers = {AUTO_ASSIGN_HEADER: "TRUE"} if first.action.auto_assign else {}
    if first.operation is Operation.UPSERT:
        url = ctx.client.data_path(f"composite/sobjects/{first.sobject}/{ctx.task_key_field}")
        return SubRequest("PATCH", url, f"c{j}", body, headers)
    creates = (Operation.CREATE, Operation.CREATE_UNIQUE)
    method = "POST" if first.operation in creates else "PATCH"
    url = ctx.client.data_path("composite/sobjects")
    return SubRequest(method, url, f"c{j}", body, headers)


def _apply_results(
    ctx: WriteContext, chunk: Sequence[PreparedRecord], response: SubResponse, state: WriteState
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
            state.results[p.index] = failed(p, code, err.message)
        return []
    if len(response.body) != len(chunk):
        for p in chunk:
            state.results[p.index] = failed(
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
        elif p.operation is Operation.CREATE_UNIQUE and first.code == DUPLICATE_VALUE:
            state.results[p.index] = ActionResult(
                p.action.key,
                Outcome.APPLIED,
                message="already a member of the campaign (DUPLICATE_VALUE); not added again",
            )
        elif p.operation is Operation.UPSERT and first.code == NOT_UPDATEABLE:
            state.last_error[p.index] = first
            state.refused_upserts.append(p)
        else:
            state.results[p.index] = failed(p, first.code, first.describe())
            if first.code == CONVERTED_LEAD:
                ctx.converted.add(p.action.target.id)
    return retry


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
            for chunk in in_chunks(group, COLLECTION_MAX)
        ]
        out.extend(in_chunks(chunks, COLLECTIONS_PER_COMPOSITE))
    return out
