"""The Salesforce gateway: settings, auth, one HTTP client, and the Source/Sink on top.

::

    settings.py   SF_* settings and the auth-mode check
    auth.py       OAuth flows (JWT, client credentials, refresh, password) and static tokens
    errors.py     the errorCode -> retry/fail/auth/limit table, UnknownOutcomeError
    client.py     requests.Session + timeouts + the one retry policy + API budget
    soql.py       SOQL from checked identifiers and escaped values
    reads.py      queries in composites of five, then nextRecordsUrl pages
    source.py     SalesforceSource: incremental queryAll reads, composite first pages, Bulk 2.0
    sink.py       SalesforceSink: collections in composites, upserts, emails, lead conversion
    soap.py       the partner-API convertLead envelope
    doctor.py     checks an org against what the mapping needs

Typical use::

    settings = SalesforceSettings()
    client = SalesforceClient(settings)
    source = SalesforceSource(client)
    sink = SalesforceSink(client, task_key_field=mapping.common.org.task_key_field)
"""

from __future__ import annotations

from worker.findings import Finding, FindingKind, Severity
from worker.salesforce.client import SalesforceClient
from worker.salesforce.doctor import run_doctor
from worker.salesforce.errors import UnknownOutcomeError
from worker.salesforce.settings import AuthMode, SalesforceSettings, check_auth_config
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource

__all__ = [
    "AuthMode",
    "Finding",
    "FindingKind",
    "SalesforceClient",
    "SalesforceSettings",
    "SalesforceSink",
    "SalesforceSource",
    "Severity",
    "UnknownOutcomeError",
    "check_auth_config",
    "run_doctor",
]
