"""The worker's database: record cache, sync watermarks, runs, the action ledger, the audit log,
the run lease and the store's secrets, on SQLite (embedded, the default) or PostgreSQL.

Only this module touches the database, through SQLAlchemy Core: one code path for both
backends (the tables and migrations are in :mod:`worker.migrations`). Tables:

- ``records``: one row per cached record: raw REST JSON (JSONB on PostgreSQL) plus the
  columns lookups and retention filter on (``sobject``, ``system_modstamp``, ``name``,
  ``what_id``, ``who_id``, ``parent_id``).
- ``watermarks``: per sObject, the highest SystemModstamp safely cached and the hash of the
  field list it was read with (a changed field list means a full re-read).
- ``runs``: one row per run with its summary and the Id of the org it ran on.
- ``ledger``: one row per action key: planned -> sent -> applied | failed | conflict | skipped.
- ``audit``: append-only; an ``intent`` row before each write and an ``outcome`` row after,
  in the same transaction as the ledger change, each with the run's org Id.
- ``run_lock``: a lease with an expiry, so two runs never overlap (on one host or many: the
  row is in the shared database) and a dead run's lease can be taken over.
- ``store_secrets``: a rotated OAuth refresh token (see :mod:`worker.salesforce.tokens`).

Where: :func:`database_url` turns ``DATABASE_URL`` (``postgres://`` or ``postgresql://``)
or the SQLite path into a SQLAlchemy URL. A SQLite file is created with mode 0600 and opened
in WAL mode; every write transaction on it starts with ``BEGIN IMMEDIATE`` (writers queue on
the busy timeout instead of failing halfway). A transaction whose connection drops (a
PostgreSQL restart, a failover) is run again on a new connection: it was rolled back whole,
so it never lands twice or half. A database that stays unreachable is a
:class:`~worker.errors.StoreError` (exit 2); the ledger it leaves is consistent and the next
run reconciles what was sent.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import socket
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from worker import schema
from worker.actions import Action, ActionResult, Outcome, UpdateRecord, action_from_dict
from worker.errors import LockHeldError, RecordError, StoreError
from worker.migrations import MIGRATION_LOCK_ID, MIGRATIONS, SCHEMA_VERSION, TABLES
from worker.ports import Page
from worker.records import Record, Snapshot, in_scope, parse_sf_datetime
from worker.redact import redact_value

log = structlog.get_logger(__name__)
T = TypeVar("T")

RECORDS, WATERMARKS, RUNS = TABLES["records"], TABLES["watermarks"], TABLES["runs"]
LEDGER, AUDIT, RUN_LOCK = TABLES["ledger"], TABLES["audit"], TABLES["run_lock"]
SECRETS = TABLES["store_secrets"]
# Statuses of a run the store itself sets; the pipeline sets the others (ok, failed, ...).
RUN_RUNNING = "running"
RUN_KILLED = "killed"  # its process died; a later run took its lease over
RUN_LOCKED = "locked"  # refused: another run held the lock
CHUNK = 500  # ids per IN (...) list: well under SQLite's 32,766 bound parameters
RECONNECTS = 3  # attempts of one transaction whose connection dropped
LEDGER_ROWS = 1000  # ledger and audit rows built and written per statement


def database_url(target: str | Path) -> sa.URL:
    """``postgres://`` / ``postgresql://`` (Heroku's ``DATABASE_URL``) on psycopg 3, any
    other SQLAlchemy URL as given, else a SQLite file path (``:memory:`` included)."""
    text = str(target)
    if "://" not in text:
        return sa.URL.create("sqlite", database=text)
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise StoreError("DATABASE_URL is not a database URL") from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if not url.drivername.startswith(("postgresql", "sqlite")):
        raise StoreError(
            f"DATABASE_URL: {url.drivername!r} is not supported (postgresql:// or a SQLite path)"
        )
    return url


def shown(url: sa.URL) -> str:
    """The URL as it may be shown: never its password."""
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True)
class AuditRow:
    id: int
    run_id: str
    ts: str
    actor: str
    event: str
    key: str
    rule: str
    sop: str
    step: str
    kind: str
    record_id: str
    record_name: str
    before: str | None
    after: str | None
    outcome: str
    error_code: str | None
    message: str | None
    reason: str | None
    org_id: str | None = None  # None on rows written before the org was recorded


@dataclass(frozen=True)
class Watermark:
    """Where an object's incremental read resumes: the (stamp, Id) of the last record read
    in order (``after_id`` None: from ``stamp`` inclusive) and when that read began (None on
    a watermark an older version wrote)."""

    stamp: dt.datetime
    after_id: str | None = None
    read_at: dt.datetime | None = None


@dataclass(frozen=True)
class ActionOutcome:
    """How one action of a run ended (its audit row) and the Id of a record it created."""

    audit: AuditRow
    created_id: str | None


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    run_id: str
    status: Outcome
    updated_at: str
    sf_id: str | None
    error_code: str | None
    action: Action


class Store:
    """Typed access to the worker's database."""

    def __init__(self, engine: Engine, actor: str = "sop-worker") -> None:
        self.engine = engine
        self.actor = actor
        self.backend = engine.dialect.name  # "sqlite" or "postgresql"
        self._run_orgs: dict[str, str | None] = {}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, target: str | Path | sa.URL) -> Store:
        """Open (creating and migrating as needed) the database at a path or URL."""
        url = target if isinstance(target, sa.URL) else database_url(target)
        if url.drivername.startswith("sqlite"):
            engine = _sqlite_engine(url)
        else:
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                pool_size=2,
                max_overflow=2,
                # JSONB rows decoded by orjson, as SQLite's text is (see _loaded).
                json_deserializer=orjson.loads,
            )
        store = cls(engine)
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def memory(cls) -> Store:
        return cls.open(":memory:")

    @property
    def url(self) -> str:
        return shown(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------------------------
    def transaction(self, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction, again on a new connection if the connection
        dropped (the first attempt was rolled back whole); a database that stays out of
        reach, or cannot be used, is a :class:`StoreError`."""
        for attempt in range(1, RECONNECTS + 1):
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn.execution_options(sop_worker_write=True)
                    with conn.begin():
                        return work(conn)
            except sa.exc.DBAPIError as exc:
                if exc.connection_invalidated and attempt < RECONNECTS:
                    log.warning("store.reconnect", attempt=attempt, backend=self.backend)
                    continue
                if not write and self._busy(exc) and attempt < RECONNECTS:
                    # SQLite can refuse a read at once, without its busy wait, while another
                    # connection turns a new file to WAL: a read is safe to run again.
                    time.sleep(0.05 * attempt)
                    continue
                raise self._error(exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _busy(self, exc: sa.exc.DBAPIError) -> bool:
        return self.backend == "sqlite" and "database is locked" in str(exc.orig)

    def _error(self, exc: sa.exc.DBAPIError) -> StoreError:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        if self.backend == "sqlite":
            where = f"WORKER_DB_PATH: {self.engine.url.database}"
            if "malformed" in detail or "not a database" in detail:
                return StoreError(
                    f"{where} is damaged or is not a SQLite database ({detail}). Keep the file "
                    "(it holds the audit log): restore it from a backup, or recover what it "
                    "holds with `sqlite3 FILE .recover | sqlite3 NEW_FILE` and point "
                    "WORKER_DB_PATH at the new file"
                )
            return StoreError(f"{where}: {detail}")
        return StoreError(
            f"DATABASE_URL: the database at {self.url} cannot be used ({detail}); nothing "
            "was lost: the next run reconciles what this one sent"
        )

    # -- migrations -------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.transaction(_schema_version, write=False)

    def pending_migrations(self) -> list[int]:
        return list(range(self.version + 1, len(MIGRATIONS) + 1))

    def migrate(self) -> int:
        """Bring the schema up to date; return how many migrations ran. Two processes
        starting at once do not both migrate: the first holds the write lock, the second
        waits for it and then finds nothing left to do."""

        def work(conn: Connection) -> int:
            if self.backend == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
            current = _schema_version(conn)
            for number in range(current + 1, len(MIGRATIONS) + 1):
                MIGRATIONS[number - 1](conn)
                log.info("store.migrated", version=number, backend=self.backend)
            if current < len(MIGRATIONS):
                SCHEMA_VERSION.create(conn, checkfirst=True)
                conn.execute(SCHEMA_VERSION.delete())
                conn.execute(SCHEMA_VERSION.insert().values(version=len(MIGRATIONS)))
            return len(MIGRATIONS) - current

        if not self.pending_migrations():
            return 0
        return self.transaction(work)

    @contextmanager
    def atomic(self) -> Iterator[Connection]:
        """One write transaction (no reconnect: for callers that cannot be run twice)."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(sop_worker_write=True)
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as exc:
            raise self._error(exc) from None

    # -- cache ------------------------------------------------------------------------------
    def save_page(
        self, page: Page, name_field: str, synced_at: dt.datetime
    ) -> tuple[str, str] | None:
        """Upsert one page of records and drop its deleted ids, in one transaction.

        Returns the highest (stamp, Id) in the page (the stamp is SystemModstamp, or the
        object's own replication field): the new safe watermark."""
        rows = []
        newest: tuple[str, str] | None = None
        attributes, synced = {"type": page.sobject}, synced_at.isoformat()
        for raw in page.records:  # each with an Id and its stamp (see pipeline._usable)
            stamp = str(raw[page.stamp_field])
            key = (stamp, str(raw[schema.ID]))
            if newest is None or key > newest:
                newest = key
            rows.append(
                {
                    "id": raw[schema.ID],
                    "sobject": page.sobject,
                    "system_modstamp": stamp,
                    "name": _text(raw.get(name_field)),
                    "what_id": _text(raw.get(schema.WHAT_ID)),
                    "who_id": _text(raw.get(schema.WHO_ID)),
                    "parent_id": _text(raw.get(schema.PARENT_ID)),
                    "raw": {**raw, schema.ATTRIBUTES: attributes},
                    "synced_at": synced,
                }
            )

        def work(conn: Connection) -> None:
            if rows:
                conn.execute(_upsert(conn, RECORDS), rows)
            for chunk in _chunks(list(page.deleted_ids)):
                conn.execute(RECORDS.delete().where(RECORDS.c.id.in_(chunk)))

        self.transaction(work)
        return newest

    def watermark(self, sobject: str, fields_hash: str) -> Watermark | None:
        """Where to resume reading ``sobject``, or None for a full read."""
        row = self.transaction(
            lambda c: c.execute(
                sa.select(WATERMARKS).where(WATERMARKS.c.sobject == sobject)
            ).first(),
            write=False,
        )
        if row is None or row.fields_hash != fields_hash or not row.last_modstamp:
            return None
        return Watermark(
            parse_sf_datetime(row.last_modstamp),
            row.last_id or None,
            dt.datetime.fromisoformat(row.read_at) if row.read_at else None,
        )

    def set_watermark(
        self,
        sobject: str,
        stamp: str,
        fields_hash: str,
        now: dt.datetime,
        *,
        after_id: str | None = None,
        read_at: dt.datetime | None = None,
    ) -> None:
        row = {
            "sobject": sobject,
            "last_modstamp": stamp,
            "last_id": after_id,
            "read_at": read_at.isoformat() if read_at else None,
            "fields_hash": fields_hash,
            "updated_at": now.isoformat(),
        }
        self.transaction(lambda c: c.execute(_upsert(c, WATERMARKS), [row]))

    def reset_cache(self, sobject: str) -> None:
        """Forget an object's cache (its field list changed): the next read is full."""

        def work(conn: Connection) -> None:
            conn.execute(RECORDS.delete().where(RECORDS.c.sobject == sobject))
            conn.execute(WATERMARKS.delete().where(WATERMARKS.c.sobject == sobject))

        self.transaction(work)

    def load_snapshot(self, sobjects: Iterable[str]) -> tuple[Snapshot, list[RecordError]]:
        records: list[Record] = []
        problems: list[RecordError] = []
        query = (
            sa.select(RECORDS.c.id, RECORDS.c.sobject, RECORDS.c.raw)
            .where(RECORDS.c.sobject.in_(sorted(set(sobjects))))
            .order_by(RECORDS.c.sobject, RECORDS.c.id)
        )
        with self.engine.connect() as conn:
            try:
                result = conn.execution_options(yield_per=2000).execute(query)
                for rid, sobject, raw in result:
                    try:
                        records.append(Record.from_json(_loaded(raw), sobject, owned=True))
                    except RecordError as exc:
                        problems.append(exc)
                    except ValueError as exc:
                        problems.append(RecordError(rid, "raw", f"unreadable JSON: {exc}"))
            except sa.exc.DBAPIError as exc:
                raise self._error(exc) from None
        return Snapshot.build(records), problems

    def snapshot(
        self, sobjects: Iterable[str], changed_since: dt.datetime | None = None
    ) -> StoredSnapshot:
        """The cached records of ``sobjects`` as the rules read them, without holding them
        all: see :class:`StoredSnapshot` (and :attr:`Snapshot.changed_since`)."""
        names = sorted(set(sobjects))
        query = (
            sa.select(RECORDS.c.sobject, sa.func.count())
            .where(RECORDS.c.sobject.in_(names))
            .group_by(RECORDS.c.sobject)
        )
        rows = self.transaction(lambda c: c.execute(query).all(), write=False)
        return StoredSnapshot(self, {sobject: int(n) for sobject, n in rows}, changed_since)

    def newest_stamp(self) -> dt.datetime | None:
        """The newest ``SystemModstamp`` (or replication stamp) of the cached records, in the
        org's own clock: how far the cache has read."""
        query = sa.select(sa.func.max(RECORDS.c.system_modstamp))
        found = self.transaction(lambda c: c.execute(query).scalar(), write=False)
        return parse_sf_datetime(found) if found else None

    def cached_record(self, record_id: str) -> Record | None:
        row = self.transaction(
            lambda c: c.execute(
                sa.select(RECORDS.c.sobject, RECORDS.c.raw).where(RECORDS.c.id == record_id)
            ).first(),
            write=False,
        )
        return Record.from_json(_loaded(row.raw), row.sobject) if row else None

    def count(self, table: str) -> int:
        """Rows in one of the store's tables."""
        query = sa.select(sa.func.count()).select_from(TABLES[table])
        return int(self.transaction(lambda c: c.execute(query).scalar_one(), write=False))

    def cached_counts(self) -> dict[str, int]:
        """Cached records per sObject."""
        query = sa.select(RECORDS.c.sobject, sa.func.count()).group_by(RECORDS.c.sobject)
        rows = self.transaction(lambda c: c.execute(query).all(), write=False)
        return {sobject: int(n) for sobject, n in rows}

    # -- runs -------------------------------------------------------------------------------
    def begin_run(self, run_id: str, mode: str, as_of: dt.date, now: dt.datetime) -> None:
        row = {
            "run_id": run_id,
            "started_at": now.isoformat(),
            "mode": mode,
            "as_of": as_of.isoformat(),
            "status": RUN_RUNNING,
        }
        self.transaction(lambda c: c.execute(RUNS.insert(), [row]))

    def set_run_org(self, run_id: str, org_id: str) -> None:
        """The org the run reads and writes; its audit rows carry the same Id."""
        query = RUNS.update().where(RUNS.c.run_id == run_id).values(org_id=org_id)
        self.transaction(lambda c: c.execute(query))
        self._run_orgs[run_id] = org_id

    def _run_org(self, run_id: str) -> str | None:
        if run_id not in self._run_orgs:
            query = sa.select(RUNS.c.org_id).where(RUNS.c.run_id == run_id)
            self._run_orgs[run_id] = self.transaction(
                lambda c: c.execute(query).scalar(), write=False
            )
        return self._run_orgs[run_id]

    def finish_run(
        self, run_id: str, status: str, summary: Mapping[str, Any], now: dt.datetime
    ) -> None:
        values = {
            "finished_at": now.isoformat(),
            "status": status,
            "summary": json.dumps(redact_value(dict(summary)), default=str),
        }
        self.transaction(
            lambda c: c.execute(RUNS.update().where(RUNS.c.run_id == run_id).values(values))
        )

    def record_locked_run(
        self, run_id: str, mode: str, as_of: dt.date, now: dt.datetime, message: str
    ) -> None:
        """A run that did not start because another run holds the lock."""
        self.begin_run(run_id, mode, as_of, now)
        self.finish_run(run_id, RUN_LOCKED, {"run_id": run_id, "stopped": message}, now)

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        query = sa.select(RUNS).order_by(RUNS.c.started_at.desc()).limit(limit)
        rows = self.transaction(lambda c: c.execute(query).mappings().all(), write=False)
        return [dict(r) for r in rows]

    # -- ledger -----------------------------------------------------------------------------
    def ledger_status(self, keys: Iterable[str]) -> dict[str, Outcome]:
        wanted = list(keys)

        def work(conn: Connection) -> dict[str, Outcome]:
            return _statuses(conn, wanted)

        return self.transaction(work, write=False)

    def unsettled(self) -> list[LedgerEntry]:
        """Ledger rows left ``sent``: a run died, or the answers were lost."""
        return self.ledger_entries(status=Outcome.SENT)

    def ledger_entries(
        self,
        status: Outcome | None = None,
        target_id: str | None = None,
    ) -> list[LedgerEntry]:
        query = sa.select(LEDGER).order_by(LEDGER.c.updated_at, LEDGER.c.key)
        if status:
            query = query.where(LEDGER.c.status == status.value)
        if target_id:
            query = query.where(LEDGER.c.target_id == target_id)
        rows = self.transaction(lambda c: c.execute(query).all(), write=False)
        return [
            LedgerEntry(
                r.key,
                r.run_id,
                Outcome(r.status),
                r.updated_at,
                r.sf_id,
                r.error_code,
                action_from_dict(json.loads(r.action)),
            )
            for r in rows
        ]

    def record_planned(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        """Enter new keys as planned; a key the ledger already holds keeps its status, and a
        still-open one (planned, conflict) takes the new plan's version of the action."""
        if not actions:
            return
        refresh = (
            LEDGER.update()
            .where(
                LEDGER.c.key == sa.bindparam("k"),
                # (not IN: an expanding parameter cannot go into an executemany)
                sa.or_(
                    LEDGER.c.status == Outcome.PLANNED.value,
                    LEDGER.c.status == Outcome.CONFLICT.value,
                ),
            )
            .values(
                run_id=sa.bindparam("r"), action=sa.bindparam("a"), updated_at=sa.bindparam("u")
            )
        )

        def work(conn: Connection) -> None:
            # One transaction, a statement pair per LEDGER_ROWS actions: the rows of a large
            # plan are never all built at once.
            for chunk in _chunks(actions, LEDGER_ROWS):
                rows = [_ledger_row(a, run_id, Outcome.PLANNED, now) for a in chunk]
                conn.execute(_insert(conn, LEDGER).on_conflict_do_nothing(), rows)
                conn.execute(
                    refresh,
                    [
                        {"k": r["key"], "r": run_id, "a": r["action"], "u": r["updated_at"]}
                        for r in rows
                    ],
                )

        self.transaction(work)

    def mark_sent(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        """Before a write: the intent row in the audit and ``sent`` in the ledger, together."""
        if not actions:
            return
        self._run_org(run_id)  # read now: the audit rows below are built in the transaction

        def work(conn: Connection) -> None:
            for chunk in _chunks(actions, LEDGER_ROWS):
                ledger = [_ledger_row(a, run_id, Outcome.SENT, now) for a in chunk]
                conn.execute(_upsert(conn, LEDGER), ledger)
                audit = [
                    self._audit_row(run_id, now, "intent", a, Outcome.SENT, None) for a in chunk
                ]
                conn.execute(AUDIT.insert(), audit)

        self.transaction(work)

    def record_results(
        self,
        actions: Mapping[str, Action],
        results: Sequence[ActionResult],
        run_id: str,
        now: dt.datetime,
        event: str = "outcome",
    ) -> None:
        """After a write (or a decision not to write): ledger status + outcome audit row."""
        if not results:
            return
        self._run_org(run_id)  # read now: the audit rows below are built in the transaction

        def work(conn: Connection) -> None:
            for chunk in _chunks(results, LEDGER_ROWS):
                ledger, audit = [], []
                for result in chunk:
                    result = dataclasses.replace(result, message=redact_value(result.message))
                    action = actions[result.key]
                    row = _ledger_row(action, run_id, result.outcome, now)
                    row.update(
                        sf_id=result.sf_id, error_code=result.error_code, message=result.message
                    )
                    ledger.append(row)
                    audit.append(
                        self._audit_row(run_id, now, event, action, result.outcome, result)
                    )
                conn.execute(_upsert(conn, LEDGER), ledger)
                conn.execute(AUDIT.insert(), audit)

        self.transaction(work)

    def record_skipped_steps(
        self, entries: Sequence[tuple[Action, str]], run_id: str, now: dt.datetime
    ) -> None:
        """Catch-up skips and superseded actions: ledger ``skipped`` with the reason."""
        if not entries:
            return
        self._run_org(run_id)  # read now: the audit rows below are built in the transaction

        def work(conn: Connection) -> None:
            known = _statuses(conn, [a.key for a, _ in entries])
            ledger, audit = [], []
            for action, why in entries:
                if action.key in known:
                    continue
                known[action.key] = Outcome.SKIPPED
                row = _ledger_row(action, run_id, Outcome.SKIPPED, now)
                row["message"] = why
                ledger.append(row)
                result = ActionResult(action.key, Outcome.SKIPPED, message=why)
                audit.append(
                    self._audit_row(run_id, now, "skipped", action, Outcome.SKIPPED, result)
                )
            if ledger:
                conn.execute(LEDGER.insert(), ledger)
                conn.execute(AUDIT.insert(), audit)

        self.transaction(work)

    def _audit_row(
        self,
        run_id: str,
        now: dt.datetime,
        event: str,
        action: Action,
        outcome: Outcome,
        result: ActionResult | None,
    ) -> dict[str, Any]:
        before, after = _before_after(action)
        return {
            "run_id": run_id,
            "ts": now.isoformat(),
            "actor": self.actor,
            "event": event,
            "key": action.key,
            "rule": action.rule,
            "sop": action.sop,
            "step": action.step,
            "kind": action.kind.value,
            "record_id": action.target.id,
            "record_name": action.target.name,
            "before": before,
            "after": after,
            "outcome": outcome.value,
            "error_code": result.error_code if result else None,
            "message": result.message if result else None,
            "reason": action.reason,
            "org_id": self._run_org(run_id),
        }

    def record_events(
        self, run_id: str, now: dt.datetime, events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Audit rows of writes made outside the action pipeline (``undo-merge``): each
        gives ``key``, ``kind``, ``record_id`` and ``outcome``, and may give ``before``,
        ``after`` (JSON-able), ``error_code``, ``message`` and ``reason``."""
        if not events:
            return
        org_id = self._run_org(run_id)
        rows = [
            {
                "run_id": run_id,
                "ts": now.isoformat(),
                "actor": self.actor,
                "event": "outcome",
                "key": e["key"],
                "rule": e.get("rule"),
                "sop": None,
                "step": e.get("step"),
                "kind": e["kind"],
                "record_id": e["record_id"],
                "record_name": e.get("record_name"),
                "before": _json_or_none(e.get("before")),
                "after": _json_or_none(e.get("after")),
                "outcome": e["outcome"],
                "error_code": e.get("error_code"),
                "message": redact_value(e.get("message")),
                "reason": e.get("reason"),
                "org_id": org_id,
            }
            for e in events
        ]
        self.transaction(lambda c: c.execute(AUDIT.insert(), rows))

    # -- audit queries ----------------------------------------------------------------------
    def audit_rows(
        self,
        *,
        record_id: str | None = None,
        rule: str | None = None,
        run_id: str | None = None,
        since: dt.date | None = None,
        outcome: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRow]:
        query = sa.select(AUDIT).order_by(AUDIT.c.id)
        for column, value in (
            (AUDIT.c.record_id, record_id),
            (AUDIT.c.rule, rule),
            (AUDIT.c.run_id, run_id),
            (AUDIT.c.outcome, outcome),
        ):
            if value:
                query = query.where(column == value)
        if since:
            query = query.where(AUDIT.c.ts >= since.isoformat())
        if newest_first:
            query = query.order_by(None).order_by(AUDIT.c.id.desc())
        if limit:
            query = query.limit(limit)
        rows = self.transaction(lambda c: c.execute(query).mappings().all(), write=False)
        return [AuditRow(**r) for r in rows]

    def run_ids(self, prefix: str) -> list[str]:
        """Ids of the runs (in ``runs`` or the audit log) that start with ``prefix``."""
        query = sa.union(
            *(
                sa.select(column).where(sa.func.substr(column, 1, len(prefix)) == prefix)
                for column in (RUNS.c.run_id, AUDIT.c.run_id)
            )
        )
        rows = self.transaction(lambda c: c.execute(query).scalars().all(), write=False)
        return sorted(str(r) for r in rows)

    def run_results(self, run_id: str) -> list[ActionOutcome]:
        """What one run settled, one entry per action key (its last audit row in the run,
        intents left out), with the Id of the record a create made."""
        last: dict[str, AuditRow] = {}
        for row in self.audit_rows(run_id=run_id):
            if row.event != "intent":
                last.pop(row.key, None)
                last[row.key] = row
        keys = list(last)

        def work(conn: Connection) -> dict[str, str]:
            made: dict[str, str] = {}
            for chunk in _chunks(keys):
                query = sa.select(LEDGER.c.key, LEDGER.c.sf_id).where(
                    LEDGER.c.key.in_(chunk), LEDGER.c.sf_id.is_not(None)
                )
                made.update({key: sf_id for key, sf_id in conn.execute(query)})
            return made

        made = self.transaction(work, write=False)
        return [ActionOutcome(row, made.get(key)) for key, row in last.items()]

    # -- run lock ---------------------------------------------------------------------------
    def acquire_lock(self, holder: str, now: dt.datetime, ttl: dt.timedelta) -> None:
        """Take the run lease, or raise LockHeldError naming who holds it and until when.
        The check and the take share one transaction under the database's write lock, so
        two processes (on one host or on two dynos) never both get it."""

        def work(conn: Connection) -> None:
            if self.backend == "postgresql":
                # The row may not exist yet: lock the name, not the row.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID + 1)))
            row = conn.execute(sa.select(RUN_LOCK).where(RUN_LOCK.c.name == "run")).first()
            if (
                row
                and row.holder != holder
                and dt.datetime.fromisoformat(row.expires_at) > now
                and not _dead_here(row.pid, row.host)
            ):
                raise LockHeldError(
                    f"another run holds the lock: {row.holder} (pid {row.pid} on {row.host}) "
                    f"until {row.expires_at}; it is taken over after that if the run died"
                )
            if row and row.holder != holder:
                # The lease of a run that died: its row would say "running" forever.
                conn.execute(
                    RUNS.update()
                    .where(RUNS.c.run_id == row.holder, RUNS.c.status == RUN_RUNNING)
                    .values(status=RUN_KILLED, finished_at=now.isoformat())
                )
            lease = {
                "name": "run",
                "holder": holder,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "acquired_at": now.isoformat(),
                "expires_at": (now + ttl).isoformat(),
            }
            conn.execute(_upsert(conn, RUN_LOCK), [lease])

        self.transaction(work)

    def lock_holder(self) -> dict[str, Any] | None:
        """The lease as it stands (holder, pid, host, acquired_at, expires_at), if any."""
        query = sa.select(RUN_LOCK).where(RUN_LOCK.c.name == "run")
        row = self.transaction(lambda c: c.execute(query).mappings().first(), write=False)
        return dict(row) if row else None

    def renew_lock(self, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Push the lease's expiry out while its run is alive; False if it is no longer ours."""
        query = (
            RUN_LOCK.update()
            .where(RUN_LOCK.c.name == "run", RUN_LOCK.c.holder == holder)
            .values(expires_at=(now + ttl).isoformat())
        )
        return self.transaction(lambda c: c.execute(query).rowcount) == 1

    def release_lock(self, holder: str) -> None:
        query = RUN_LOCK.delete().where(RUN_LOCK.c.name == "run", RUN_LOCK.c.holder == holder)
        self.transaction(lambda c: c.execute(query))

    # -- secrets ----------------------------------------------------------------------------
    def secret(self, name: str) -> tuple[str, str] | None:
        """A stored secret as (the fingerprint it descends from, value), if any."""
        query = sa.select(SECRETS.c.descends_from, SECRETS.c.value).where(SECRETS.c.name == name)
        row = self.transaction(lambda c: c.execute(query).first(), write=False)
        return (row.descends_from, row.value) if row else None

    def save_secret(self, name: str, descends_from: str, value: str, now: dt.datetime) -> None:
        row = {
            "name": name,
            "descends_from": descends_from,
            "value": value,
            "updated_at": now.isoformat(),
        }
        self.transaction(lambda c: c.execute(_upsert(c, SECRETS), [row]))

    # -- retention --------------------------------------------------------------------------
    def purge(
        self,
        cutoff_for: Callable[[str], dt.datetime],
        audit_cutoff: dt.datetime,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Drop the cached records the rules no longer need (see :func:`_unneeded`), and
        audit rows and ledger entries older than ``audit_cutoff`` (they name records too);
        with ``dry_run``, only count them.

        Each object purged from loses its watermark, so the next pull reads it in full: a
        record the org still holds comes back, and plans after a purge equal plans without
        it; what stays gone is what the org no longer holds (a deletion an incremental read
        no longer reports once the recycle bin is emptied). Old ledger keys are safe to
        forget: the rules never plan a step that old again, and the keys written into
        Salesforce still stop a repeat."""

        def work(conn: Connection) -> dict[str, int]:
            stale = _unneeded(conn, cutoff_for)
            removed = {sobject: len(ids) for sobject, ids in stale.items()}
            old = audit_cutoff.isoformat()
            removed["audit"] = conn.execute(
                sa.select(sa.func.count()).select_from(AUDIT).where(AUDIT.c.ts < old)
            ).scalar_one()
            removed["ledger"] = conn.execute(
                sa.select(sa.func.count()).select_from(LEDGER).where(LEDGER.c.updated_at < old)
            ).scalar_one()
            if not dry_run:
                for sobject, ids in stale.items():
                    for chunk in _chunks(ids):
                        conn.execute(RECORDS.delete().where(RECORDS.c.id.in_(chunk)))
                    if ids:
                        conn.execute(WATERMARKS.delete().where(WATERMARKS.c.sobject == sobject))
                conn.execute(AUDIT.delete().where(AUDIT.c.ts < old))
                conn.execute(LEDGER.delete().where(LEDGER.c.updated_at < old))
            return removed

        return self.transaction(work)


# A stored snapshot holds an object of at most this many cached rows whole (as
# Snapshot.build would: about 30 MB, and each rule's pass over it decodes nothing again);
# a larger one is streamed from the store a page at a time.
WHOLE_ROWS = 10_000
STREAM_PAGE = 2000
RECENT = 1000  # decoded records of streamed objects kept by Id (get, children)
_PATH = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


class StoredSnapshot(Snapshot):
    """The cached records of one cycle read from the store as the rules ask, so that a
    cycle's memory does not grow with the org: the rules see the same :class:`Snapshot`.

    - An object of at most :data:`WHOLE_ROWS` rows is read whole on first use and kept.
    - A larger one is streamed: ``of`` pages through it in Id order on each iteration
      (one query per :data:`STREAM_PAGE` rows); ``get`` reads a record by its Id (the
      primary key) and ``children`` by an index of child Ids per parent, built once per
      lookup field in one query that reads only the Id and the lookup (its column, or the
      JSON field); the last :data:`RECENT` records read, streamed or by Id, are kept.

    A row whose JSON cannot be read is left out, as :meth:`Store.load_snapshot` leaves it
    out, and logged once (``cache.unreadable_record``); ``problems`` lists them.
    """

    def __init__(
        self, store: Store, counts: Mapping[str, int], changed_since: dt.datetime | None = None
    ) -> None:
        object.__setattr__(self, "records", _StoredRecords(self, counts))
        object.__setattr__(self, "changed_since", changed_since)
        self._store = store
        self._counts = dict(counts)
        self._whole: dict[str, tuple[Record, ...]] = {}
        self._whole_by_id: dict[str, Record] = {}
        self._recent: OrderedDict[str, Record | None] = OrderedDict()
        self._child_ids: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._reported: set[str] = set()
        self.problems: list[RecordError] = []
        self._ids = _ordered_id(store.backend)

    def _streamed(self, sobject: str) -> bool:
        return self._counts.get(sobject, 0) > WHOLE_ROWS

    def _decode(self, rid: str, sobject: str, raw: Any) -> Record | None:
        try:
            return Record.from_json(_loaded(raw), sobject, owned=True)
        except RecordError as exc:
            problem = exc
        except ValueError as exc:
            problem = RecordError(rid, "raw", f"unreadable JSON: {exc}")
        if rid not in self._reported:
            self._reported.add(rid)
            self.problems.append(problem)
            log.warning(
                "cache.unreadable_record", record_id=problem.record_id, problem=problem.problem
            )
        return None

    def _rows(self, query: sa.Select[Any]) -> Sequence[Any]:
        return self._store.transaction(lambda c: c.execute(query).all(), write=False)

    def _stream(
        self, sobject: str, conditions: Sequence[sa.ColumnElement[bool]] = ()
    ) -> Iterator[Record]:
        after: str | None = None
        while True:
            query = sa.select(RECORDS.c.id, RECORDS.c.raw).where(
                RECORDS.c.sobject == sobject, *conditions
            )
            if after is not None:
                query = query.where(self._ids > after)
            rows = self._rows(query.order_by(self._ids).limit(STREAM_PAGE))
            for rid, raw in rows:
                record = self._decode(rid, sobject, raw)
                # Kept as a record read by Id is: a rule, or the suppression check, looks the
                # record it is deciding on up again, and must not read it back from the store.
                self._remember(rid, record)
                if record is not None:
                    yield record
            if len(rows) < STREAM_PAGE:
                return
            after = rows[-1][0]

    def _load_whole(self, sobject: str) -> tuple[Record, ...]:
        loaded = self._whole.get(sobject)
        if loaded is None:
            query = sa.select(RECORDS.c.id, RECORDS.c.raw).where(RECORDS.c.sobject == sobject)
            found = (self._decode(rid, sobject, raw) for rid, raw in self._rows(query))
            loaded = tuple(sorted((r for r in found if r is not None), key=lambda r: r.id))
            self._whole[sobject] = loaded
            self._whole_by_id.update((r.id, r) for r in loaded)
        return loaded

    def of(self, sobject: str) -> Sequence[Record]:
        if sobject not in self._counts:
            return ()
        if self._streamed(sobject):
            return _Streamed(self, sobject, self._counts[sobject])
        return self._load_whole(sobject)

    def where(self, sobject: str, scope: Mapping[str, Sequence[str]]) -> Iterable[Record]:
        """A streamed object's records in scope: the store reads only the rows whose scope
        fields could hold one of the values (text among them, or a value that is not text,
        which :func:`~worker.records.in_scope` judges, or fails on, as for any record)."""
        conditions = [_may_hold(self._store.backend, f, v) for f, v in scope.items()]
        if not self._streamed(sobject) or any(c is None for c in conditions):
            return super().where(sobject, scope)
        sql = [c for c in conditions if c is not None]
        return (r for r in self._stream(sobject, sql) if in_scope(r, scope))

    def _remember(self, rid: str, record: Record | None) -> None:
        self._recent[rid] = record
        self._recent.move_to_end(rid)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def _fetch(self, ids: Sequence[str]) -> dict[str, Record]:
        """Records by Id (those cached of this snapshot's objects); a small object a
        record belongs to is read whole."""
        found: dict[str, Record] = {}
        wanted: list[str] = []
        for rid in ids:
            if (hit := self._whole_by_id.get(rid)) is not None:
                found[rid] = hit
            elif rid in self._recent:
                if (record := self._recent[rid]) is not None:
                    found[rid] = record
                self._recent.move_to_end(rid)
            else:
                wanted.append(rid)
        for chunk in _chunks(wanted):
            query = sa.select(RECORDS.c.id, RECORDS.c.sobject, RECORDS.c.raw).where(
                RECORDS.c.id.in_(chunk), RECORDS.c.sobject.in_(sorted(self._counts))
            )
            rows = {rid: (sobject, raw) for rid, sobject, raw in self._rows(query)}
            for rid in chunk:
                if rid not in rows:
                    self._remember(rid, None)
                    continue
                sobject, raw = rows[rid]
                if not self._streamed(sobject):
                    self._load_whole(sobject)
                    if (hit := self._whole_by_id.get(rid)) is not None:
                        found[rid] = hit
                    continue
                record = self._decode(rid, sobject, raw)
                self._remember(rid, record)
                if record is not None:
                    found[rid] = record
        return found

    def get(self, record_id: str | None) -> Record | None:
        if not record_id:
            return None
        return self._fetch([record_id]).get(record_id)

    def children(self, sobject: str, lookup_field: str, parent_id: str) -> tuple[Record, ...]:
        if not self._streamed(sobject):
            return super().children(sobject, lookup_field, parent_id)
        index = self._child_ids.get((sobject, lookup_field))
        if index is None:
            index = self._child_index(sobject, lookup_field)
            self._child_ids[(sobject, lookup_field)] = index
        ids = index.get(parent_id)
        if not ids:
            return ()
        found = self._fetch(ids)
        return tuple(found[rid] for rid in ids if rid in found)

    def _child_index(self, sobject: str, lookup_field: str) -> dict[str, list[str]]:
        """Child Ids (in Id order) per parent, from one query of Ids and lookup values."""
        index: dict[str, list[str]] = defaultdict(list)
        value = _lookup_value(self._store.backend, lookup_field)
        if value is None:  # not a plain field path: read the records themselves
            for record in self._stream(sobject):
                parent = record.get(lookup_field)
                if isinstance(parent, str) and parent:
                    index[parent].append(record.id)
            return index
        query = (
            sa.select(RECORDS.c.id, value).where(RECORDS.c.sobject == sobject).order_by(self._ids)
        )
        for rid, parent in self._rows(query):
            if isinstance(parent, str) and parent:
                index[parent].append(rid)
        return index


class _Streamed(Sequence[Record]):
    """A streamed object's records, in Id order: read from the store on each iteration."""

    def __init__(self, snapshot: StoredSnapshot, sobject: str, count: int) -> None:
        self._snapshot, self._sobject, self._count = snapshot, sobject, count

    def __iter__(self) -> Iterator[Record]:
        return self._snapshot._stream(self._sobject)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        return tuple(self)[index]


class _StoredRecords(Mapping[str, Sequence[Record]]):
    """``Snapshot.records`` of a stored snapshot: each object's records as ``of`` gives them."""

    def __init__(self, snapshot: StoredSnapshot, counts: Mapping[str, int]) -> None:
        self._snapshot, self._names = snapshot, sorted(counts)

    def __getitem__(self, sobject: str) -> Sequence[Record]:
        if sobject not in self._names:
            raise KeyError(sobject)
        return self._snapshot.of(sobject)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


_COLUMNS = {schema.WHAT_ID: "what_id", schema.WHO_ID: "who_id", schema.PARENT_ID: "parent_id"}


@dataclass(frozen=True)
class _JsonField:
    """One field path of a record's raw JSON in SQL: its JSON type (``text`` names a
    string, ``empty`` null) and its value as text."""

    kind: sa.ColumnElement[Any]
    value: sa.ColumnElement[Any]
    text: str
    empty: str = "null"


def _json_field(backend: str, name: str) -> _JsonField | None:
    """``name`` (``Owner.Name``) read from the raw JSON; None for a name that is no path."""
    if not _PATH.fullmatch(name):
        return None
    parts = name.split(".")
    if backend == "postgresql":
        path = sa.literal(parts, postgresql.ARRAY(sa.Text))
        return _JsonField(
            sa.func.jsonb_typeof(RECORDS.c.raw.op("#>")(path)),
            RECORDS.c.raw.op("#>>", return_type=sa.Text)(path),
            "string",
        )
    json_path = "$." + ".".join(f'"{p}"' for p in parts)
    return _JsonField(
        sa.func.json_type(RECORDS.c.raw, json_path),
        sa.func.json_extract(RECORDS.c.raw, json_path),
        "text",
    )


def _readable(
    backend: str, expression: sa.ColumnElement[Any], damaged: Any
) -> sa.ColumnElement[Any]:
    """``expression`` on a row SQLite can read as JSON, ``damaged`` on one it cannot
    (``json_type`` raises on it); PostgreSQL's JSONB holds JSON only."""
    if backend == "postgresql":
        return expression
    return sa.case((sa.func.json_valid(RECORDS.c.raw) == 1, expression), else_=damaged)


def _may_hold(backend: str, name: str, values: Sequence[str]) -> sa.ColumnElement[bool] | None:
    """SQL true for a record whose field ``name`` is text among ``values``, or is a value
    of another kind than text or null (a number, a checkbox, a nested record: left for
    Python to judge); None for a name that is no field path. A damaged row is read, to be
    reported as unreadable."""
    found = _json_field(backend, name)
    if found is None:
        return None
    held = sa.or_(
        sa.and_(found.kind == found.text, found.value.in_(list(values))),
        found.kind.not_in([found.text, found.empty]),
    )
    return _readable(backend, held, sa.true())


def _lookup_value(backend: str, lookup_field: str) -> sa.ColumnElement[Any] | None:
    """The SQL for a record's ``lookup_field`` as text (NULL when it is no string): its
    column, or the field read from the raw JSON; None for a name that is no field path. A
    damaged row reads as NULL."""
    if lookup_field in _COLUMNS:
        return RECORDS.c[_COLUMNS[lookup_field]]
    found = _json_field(backend, lookup_field)
    if found is None:
        return None
    text = sa.case((found.kind == found.text, found.value))
    return _readable(backend, text, None)


def _ordered_id(backend: str) -> sa.ColumnElement[str]:
    """Record Ids compared as Python compares them (code point order): PostgreSQL's
    default collation follows the locale, so it is told byte order."""
    return RECORDS.c.id.collate("C") if backend == "postgresql" else RECORDS.c.id


def _unneeded(conn: Connection, cutoff_for: Callable[[str], dt.datetime]) -> dict[str, list[str]]:
    """Per sObject, the cached records no kept record needs.

    A record is kept while it was last modified on or after its object's cutoff
    (``cutoff_for`` the sObject name), and so is every record a kept one needs: the records
    it names in any field (a Task's WhatId and WhoId, an account's primary contact, an
    owner) and its activities (the Tasks, CaseComments and EmailMessages naming it in one of
    :data:`_ACTIVITY_LINKS`: a cadence counts them), and so on from those."""
    sobject_of: dict[str, str] = {}
    kept: list[str] = []
    for sobject, rid, stamp in conn.execute(
        sa.select(RECORDS.c.sobject, RECORDS.c.id, RECORDS.c.system_modstamp)
    ):
        sobject_of[rid] = sobject
        if not stamp or parse_sf_datetime(stamp) >= cutoff_for(sobject):
            kept.append(rid)
    names: dict[str, list[str]] = {}
    activities: dict[str, list[str]] = {}
    for rid, stored in conn.execute(sa.select(RECORDS.c.id, RECORDS.c.raw)):
        raw = _loaded(stored)
        named = [v for v in _strings(raw) if v in sobject_of and v != rid]
        if named:
            names[rid] = named
        for link in _ACTIVITY_LINKS:
            parent = raw.get(link)
            if isinstance(parent, str) and parent:
                activities.setdefault(parent, []).append(rid)
    needed = set(kept)
    todo = kept
    while todo:
        rid = todo.pop()
        for other in (*names.get(rid, ()), *activities.get(rid, ())):
            if other not in needed:
                needed.add(other)
                todo.append(other)
    unneeded: dict[str, list[str]] = {sobject: [] for sobject in sobject_of.values()}
    for rid, sobject in sobject_of.items():
        if rid not in needed:
            unneeded[sobject].append(rid)
    return unneeded


# The fields by which an activity names its record (Snapshot.tasks_for, comments_for, and
# the logged emails kit reads).
_ACTIVITY_LINKS = (schema.WHAT_ID, schema.WHO_ID, schema.PARENT_ID, schema.RELATED_TO_ID)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a record's JSON, nested relationship records included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


COPIED = ("watermarks", "runs", "ledger", "audit", "records", "store_secrets")


def resolve_store_arg(value: str) -> str:
    """A ``db copy`` argument: ``env:NAME`` reads a URL from the environment."""
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        found = os.environ.get(name)
        if not found:
            raise StoreError(f"{value}: the environment variable {name} is not set")
        return found
    return value


def copy_store(source: Store, target: Store, batch: int = 2000) -> dict[str, int]:
    """Copy every table but the run lease from ``source`` into ``target`` (both migrated to
    the same version), in one transaction on the target: a copy that fails leaves it empty.
    Refuses a target that already holds runs or audit rows."""
    for name in ("runs", "audit"):
        count = target.count(name)
        if count:
            raise StoreError(
                f"{target.url} already holds {count} {name} row(s); copy into an empty database"
            )
    counts: dict[str, int] = {}

    def work(out: Connection) -> None:
        with source.engine.connect() as src:
            for name in COPIED:
                table = TABLES[name]
                out.execute(table.delete())
                counts[name] = 0
                rows = src.execution_options(yield_per=batch).execute(sa.select(table))
                for part in rows.mappings().partitions():
                    values = [dict(r) for r in part]
                    if name == "records":
                        for v in values:
                            v["raw"] = _loaded(v["raw"])
                    out.execute(table.insert(), values)
                    counts[name] += len(values)
        if target.backend == "postgresql":  # ids were copied: move the sequence past them
            out.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence('audit', 'id'), "
                    "COALESCE((SELECT max(id) FROM audit), 0) + 1, false)"
                )
            )

    target.transaction(work)
    return counts


def _create_private(target: Path) -> None:
    """Create the database file with mode 0600 before SQLite opens it, if it is new.

    A file that exists is left unopened: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included, and another process may then take
    itself for the last user, checkpoint and delete the WAL under this process's live
    connections, whose later commits are lost (sqlite.org/howtocorrupt.html, 2.2). A run's
    lease thread opens the store while the run's own connections are open.
    """
    if target.exists():
        return
    try:
        fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return  # another process created it first
    os.close(fd)


def _sqlite_engine(url: sa.URL) -> Engine:
    path = url.database or ":memory:"
    memory = path == ":memory:"
    if not memory:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _create_private(target)
        except OSError as exc:
            raise StoreError(f"WORKER_DB_PATH: cannot create {target}: {exc.strerror}") from None
    engine = sa.create_engine(
        url,
        connect_args={"timeout": 30, "check_same_thread": False},
        # One shared connection for an in-memory database (each new one would be empty).
        **({"poolclass": sa.pool.StaticPool} if memory else {}),
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        old_umask = os.umask(0o077)  # the -wal and -shm files get the file's 0600 mode
        try:
            if not memory:
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old_umask)

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("sop_worker_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _schema_version(conn: Connection) -> int:
    if sa.inspect(conn).has_table(SCHEMA_VERSION.name):
        value = conn.execute(sa.select(SCHEMA_VERSION.c.version)).scalar()
        return int(value or 0)
    if conn.dialect.name == "sqlite":  # a file from before schema_version: PRAGMA user_version
        return int(conn.exec_driver_sql("PRAGMA user_version").scalar() or 0)
    return 0


def _insert(conn: Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has ON CONFLICT on both backends."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _upsert(conn: Connection, table: sa.Table) -> Any:
    stmt = _insert(conn, table)
    keys = [c.name for c in table.primary_key.columns]
    return stmt.on_conflict_do_update(
        index_elements=keys,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
    )


def _statuses(conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    for chunk in _chunks(list(keys)):
        query = sa.select(LEDGER.c.key, LEDGER.c.status).where(LEDGER.c.key.in_(chunk))
        for key, status in conn.execute(query):
            out[key] = Outcome(status)
    return out


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _loaded(raw: Any) -> Any:
    """A raw record as read back: a dict from JSONB, JSON text from SQLite (decoded by
    orjson: reading the cache is most of a cycle's own work, and orjson decodes a record
    three times as fast as the json module)."""
    return orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ledger_row(action: Action, run_id: str, status: Outcome, now: dt.datetime) -> dict[str, Any]:
    return {
        "key": action.key,
        "run_id": run_id,
        "rule": action.rule,
        "sop": action.sop,
        "step": action.step,
        "kind": action.kind.value,
        "target_id": action.target.id,
        "target_name": action.target.name,
        "status": status.value,
        "action": action.json_text,
        "planned_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


def _before_after(action: Action) -> tuple[str | None, str | None]:
    if isinstance(action, UpdateRecord):
        before = {c.field: c.before for c in action.changes}
        after = {c.field: c.after for c in action.changes}
        return json.dumps(before, default=str), json.dumps(after, default=str)
    data = action.to_dict()
    for meta in ("rule", "sop", "step", "target", "reason", "key", "kind"):
        data.pop(meta, None)
    return None, json.dumps(data, default=str, sort_keys=True)


def _dead_here(pid: int | None, host: str | None) -> bool:
    """True when the lease's holder ran on this host and its process is gone (it was killed):
    the lease can be taken over at once instead of after its expiry."""
    if host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, under another user
    return False
