"""The edge: turns settings into a wired pipeline (store, mapping, rules, source, sink, clock).

The only module that decides between the live org and a local org, and between writing and
dry run. Everything it builds is handed down; nothing below reads settings or the clock.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from worker.dryrun import CacheOnlySource, DryRunSink, ReadOnlyLedger
from worker.errors import ConfigError, LockHeldError, StoreError
from worker.localorg import LocalOrg, read_manifest
from worker.mapping import LoadedMapping, load_mapping
from worker.pipeline import Pipeline
from worker.ports import ProgressPort, Sink, Source
from worker.rules import ALL_RULES, Rule, rule_models, runnable
from worker.rules.kit import add_months
from worker.settings import WorkerSettings
from worker.store import Store

log = structlog.get_logger()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def load_rules_and_mapping(settings: WorkerSettings) -> tuple[LoadedMapping, list[Rule[Any]]]:
    mapping = load_mapping(settings.mapping, rule_models())
    return mapping, list(ALL_RULES)


AS_OF_WINDOW_YEARS = 5


def org_today(
    settings: WorkerSettings, mapping: LoadedMapping, clock: Callable[[], dt.datetime]
) -> dt.date:
    """The org's own today: a local org's manifest date, else today in the org's time zone."""
    if settings.local_org:
        return read_manifest(settings.local_org).as_of
    return clock().astimezone(mapping.common.org.zone).date()


def resolve_as_of(
    settings: WorkerSettings,
    mapping: LoadedMapping,
    clock: Callable[[], dt.datetime],
    *,
    write: bool = False,
    intended: bool = False,
) -> dt.date:
    """--as-of (WORKER_AS_OF), checked by :func:`check_as_of`, else the org's own today."""
    today = org_today(settings, mapping, clock)
    if settings.as_of is None:
        return today
    check_as_of(
        settings.as_of,
        today,
        settings,
        write=write,
        intended=intended,
        what=f"--as-of / WORKER_AS_OF {settings.as_of}",
    )
    if write and not settings.local_org:
        log.warning(
            "run.as_of_overridden", as_of=settings.as_of.isoformat(), org_today=today.isoformat()
        )
    return settings.as_of


def check_as_of(
    as_of: dt.date,
    today: dt.date,
    settings: WorkerSettings,
    *,
    write: bool,
    intended: bool,
    what: str,
) -> None:
    """An as-of date more than :data:`AS_OF_WINDOW_YEARS` from the org's today is a mistake;
    writing to a live org as of any other day than today must be said to be intended (due
    dates, logged dates and closes would be dated that day)."""
    low = add_months(today, -12 * AS_OF_WINDOW_YEARS)
    high = add_months(today, 12 * AS_OF_WINDOW_YEARS)
    if not low <= as_of <= high:
        raise ConfigError(
            f"{what} is more than {AS_OF_WINDOW_YEARS} years from the org's today ({today}); "
            f"give a date from {low} to {high}"
        )
    if not write or settings.local_org:
        return
    if as_of != today and not intended:
        raise ConfigError(
            f"{what} is not the org's today ({today}): writing to a live org as of another "
            "day dates its Tasks, notes and closes that day; pass --as-of-is-intended if "
            "that is meant"
        )


@dataclass
class App:
    settings: WorkerSettings
    mapping: LoadedMapping
    rules: list[Rule[Any]]
    store: Store
    pipeline: Pipeline
    clock: Callable[[], dt.datetime]


def _endpoints(
    settings: WorkerSettings,
    mapping: LoadedMapping,
    store: Store,
    write: bool,
    clock: Callable[[], dt.datetime],
    connect: bool,
    stop: threading.Event,
) -> tuple[Source, Sink]:
    if not connect:
        return CacheOnlySource(), DryRunSink()
    if settings.local_org:
        org = LocalOrg(
            settings.local_org,
            settings.db_path.parent,
            task_key_field=mapping.common.org.task_key_field,
            clock=clock,
        )
        return org, (org if write else DryRunSink())
    from worker.salesforce.wiring import open_salesforce  # only needed for a live org

    return open_salesforce(
        mapping, write=write, store=store, state_dir=settings.legacy_state_dir, stop=stop
    )


@contextmanager
def open_app(
    settings: WorkerSettings,
    *,
    write: bool,
    connect: bool = True,
    clock: Callable[[], dt.datetime] = utc_now,
    stop: threading.Event | None = None,
    progress: ProgressPort | None = None,
) -> Iterator[App]:
    """The wired pipeline; ``connect=False`` (cache only) reads and writes no org at all.
    ``stop`` (set on SIGTERM/SIGINT by the CLI) reaches the pipeline and the Salesforce
    client; ``progress`` receives the pipeline's progress reports."""
    stop = stop or threading.Event()
    mapping, rules = load_rules_and_mapping(settings)
    if settings.local_org and not settings.local_org.is_dir():
        raise ConfigError(f"WORKER_LOCAL_ORG: {settings.local_org} is not a folder")
    store = Store.open(settings.store_target)
    try:
        # Dry run or not is decided here, once: the sink and the ledger the pipeline gets.
        source, sink = _endpoints(settings, mapping, store, write, clock, connect, stop)
        pipeline = Pipeline(
            store=store,
            source=source,
            sink=sink,
            ledger=store if write and connect else ReadOnlyLedger(store),
            mapping=mapping,
            rules=runnable(rules, mapping),
            clock=clock,
            stop=stop,
            progress=progress,
        )
        yield App(settings, mapping, rules, store, pipeline, clock)
    finally:
        store.close()


@contextmanager
def run_lock(app: App, run_id: str, mode: str | None = None) -> Iterator[None]:
    """Hold the run lease for the block, renewed in the background every third of its
    length, so a long run keeps it while a dead one loses it. A run (``mode`` given)
    refused because another holds the lease is recorded in ``runs`` as locked."""
    ttl = dt.timedelta(seconds=app.settings.lock_ttl_seconds)
    try:
        app.store.acquire_lock(run_id, app.clock(), ttl)
    except LockHeldError as exc:
        if mode:
            as_of = app.settings.as_of or org_today(app.settings, app.mapping, app.clock)
            app.store.record_locked_run(run_id, mode, as_of, app.clock(), str(exc))
        raise
    stop = threading.Event()
    beat = threading.Thread(
        target=keep_lease,
        args=(app.settings.store_target, run_id, ttl, app.clock, stop),
        name="lease",
        daemon=True,
    )
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        app.store.release_lock(run_id)


def keep_lease(
    target: str | Path,
    holder: str,
    ttl: dt.timedelta,
    clock: Callable[[], dt.datetime],
    stop: threading.Event,
) -> None:
    """Renew the lease until ``stop`` is set (its own connection: a thread of its own)."""
    store = Store.open(target)
    try:
        while not stop.wait(ttl.total_seconds() / 3):
            try:
                if not store.renew_lock(holder, clock(), ttl):
                    log.error("run.lease_lost", holder=holder)
                    return
            except StoreError as exc:  # busy or unreachable: try again at the next beat
                log.warning("run.lease_not_renewed", problem=str(exc))
    finally:
        store.close()
