"""The one table that says what to do with each Salesforce ``errorCode``.

Salesforce answers failures in two places: the HTTP response of a whole request (status +
a JSON array ``[{"message", "errorCode", "fields"}]``) and, inside Collections, Composite
and invocable-action results, one ``errors[]`` entry per record
(``{"statusCode", "message", "fields"}``). Both go through :func:`disposition`, so a code
means the same thing wherever it shows up.

Dispositions (see :class:`Disposition`)::

    RETRY  transient: send the same request / record again after a pause
    FAIL   permanent for this request or record: fail that action, carry on with the rest
    AUTH   the session is invalid: renew it once, else stop with AuthError
    LIMIT  the org's daily allowance is spent: stop the run cleanly, no retry

An unknown code is FAIL: it fails one record, never the run (requirement C.19).

Besides the tree in :mod:`worker.errors` this module adds :class:`UnknownOutcomeError`,
raised when a non-idempotent request (a plain create, an email, a lead conversion) was
sent but its answer was lost: the caller must reconcile, never blindly resend.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests

from worker.errors import (
    ApiLimitError,
    AuthError,
    ConfigError,
    FatalApiError,
    RetriableError,
    SalesforceError,
)


class Disposition(StrEnum):
    RETRY = "retry"
    FAIL = "fail"
    AUTH = "auth"
    LIMIT = "limit"


ERROR_TABLE: Mapping[str, Disposition] = {
    # transient: lock contention, maintenance, overload
    "UNABLE_TO_LOCK_ROW": Disposition.RETRY,
    "SERVER_UNAVAILABLE": Disposition.RETRY,
    "QUERY_TIMEOUT": Disposition.RETRY,
    "REQUEST_RUNNING_TOO_LONG": Disposition.RETRY,
    "UNKNOWN_EXCEPTION": Disposition.RETRY,
    "TXN_SECURITY_METERING_ERROR": Disposition.RETRY,
    # session
    "INVALID_SESSION_ID": Disposition.AUTH,
    "INVALID_AUTH_HEADER": Disposition.AUTH,
    "INVALID_GRANT": Disposition.AUTH,
    "invalid_grant": Disposition.AUTH,
    "invalid_client": Disposition.AUTH,
    "invalid_client_id": Disposition.AUTH,
    "unsupported_grant_type": Disposition.AUTH,
    "API_DISABLED_FOR_ORG": Disposition.AUTH,
    "API_CURRENTLY_DISABLED": Disposition.AUTH,
    # the daily allowance (the concurrent-request flavour is told apart in disposition())
    "REQUEST_LIMIT_EXCEEDED": Disposition.LIMIT,
    # permanent: the same request gets the same answer
    "INVALID_FIELD": Disposition.FAIL,
    "INVALID_FIELD_FOR_INSERT_UPDATE": Disposition.FAIL,
    "FIELD_CUSTOM_VALIDATION_EXCEPTION": Disposition.FAIL,
    "FIELD_INTEGRITY_EXCEPTION": Disposition.FAIL,
    "FIELD_FILTER_VALIDATION_EXCEPTION": Disposition.FAIL,
    "REQUIRED_FIELD_MISSING": Disposition.FAIL,
    "STRING_TOO_LONG": Disposition.FAIL,
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST": Disposition.FAIL,
    "INVALID_TYPE": Disposition.FAIL,
    "INVALID_TYPE_ON_FIELD_IN_RECORD": Disposition.FAIL,
    "MALFORMED_QUERY": Disposition.FAIL,
    "MALFORMED_ID": Disposition.FAIL,
    "INVALID_ID_FIELD": Disposition.FAIL,
    "INVALID_CROSS_REFERENCE_KEY": Disposition.FAIL,
    "INVALID_QUERY_LOCATOR": Disposition.FAIL,
    "INVALID_EMAIL_ADDRESS": Disposition.FAIL,
    "INVALID_STATUS": Disposition.FAIL,
    "INSUFFICIENT_ACCESS_OR_READONLY": Disposition.FAIL,
    "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY": Disposition.FAIL,
    "CANNOT_UPDATE_CONVERTED_LEAD": Disposition.FAIL,
    "ENTITY_IS_DELETED": Disposition.FAIL,
    "ENTITY_IS_LOCKED": Disposition.FAIL,
    "DUPLICATE_VALUE": Disposition.FAIL,
    "DUPLICATE_EXTERNAL_ID": Disposition.FAIL,
    "DUPLICATES_DETECTED": Disposition.FAIL,
    "NOT_FOUND": Disposition.FAIL,
    "JSON_PARSER_ERROR": Disposition.FAIL,
    "METHOD_NOT_ALLOWED": Disposition.FAIL,
    "MISSING_ARGUMENT": Disposition.FAIL,
    "NUMBER_OUTSIDE_VALID_RANGE": Disposition.FAIL,
    "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY": Disposition.FAIL,
    "PROCESSING_HALTED": Disposition.FAIL,
    "ALL_OR_NONE_OPERATION_ROLLED_BACK": Disposition.FAIL,
    "EXCEEDED_ID_LIMIT": Disposition.FAIL,
    "TOO_MANY_ENUM_VALUE": Disposition.FAIL,
}

# HTTP statuses that mean "try again later" even without a Salesforce body.
RETRY_STATUSES = frozenset({420, 429, 500, 502, 503, 504})
# Of those, the ones where the server said it did not process the request. A lost or
# 500/502/504 answer to a non-idempotent request may hide a completed write.
REJECTED_UNPROCESSED_STATUSES = frozenset({420, 429, 503})

UNKNOWN_OUTCOME = "UNKNOWN_OUTCOME"


class UnknownOutcomeError(SalesforceError):
    """A non-idempotent request was sent and its answer lost: it may or may not have taken
    effect. Never resend it blindly; reconcile by querying for its key first."""


def _is_concurrency_limit(message: str) -> bool:
    # Salesforce uses the same errorCode for the daily allowance ("TotalRequests Limit
    # exceeded.") and the long-running concurrent request cap ("ConcurrentPerOrgLongTxn
    # Limit exceeded."); only the message tells them apart, and only the latter clears
    # by itself within seconds.
    lowered = message.lower()
    return "concurrent" in lowered


def disposition(
    error_code: str | None, message: str = "", status: int | None = None
) -> Disposition:
    """What to do about one error: by ``errorCode`` first, then by HTTP status."""
    if error_code == "REQUEST_LIMIT_EXCEEDED":
        return Disposition.RETRY if _is_concurrency_limit(message) else Disposition.LIMIT
    if error_code and error_code in ERROR_TABLE:
        return ERROR_TABLE[error_code]
    if status == 401:
        return Disposition.AUTH
    if status is not None and status in RETRY_STATUSES:
        return Disposition.RETRY
    return Disposition.FAIL


_ERROR_CLASS: Mapping[Disposition, type[SalesforceError]] = {
    Disposition.RETRY: RetriableError,
    Disposition.FAIL: FatalApiError,
    Disposition.AUTH: AuthError,
    Disposition.LIMIT: ApiLimitError,
}


def error_for(
    *,
    status: int | None,
    error_code: str | None,
    message: str,
    fields: Sequence[str] = (),
    url: str | None = None,
) -> SalesforceError:
    """The :mod:`worker.errors` exception for one request-level failure."""
    cls = _ERROR_CLASS[disposition(error_code, message, status)]
    return cls(message, status=status, error_code=error_code, fields=fields, url=url)


@dataclass(frozen=True)
class RecordFailure:
    """One entry of a per-record ``errors[]`` array."""

    code: str
    message: str
    fields: tuple[str, ...] = ()

    @property
    def disposition(self) -> Disposition:
        return disposition(self.code, self.message)

    def describe(self) -> str:
        suffix = f" (fields: {', '.join(self.fields)})" if self.fields else ""
        return f"{self.message}{suffix}"


def record_errors(raw: Any) -> tuple[RecordFailure, ...]:
    """Parse a per-record ``errors`` value (Collections, Composite, invocable actions)."""
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        code = item.get("statusCode") or item.get("errorCode") or "UNKNOWN_ERROR"
        fields = item.get("fields") or ()
        out.append(
            RecordFailure(
                code=str(code),
                message=str(item.get("message") or ""),
                fields=tuple(str(f) for f in fields if isinstance(f, str)),
            )
        )
    return tuple(out)


def parse_error_body(body: Any) -> tuple[str | None, str, tuple[str, ...]]:
    """``(errorCode, message, fields)`` from a REST error body, whatever its shape.

    REST returns ``[{"message", "errorCode", "fields"?}]``; OAuth returns
    ``{"error", "error_description"}``; Bulk API 2.0 sometimes a single object.
    """
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None, "", ()
    if isinstance(body, list) and body and isinstance(body[0], Mapping):
        body = body[0]
    if not isinstance(body, Mapping):
        return None, "", ()
    code = body.get("errorCode") or body.get("statusCode") or body.get("error")
    message = body.get("message") or body.get("error_description") or ""
    fields = body.get("fields") or ()
    return (
        str(code) if code else None,
        str(message),
        tuple(str(f) for f in fields if isinstance(f, str)),
    )


def certificate_rejected(exc: Exception) -> bool:
    """A TLS certificate verification failure (untrusted CA, wrong host): the handshake
    failed before anything was sent."""
    return isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc)


def untrusted_certificate(url: str) -> ConfigError:
    return ConfigError(
        f"TLS: the certificate of {urlsplit(url).netloc} is not trusted (certificate verify "
        "failed); for a private CA set REQUESTS_CA_BUNDLE to its PEM file"
    )
