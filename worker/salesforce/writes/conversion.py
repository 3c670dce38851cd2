"""Lead conversion: ``ConvertLead`` actions over the SOAP ``convertLead`` call, then the
mapped values set on each new opportunity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import structlog

from worker import schema
from worker.actions import (
    ActionResult,
    ConvertLead,
    Outcome,
)
from worker.errors import SalesforceError
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
    RecordFailure,
)
from worker.salesforce.soap import (
    LeadConvertRequest,
    convert_lead_envelope,
    parse_convert_response,
    soap_call,
)
from worker.salesforce.writes.collections import send_records
from worker.salesforce.writes.prepare import json_value
from worker.salesforce.writes.state import (
    Operation,
    PreparedRecord,
    WriteContext,
    WriteState,
    in_chunks,
    send_batch,
)

log = structlog.get_logger(__name__)

CONVERTS_PER_CALL = 100


def convert_leads(
    ctx: WriteContext, converts: Sequence[tuple[int, ConvertLead]], state: WriteState
) -> None:
    for batch in in_chunks(converts, CONVERTS_PER_CALL):
        ctx.client.check_budget(1)
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
        response = send_batch(
            batch,
            state,
            partial(
                soap_call,
                ctx.client,
                "convertLead",
                partial(convert_lead_envelope, converts=requests_),
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
            ctx.client.note_usage(usage)
        follow_ups: list[PreparedRecord] = []
        for pos, (i, a) in enumerate(batch):
            res = results[pos] if pos < len(results) else None
            if res is not None and res.success:
                ctx.converted.add(a.target.id)
                state.results[i] = ActionResult(
                    a.key, Outcome.APPLIED, sf_id=res.opportunity_id or res.account_id
                )
                if res.opportunity_id and a.opportunity_values:
                    follow_ups.append(opportunity_update(i, a, res.opportunity_id))
            else:
                err = res.errors[0] if res and res.errors else RecordFailure("UNKNOWN_ERROR", "")
                state.results[i] = ActionResult(
                    a.key, Outcome.FAILED, error_code=err.code, message=err.describe()
                )
        set_opportunity_values(ctx, follow_ups, state)


def set_opportunity_values(
    ctx: WriteContext, updates: Sequence[PreparedRecord], state: WriteState
) -> None:
    """After conversions: set the mapped fields on the new opportunities. The conversion
    stands whatever happens here; a failure is noted on its (applied) result."""
    if not updates:
        return
    follow = WriteState(results=[None] * len(state.results))
    send_records(ctx, updates, follow)
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


def opportunity_update(index: int, action: ConvertLead, opportunity_id: str) -> PreparedRecord:
    record: dict[str, Any] = {"attributes": {"type": schema.OPPORTUNITY}, schema.ID: opportunity_id}
    record.update({k: json_value(v) for k, v in action.opportunity_values.items()})
    return PreparedRecord(index, action, schema.OPPORTUNITY, Operation.UPDATE, record)
