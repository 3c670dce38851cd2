"""Every error the worker raises on purpose, and what the caller should do about it.

::

    SopWorkerError
    ├── ConfigError               bad settings, mapping or plan file: exit 2, fix the input
    │   ├── MappingError          names the mapping file and the key path
    │   ├── PlanFileError         a plan file that cannot be read or is of another schema
    │   └── StoreError            the database cannot be opened or reached (nothing is lost)
    ├── LockHeldError             another run holds the lease: exit 3, try later
    ├── RecordError               one malformed record: record it, skip it, keep going
    ├── TemplateError             a script/email placeholder has no value: skip that record
    ├── DryRunWriteError          a write reached a sink that cannot write: a bug, fail loudly
    ├── StopRequested             SIGTERM/SIGINT: start nothing new, record the run stopped, exit 4
    └── SalesforceError           an API failure, carrying status, errorCode and message
        ├── RetriableError        transient (timeouts, 5xx, UNABLE_TO_LOCK_ROW): retry with backoff
        ├── AuthError             credentials rejected or session expired without a way to renew
        ├── ApiLimitError         the org's daily allowance is spent or below the reserve: stop cleanly
        └── FatalApiError         permanent for this request (INVALID_FIELD, ...): fail that action only

Errors carry structured fields, never credentials: messages are built from ids, codes and
field names only.
"""

from __future__ import annotations

from collections.abc import Sequence


class SopWorkerError(Exception):
    """Base class of the worker's own errors."""


class ConfigError(SopWorkerError):
    """A setting or mapping value is missing or invalid. The CLI exits 2."""


class MappingError(ConfigError):
    """A mapping file failed validation; ``problems`` lists ``(key path, message)`` pairs."""

    def __init__(self, path: str, problems: Sequence[tuple[str, str]]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = [f"{path}: {key}: {msg}" if key else f"{path}: {msg}" for key, msg in problems]
        super().__init__("invalid mapping file\n  " + "\n  ".join(lines))


class StoreError(ConfigError):
    """The database cannot be opened, read or reached. The CLI exits 2; a run stopped by it
    loses nothing (the ledger changes in whole transactions; what was sent is reconciled)."""


class LockHeldError(SopWorkerError):
    """Another run holds the run lease. The CLI exits 3."""


class RecordError(SopWorkerError):
    """A record's field cannot be read as the rule needs it (a malformed date, say)."""

    def __init__(self, record_id: str, field: str, problem: str) -> None:
        self.record_id = record_id
        self.field = field
        self.problem = problem
        super().__init__(f"record {record_id}: field {field}: {problem}")


class TemplateError(SopWorkerError):
    """A message template needs a value the record does not have."""

    def __init__(self, template: str, placeholder: str, record_id: str | None = None) -> None:
        self.template = template
        self.placeholder = placeholder
        self.record_id = record_id
        where = f" for record {record_id}" if record_id else ""
        super().__init__(
            f"template {template!r}: placeholder {{{placeholder}}} has no value{where}"
        )


class PlanFileError(ConfigError):
    """A plan file cannot be applied: unreadable, or written by another schema version."""


class DryRunWriteError(SopWorkerError):
    """Something tried to write through the dry-run sink. This is always a bug."""


class StopRequested(SopWorkerError):
    """A stop was asked for (SIGTERM, SIGINT): nothing new is started; the next run resumes."""

    def __init__(self, message: str = "stop requested (SIGTERM/SIGINT)") -> None:
        self.message = message
        super().__init__(message)


class SalesforceError(SopWorkerError):
    """A Salesforce API failure with the body's ``errorCode`` when it had one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        fields: Sequence[str] = (),
        url: str | None = None,
    ) -> None:
        self.status = status
        self.error_code = error_code
        self.fields = tuple(fields)
        self.url = url
        self.message = message
        parts = [p for p in (error_code, f"HTTP {status}" if status else None) if p]
        prefix = f"[{', '.join(parts)}] " if parts else ""
        super().__init__(f"{prefix}{message}")


class RetriableError(SalesforceError):
    """Transient: the same request may succeed if sent again after a pause."""


class AuthError(SalesforceError):
    """Authentication failed, or the session expired and cannot be renewed."""


class ApiLimitError(SalesforceError):
    """The org's API allowance is exhausted or below the configured reserve."""


class FatalApiError(SalesforceError):
    """Permanent for this request; sending it again gives the same answer."""
