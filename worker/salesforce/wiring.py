"""Builds the live org's source, sink and doctor from ``SF_*`` settings (called by the edge).

A dry run gets a read-only client (the transport refuses writes) behind the dry-run sink,
which still prices the plan with the real sink's call estimate. A refresh token rotated by
Salesforce is kept in the store (see :mod:`worker.salesforce.tokens`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.actions import Outcome
from worker.dryrun import DryRunSink
from worker.errors import ConfigError, SalesforceError
from worker.findings import Finding
from worker.mapping import LoadedMapping
from worker.ports import Sink, Source
from worker.redact import register_secrets
from worker.salesforce.client import SalesforceClient
from worker.salesforce.doctor import run_doctor
from worker.salesforce.settings import SalesforceSettings, check_auth_config, secret_values
from worker.salesforce.sink import SalesforceSink
from worker.salesforce.source import SalesforceSource
from worker.salesforce.tokens import RefreshTokenStore
from worker.settings import settings_error
from worker.store import Store


def load_salesforce_settings() -> SalesforceSettings:
    """The ``SF_*`` settings; their secret values are scrubbed from every output from now on."""
    try:
        settings = SalesforceSettings()
    except ValidationError as exc:
        raise settings_error(exc, "SF_") from None
    register_secrets(secret_values(settings))
    return settings


def _client(
    settings: SalesforceSettings,
    store: Store,
    state_dir: Path | None,
    *,
    read_only: bool,
    stop: threading.Event | None = None,
) -> SalesforceClient:
    tokens = RefreshTokenStore(store, settings.refresh_token, state_dir)
    current = tokens.current()
    if current is not settings.refresh_token:
        settings = settings.model_copy(update={"refresh_token": current})
        register_secrets(secret_values(settings))

    def keep_rotated(token: str) -> None:
        register_secrets([token])
        tokens.save(token)

    return SalesforceClient(
        settings, read_only=read_only, store_refresh_token=keep_rotated, stop=stop
    )


def open_salesforce(
    mapping: LoadedMapping,
    *,
    write: bool,
    store: Store,
    state_dir: Path | None,
    stop: threading.Event,
) -> tuple[Source, Sink]:
    """``state_dir``: where an older version kept a rotated refresh token (moved into the
    store once), None when the store is not a local file."""
    settings = load_salesforce_settings()
    check_auth_config(settings)
    client = _client(settings, store, state_dir, read_only=not write, stop=stop)
    source = SalesforceSource(client, org_name=mapping.common.org.name)
    sink = SalesforceSink(client, task_key_field=mapping.common.org.task_key_field)
    if write:
        return source, sink
    return source, DryRunSink(estimate=sink.estimate_calls, usage=client.usage)


@dataclass(frozen=True)
class DoctorInputs:
    """What the enabled rules need of the org, for :func:`run_doctor`."""

    needs: dict[str, set[str]]  # fields read, per object
    updates: dict[str, set[str]]  # fields updated, per object
    picklists: dict[tuple[str, str], set[str]]  # values used, per (object, field)
    converted_statuses: set[str]  # Lead statuses leads are converted into
    object_fixes: dict[str, str]  # object -> how to fix its absence (a feature to turn on)


def doctor_inputs(mapping: LoadedMapping) -> DoctorInputs:
    """What the enabled rules read, update, compare against and convert into: their
    settings' declarations (:mod:`worker.declarations`)."""
    needs = {k: set(v) for k, v in mapping.object_fields().items()}
    updates: dict[str, set[str]] = {}
    picklists: dict[tuple[str, str], set[str]] = dict(mapping.common.tasks.picklist_values())
    converted: set[str] = set()
    fixes: dict[str, str] = {}
    if "Task" in needs and mapping.common.tasks.due_time_field:
        needs["Task"].add(mapping.common.tasks.due_time_field)
    for rule_id, section in mapping.rules.items():
        if not mapping.enabled(rule_id):
            continue
        for sobject, names in section.writes().items():
            updates.setdefault(sobject, set()).update(names)
        for pair, values in section.picklist_values().items():
            picklists.setdefault(pair, set()).update(values)
        converted |= section.converted_statuses()
        fixes.update(section.object_fixes())
    return DoctorInputs(needs, updates, picklists, converted, fixes)


def check_org(
    mapping: LoadedMapping, *, store: Store, state_dir: Path | None
) -> tuple[list[Finding], int]:
    """Doctor's findings for the live org, and how many fields and values it checked."""
    settings = load_salesforce_settings()
    wanted = doctor_inputs(mapping)
    task_key = mapping.common.org.task_key_field
    try:
        check_auth_config(settings)
    except ConfigError:
        client = None  # run_doctor reports the incomplete settings as its first finding
    else:
        client = _client(settings, store, state_dir, read_only=True)
    findings = run_doctor(
        settings,
        wanted.needs,
        wanted.picklists,
        updates=wanted.updates,
        task_key_field=task_key,
        converted_statuses=wanted.converted_statuses,
        object_fixes=wanted.object_fixes,
        client=client,
    )
    checked = sum(map(len, wanted.needs.values())) + sum(map(len, wanted.picklists.values()))
    return findings, checked


def undo_merge(
    key: str,
    *,
    dry_run: bool,
    store: Store,
    state_dir: Path | None,
    run_id: str,
    clock: Callable[[], dt.datetime],
) -> dict[str, Any]:
    """``sop-worker undo-merge``: the merge's undo, planned from its snapshot in the org and
    (unless ``dry_run``) written as run ``run_id`` (mode ``undo-merge`` in ``runs``), each
    write in the audit under the merge's key; what it did or would do."""
    from worker.salesforce import undo_merge as undo  # only needed for this command
    from worker.salesforce.errors import UnknownOutcomeError

    settings = load_salesforce_settings()
    check_auth_config(settings)
    client = _client(settings, store, state_dir, read_only=dry_run)
    plan = undo.plan_undo(client, key, clock())
    if dry_run:
        return {**plan.to_dict(), "dry_run": True, "api_calls": client.api_calls()}
    store.begin_run(run_id, "undo-merge", clock().date(), clock())
    try:
        undo.apply_undo(client, plan)
    except SalesforceError as exc:
        outcome = Outcome.SENT if isinstance(exc, UnknownOutcomeError) else Outcome.FAILED
        events = undo.audit_events(plan, outcome.value, str(exc), undeleted=bool(plan.done))
        for event in events:
            event["error_code"] = exc.error_code
        store.record_events(run_id, clock(), events)
        store.finish_run(
            run_id, "failed", {"run_id": run_id, "key": key, "error": str(exc)}, clock()
        )
        raise
    store.record_events(
        run_id, clock(), undo.audit_events(plan, Outcome.APPLIED.value, undeleted=True)
    )
    summary = {"run_id": run_id, "key": key, "api_calls": client.api_calls()}
    store.finish_run(run_id, "ok", summary, clock())
    return {**plan.to_dict(), "dry_run": False, "run_id": run_id, "api_calls": client.api_calls()}
