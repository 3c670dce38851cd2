"""Builds the live org's source and sink from ``SF_*`` settings (called by :mod:`worker.app`).

A dry run gets a read-only client (the transport refuses writes) behind the dry-run sink,
which still prices the plan with the real sink's call estimate.
"""

from __future__ import annotations

from pydantic import ValidationError

from worker.mapping import LoadedMapping
from worker.ports import Sink, Source
from worker.salesforce.client import SalesforceClient
from worker.salesforce.settings import SalesforceSettings, check_auth_config
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.settings import settings_error
from worker.sinks import DryRunSink


def load_salesforce_settings() -> SalesforceSettings:
    try:
        settings = SalesforceSettings()
    except ValidationError as exc:
        raise settings_error(exc, "SF_") from None
    check_auth_config(settings)
    return settings


def open_salesforce(mapping: LoadedMapping, *, write: bool) -> tuple[Source, Sink]:
    client = SalesforceClient(load_salesforce_settings(), read_only=not write)
    source = SalesforceSource(client)
    sink = SalesforceSink(client, task_key_field=mapping.common.org.task_key_field)
    if write:
        return source, sink
    return source, DryRunSink(estimate=sink.estimate_calls, usage=client.usage)
