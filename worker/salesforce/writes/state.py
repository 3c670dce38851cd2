"""What the write jobs share: the context, prepared records and their operations, the
state of one write, and the small helpers every job uses (chunks, failed results, sending
one email or SOAP batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import requests

from worker.actions import (
    Action,
    ActionResult,
    Outcome,
)
from worker.errors import ApiLimitError, AuthError, SalesforceError
from worker.records import RecordRef
from worker.salesforce.client import SalesforceClient
from worker.salesforce.errors import (
    UNKNOWN_OUTCOME,
    RecordFailure,
    UnknownOutcomeError,
)

T = TypeVar("T")

IDS_PER_QUERY = 200  # keeps an IN (...) list well under SOQL's statement length limit
# The targets' stamps re-read before a write: 800 Ids (about 17,000 characters) per query,
# sent in a Composite body, so past the 16,384-byte URI limit of a plain GET and well under
# SOQL's 100,000 characters; its rows (Id, stamp, two flags) fit one 2,000-row page.
STAMP_IDS_PER_QUERY = 800

CONVERTED_LEAD = "CANNOT_UPDATE_CONVERTED_LEAD"
# An upsert that matched an existing record and carried a field that can be set on create
# only (TaskSubtype): Salesforce refuses the update. Also the answer when field-level
# security forbids a field, so the key lookup decides which it was.
NOT_UPDATEABLE = "INVALID_FIELD_FOR_INSERT_UPDATE"
# A CampaignMember create for a person already a member of the campaign.
DUPLICATE_VALUE = "DUPLICATE_VALUE"


class Operation(StrEnum):
    UPDATE = "update"  # PATCH composite/sobjects
    UPSERT = "upsert"  # PATCH composite/sobjects/<Object>/<ExternalIdField>
    CREATE = "create"  # POST composite/sobjects (after a key-marker lookup)
    # POST composite/sobjects of a record Salesforce keeps unique (a CampaignMember): a
    # repeat answers DUPLICATE_VALUE, which is the action done, so it is safe to resend.
    CREATE_UNIQUE = "create_unique"

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
class WriteState:
    results: list[ActionResult | None]
    sent_any: bool = False
    last_error: dict[int, RecordFailure] = field(default_factory=dict)
    refused_upserts: list[PreparedRecord] = field(default_factory=list)  # see NOT_UPDATEABLE


@dataclass
class WriteContext:
    """What every job of the sink shares: the client, the mapping's Task key field (empty:
    keys travel as text markers), and the Leads known to be converted."""

    client: SalesforceClient
    task_key_field: str = ""
    converted: set[str] = field(default_factory=set)


def send_batch(
    batch: Sequence[tuple[int, Action]],
    state: WriteState,
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


def ids_by_object(targets: Sequence[RecordRef]) -> dict[str, list[str]]:
    """The targets' distinct Ids per sObject, in first-seen order."""
    out: dict[str, dict[str, None]] = {}
    for target in targets:
        out.setdefault(target.sobject, {})[target.id] = None
    return {sobject: list(ids) for sobject, ids in out.items()}


def in_chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def failed(p: PreparedRecord, code: str, message: str) -> ActionResult:
    notes = "; ".join(p.notes)
    text = f"{message} [{notes}]" if notes else message
    return ActionResult(p.action.key, Outcome.FAILED, error_code=code, message=text)


def converted_lead(action: Action) -> ActionResult:
    return ActionResult(
        action.key,
        Outcome.FAILED,
        error_code=CONVERTED_LEAD,
        message="the Lead is converted; converted Leads cannot be updated (not sent)",
    )
