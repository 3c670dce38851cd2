"""What ``doctor`` finds: one thing wrong (or worth knowing) about an org, with its fix.

Plain data, apart from how it was found (:mod:`worker.salesforce.doctor`), so what shows
findings (:mod:`worker.report`, the CLI) needs nothing of the Salesforce layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class FindingKind(StrEnum):
    SETTINGS = "settings"
    AUTH = "auth"
    API_VERSION = "api_version"
    OBJECT_MISSING = "object_missing"
    OBJECT_NOT_READABLE = "object_not_readable"
    FIELD_MISSING = "field_missing"
    FIELD_NOT_UPDATEABLE = "field_not_updateable"
    KEY_FIELD_NOT_EXTERNAL_ID = "key_field_not_external_id"
    PICKLIST_VALUE_MISSING = "picklist_value_missing"
    PICKLIST_VALUE_INACTIVE = "picklist_value_inactive"
    LEAD_STATUS_NOT_CONVERTED = "lead_status_not_converted"
    DEPRECATED_AUTH = "deprecated_auth"


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth knowing) about the org, with how to fix it."""

    kind: FindingKind
    message: str
    fix: str
    severity: Severity = Severity.ERROR
    sobject: str | None = None
    field: str | None = None
