"""The SQLite file: record cache, sync watermarks, runs, the action ledger and the audit log.

Only this module touches the database. Tables:

- ``cache_<sObject>``: one row per record: raw REST JSON plus the columns lookups and
  retention filter on (``system_modstamp``, ``name``, ``what_id``, ``who_id``, ``parent_id``).
- ``watermarks``: per sObject, the highest SystemModstamp safely cached and the hash of the
  field list it was read with (a changed field list means a full re-read).
- ``runs``: one row per run with its summary and the Id of the org it ran on.
- ``ledger``: one row per action key: planned -> sent -> applied | failed | conflict | skipped.
- ``audit``: append-only; an ``intent`` row before each write and an ``outcome`` row after,
  in the same transaction as the ledger change, each with the run's org Id.
- ``run_lock``: a lease with an expiry, so two runs never overlap and a dead run's lease
  can be taken over.

The schema version is SQLite's ``user_version``; :data:`MIGRATIONS` upgrades forward.
The file is created with mode 0600 and opened in WAL mode.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from worker import schema
from worker.actions import Action, ActionResult, Outcome, UpdateRecord, action_from_dict
from worker.errors import ConfigError, LockHeldError, RecordError
from worker.ports import Page
from worker.records import Record, Snapshot, parse_sf_datetime

_SOBJECT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,80}$")


def _v1(db: sqlite_utils.Database) -> None:
    db.table("watermarks").create(
        {"sobject": str, "last_modstamp": str, "fields_hash": str, "updated_at": str},
        pk="sobject",
    )
    db.table("runs").create(
        {
            "run_id": str,
            "started_at": str,
            "finished_at": str,
            "mode": str,
            "as_of": str,
            "status": str,
            "summary": str,
        },
        pk="run_id",
    )
    db.table("ledger").create(
        {
            "key": str,
            "run_id": str,
            "rule": str,
            "sop": str,
            "step": str,
            "kind": str,
            "target_id": str,
            "target_name": str,
            "status": str,
            "sf_id": str,
            "error_code": str,
            "message": str,
            "action": str,
            "planned_at": str,
            "updated_at": str,
        },
        pk="key",
    )
    db.table("ledger").create_index(["status"])
    db.table("ledger").create_index(["target_id"])
    db.table("audit").create(
        {
            "id": int,
            "run_id": str,
            "ts": str,
            "actor": str,
            "event": str,
            "key": str,
            "rule": str,
            "sop": str,
            "step": str,
            "kind": str,
            "record_id": str,
            "record_name": str,
            "before": str,
            "after": str,
            "outcome": str,
            "error_code": str,
            "message": str,
            "reason": str,
        },
        pk="id",
    )
    for cols in (["record_id"], ["rule"], ["run_id"], ["ts"], ["outcome"]):
        db.table("audit").create_index(cols)
    db.table("run_lock").create(
        {
            "name": str,
            "holder": str,
            "pid": int,
            "host": str,
            "acquired_at": str,
            "expires_at": str,
        },
        pk="name",
    )


def _v2(db: sqlite_utils.Database) -> None:
    """The Id of the org each run read and wrote, on its run and on each audit row."""
    db.table("runs").add_column("org_id", str)
    db.table("audit").add_column("org_id", str)


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (_v1, _v2)


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
class LedgerEntry:
    key: str
    run_id: str
    status: Outcome
    updated_at: str
    sf_id: str | None
    error_code: str | None
    action: Action


class Store:
    """Typed access to the worker's SQLite file."""

    def __init__(self, db: sqlite_utils.Database, actor: str = "sop-worker") -> None:
        self.db = db
        self.actor = actor
        self._run_orgs: dict[str, str | None] = {}

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Store:
        target = Path(path)
        if str(target) != ":memory:":
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(target, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            except OSError as exc:
                raise ConfigError(
                    f"WORKER_DB_PATH: cannot create {target}: {exc.strerror}"
                ) from None
        old_umask = os.umask(0o077)  # the -wal and -shm files get the same 0600 mode
        try:
            db = sqlite_utils.Database(str(target))
            if str(target) != ":memory:":
                db.enable_wal()
            store = cls(db)
            store.migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"WORKER_DB_PATH: {target} cannot be used as the worker's database ({exc}). "
                "Move it aside to start a new one: the cache is read again from the org, and "
                "the keys the worker writes into Salesforce keep it from repeating an action"
            ) from None
        finally:
            os.umask(old_umask)
        return store

    @classmethod
    def memory(cls) -> Store:
        store = cls(sqlite_utils.Database(memory=True))
        store.migrate()
        return store

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def pending_migrations(self) -> list[int]:
        return list(range(self.version + 1, len(MIGRATIONS) + 1))

    def migrate(self) -> None:
        """Bring the schema up to date. Two processes opening a new file at once (a run and
        `sop-worker audit`, say) do not both migrate: the first holds the write lock, the
        second waits for it and then finds nothing left to do."""
        if not self.pending_migrations():
            return
        conn = self.db.conn
        if conn.in_transaction:
            conn.commit()
        conn.execute("BEGIN IMMEDIATE")  # DDL is transactional in SQLite
        try:
            for number in self.pending_migrations():  # read again under the lock
                MIGRATIONS[number - 1](self.db)
                self.db.execute(f"PRAGMA user_version = {int(number)}")
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self.db.conn:
            yield

    # -- cache ------------------------------------------------------------------------------
    @staticmethod
    def cache_table(sobject: str) -> str:
        if not _SOBJECT.match(sobject):
            raise ConfigError(f"not an sObject name: {sobject!r}")
        return f"cache_{sobject}"

    def save_page(self, page: Page, name_field: str, synced_at: dt.datetime) -> str | None:
        """Upsert one page of records and drop its deleted ids, in one transaction.

        Returns the highest SystemModstamp in the page (the new safe watermark)."""
        table = self.cache_table(page.sobject)
        rows = []
        newest: str | None = None
        for raw in page.records:  # each with an Id and a SystemModstamp (see pipeline._usable)
            rid = raw[schema.ID]
            stamp = str(raw[schema.SYSTEM_MODSTAMP])
            newest = max(newest or stamp, stamp)
            rows.append(
                {
                    "id": rid,
                    "system_modstamp": stamp,
                    "name": _text(raw.get(name_field)),
                    "what_id": _text(raw.get(schema.WHAT_ID)),
                    "who_id": _text(raw.get(schema.WHO_ID)),
                    "parent_id": _text(raw.get(schema.PARENT_ID)),
                    "raw": json.dumps(
                        {**raw, schema.ATTRIBUTES: {"type": page.sobject}}, separators=(",", ":")
                    ),
                    "synced_at": synced_at.isoformat(),
                }
            )
        with self.atomic():
            tbl = self.db.table(table)
            if rows:
                tbl.upsert_all(rows, pk="id", alter=True)
            elif not tbl.exists():
                tbl.create(
                    {
                        "id": str,
                        "system_modstamp": str,
                        "name": str,
                        "what_id": str,
                        "who_id": str,
                        "parent_id": str,
                        "raw": str,
                        "synced_at": str,
                    },
                    pk="id",
                )
            if page.deleted_ids:
                ids = list(page.deleted_ids)
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" for _ in chunk)
                    self.db.execute(f"DELETE FROM [{table}] WHERE id IN ({marks})", chunk)
        return newest

    def watermark(self, sobject: str, fields_hash: str) -> dt.datetime | None:
        """The safe SystemModstamp to resume from, or None for a full read."""
        try:
            row = self.db.table("watermarks").get(sobject)
        except sqlite_utils.db.NotFoundError:
            return None
        if row["fields_hash"] != fields_hash or not row["last_modstamp"]:
            return None
        if not self.db.table(self.cache_table(sobject)).exists():
            return None
        return parse_sf_datetime(row["last_modstamp"])

    def set_watermark(self, sobject: str, stamp: str, fields_hash: str, now: dt.datetime) -> None:
        self.db.table("watermarks").upsert(
            {
                "sobject": sobject,
                "last_modstamp": stamp,
                "fields_hash": fields_hash,
                "updated_at": now.isoformat(),
            },
            pk="sobject",
        )

    def reset_cache(self, sobject: str) -> None:
        """Forget an object's cache (its field list changed): the next read is full."""
        with self.atomic():
            table = self.cache_table(sobject)
            if self.db.table(table).exists():
                self.db.table(table).drop()
            self.db.execute("DELETE FROM watermarks WHERE sobject = ?", [sobject])

    def load_snapshot(self, sobjects: Iterable[str]) -> tuple[Snapshot, list[RecordError]]:
        records: list[Record] = []
        problems: list[RecordError] = []
        for sobject in sorted(set(sobjects)):
            table = self.cache_table(sobject)
            if not self.db.table(table).exists():
                continue
            for row in self.db.execute(f"SELECT id, raw FROM [{table}]").fetchall():
                try:
                    records.append(Record.from_json(json.loads(row[1]), sobject))
                except (ValueError, RecordError) as exc:
                    problems.append(
                        exc
                        if isinstance(exc, RecordError)
                        else RecordError(row[0], "raw", f"unreadable JSON: {exc}")
                    )
        return Snapshot.build(records), problems

    def cached_record(self, record_id: str) -> Record | None:
        for table in self.db.table_names():
            if not table.startswith("cache_"):
                continue
            row = self.db.execute(f"SELECT raw FROM [{table}] WHERE id = ?", [record_id]).fetchone()
            if row:
                return Record.from_json(json.loads(row[0]))
        return None

    # -- runs -------------------------------------------------------------------------------
    def begin_run(self, run_id: str, mode: str, as_of: dt.date, now: dt.datetime) -> None:
        self.db.table("runs").insert(
            {
                "run_id": run_id,
                "started_at": now.isoformat(),
                "mode": mode,
                "as_of": as_of.isoformat(),
                "status": "running",
            }
        )

    def set_run_org(self, run_id: str, org_id: str) -> None:
        """The org the run reads and writes; its audit rows carry the same Id."""
        self.db.table("runs").update(run_id, {"org_id": org_id})
        self._run_orgs[run_id] = org_id

    def _run_org(self, run_id: str) -> str | None:
        if run_id not in self._run_orgs:
            row = self.db.execute("SELECT org_id FROM runs WHERE run_id = ?", [run_id]).fetchone()
            self._run_orgs[run_id] = row[0] if row else None
        return self._run_orgs[run_id]

    def finish_run(
        self, run_id: str, status: str, summary: Mapping[str, Any], now: dt.datetime
    ) -> None:
        self.db.table("runs").update(
            run_id,
            {
                "finished_at": now.isoformat(),
                "status": status,
                "summary": json.dumps(summary, default=str),
            },
        )

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.db.table("runs").rows_where(order_by="started_at desc", limit=limit))

    # -- ledger -----------------------------------------------------------------------------
    def ledger_status(self, keys: Iterable[str]) -> dict[str, Outcome]:
        wanted = list(keys)
        out: dict[str, Outcome] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            marks = ",".join("?" for _ in chunk)
            for key, status in self.db.execute(
                f"SELECT key, status FROM ledger WHERE key IN ({marks})", chunk
            ).fetchall():
                out[key] = Outcome(status)
        return out

    def ledger_entries(
        self,
        status: Outcome | None = None,
        target_id: str | None = None,
    ) -> list[LedgerEntry]:
        clauses, params = [], []
        if status:
            clauses.append("status = ?")
            params.append(status.value)
        if target_id:
            clauses.append("target_id = ?")
            params.append(target_id)
        where = " AND ".join(clauses) or None
        return [
            LedgerEntry(
                r["key"],
                r["run_id"],
                Outcome(r["status"]),
                r["updated_at"],
                r["sf_id"],
                r["error_code"],
                action_from_dict(json.loads(r["action"])),
            )
            for r in self.db.table("ledger").rows_where(where, params, order_by="updated_at")
        ]

    def record_planned(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        """Enter new keys as planned; a key the ledger already holds keeps its status, and a
        still-open one (planned, conflict) takes the new plan's version of the action."""
        rows = [_ledger_row(a, run_id, Outcome.PLANNED, now) for a in actions]
        with self.atomic():
            self.db.table("ledger").insert_all(rows, pk="key", ignore=True)
            for row in rows:
                self.db.execute(
                    "UPDATE ledger SET run_id = ?, action = ?, updated_at = ? "
                    "WHERE key = ? AND status IN ('planned', 'conflict')",
                    [run_id, row["action"], row["updated_at"], row["key"]],
                )

    def mark_sent(self, actions: Sequence[Action], run_id: str, now: dt.datetime) -> None:
        """Before a write: the intent row in the audit and ``sent`` in the ledger, together."""
        with self.atomic():
            for action in actions:
                self.db.table("ledger").upsert(
                    _ledger_row(action, run_id, Outcome.SENT, now), pk="key"
                )
                self._audit(run_id, now, "intent", action, Outcome.SENT, None)

    def record_results(
        self,
        actions: Mapping[str, Action],
        results: Sequence[ActionResult],
        run_id: str,
        now: dt.datetime,
        event: str = "outcome",
    ) -> None:
        """After a write (or a decision not to write): ledger status + outcome audit row."""
        with self.atomic():
            for result in results:
                action = actions[result.key]
                row = _ledger_row(action, run_id, result.outcome, now)
                row.update(sf_id=result.sf_id, error_code=result.error_code, message=result.message)
                self.db.table("ledger").upsert(row, pk="key")
                self._audit(run_id, now, event, action, result.outcome, result)

    def record_skipped_steps(
        self, entries: Sequence[tuple[Action, str]], run_id: str, now: dt.datetime
    ) -> None:
        """Catch-up skips and superseded actions: ledger ``skipped`` with the reason."""
        with self.atomic():
            fresh = self.ledger_status(a.key for a, _ in entries)
            for action, why in entries:
                if action.key in fresh:
                    continue
                row = _ledger_row(action, run_id, Outcome.SKIPPED, now)
                row["message"] = why
                self.db.table("ledger").insert(row, pk="key")
                self._audit(
                    run_id,
                    now,
                    "skipped",
                    action,
                    Outcome.SKIPPED,
                    ActionResult(action.key, Outcome.SKIPPED, message=why),
                )

    def _audit(
        self,
        run_id: str,
        now: dt.datetime,
        event: str,
        action: Action,
        outcome: Outcome,
        result: ActionResult | None,
    ) -> None:
        before, after = _before_after(action)
        self.db.table("audit").insert(
            {
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
            },
            pk="id",
        )

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
    ) -> list[AuditRow]:
        clauses, params = [], []
        for column, value in (
            ("record_id", record_id),
            ("rule", rule),
            ("run_id", run_id),
            ("outcome", outcome),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since:
            clauses.append("ts >= ?")
            params.append(since.isoformat())
        where = " AND ".join(clauses) or None
        return [
            AuditRow(**r)
            for r in self.db.table("audit").rows_where(where, params, order_by="id", limit=limit)
        ]

    # -- run lock ---------------------------------------------------------------------------
    def acquire_lock(self, holder: str, now: dt.datetime, ttl: dt.timedelta) -> None:
        """Take the run lease, or raise LockHeldError naming who holds it and until when."""
        with self.atomic():
            if not self.db.conn.in_transaction:
                self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT holder, pid, host, expires_at FROM run_lock WHERE name = 'run'"
            ).fetchone()
            if (
                row
                and row[0] != holder
                and dt.datetime.fromisoformat(row[3]) > now
                and not _dead_here(row[1], row[2])
            ):
                raise LockHeldError(
                    f"another run holds the lock: {row[0]} (pid {row[1]} on {row[2]}) "
                    f"until {row[3]}; it is taken over after that if the run died"
                )
            self.db.table("run_lock").upsert(
                {
                    "name": "run",
                    "holder": holder,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "acquired_at": now.isoformat(),
                    "expires_at": (now + ttl).isoformat(),
                },
                pk="name",
            )

    def renew_lock(self, holder: str, now: dt.datetime, ttl: dt.timedelta) -> bool:
        """Push the lease's expiry out while its run is alive; False if it is no longer ours."""
        with self.atomic():
            cursor = self.db.execute(
                "UPDATE run_lock SET expires_at = ? WHERE name = 'run' AND holder = ?",
                [(now + ttl).isoformat(), holder],
            )
        return cursor.rowcount == 1

    def release_lock(self, holder: str) -> None:
        with self.atomic():
            self.db.execute("DELETE FROM run_lock WHERE name = 'run' AND holder = ?", [holder])

    # -- retention --------------------------------------------------------------------------
    def purge(
        self,
        cutoff_for: Callable[[str], dt.datetime],
        audit_cutoff: dt.datetime,
        dry_run: bool = False,
    ) -> dict[str, int]:
        """Drop cached records last modified before their object's cutoff (``cutoff_for``
        the sObject name), and audit rows and
        ledger entries older than ``audit_cutoff`` (they name records too); with ``dry_run``,
        only count them. Old ledger keys are safe to forget: the rules never plan a step that
        old again, and the keys written into Salesforce still stop a repeat."""
        removed: dict[str, int] = {}
        with self.atomic():
            for table in self.db.table_names():
                if not table.startswith("cache_"):
                    continue
                sobject = table.removeprefix("cache_")
                cutoff = cutoff_for(sobject)
                stale = [
                    r[0]
                    for r in self.db.execute(
                        f"SELECT id, system_modstamp FROM [{table}]"
                    ).fetchall()
                    if r[1] and parse_sf_datetime(r[1]) < cutoff
                ]
                for i in range(0, 0 if dry_run else len(stale), 500):
                    chunk = stale[i : i + 500]
                    self.db.execute(
                        f"DELETE FROM [{table}] WHERE id IN ({','.join('?' for _ in chunk)})", chunk
                    )
                removed[sobject] = len(stale)
            old_audit = [audit_cutoff.isoformat()]
            removed["audit"] = self.db.execute(
                "SELECT count(*) FROM audit WHERE ts < ?", old_audit
            ).fetchone()[0]
            removed["ledger"] = self.db.execute(
                "SELECT count(*) FROM ledger WHERE updated_at < ?", old_audit
            ).fetchone()[0]
            if not dry_run:
                self.db.execute("DELETE FROM audit WHERE ts < ?", old_audit)
                self.db.execute("DELETE FROM ledger WHERE updated_at < ?", old_audit)
        return removed


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
        "action": json.dumps(action.to_dict(), sort_keys=True),
        "planned_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }


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
