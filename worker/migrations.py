"""The store's tables on both backends (SQLite, PostgreSQL), and the one list of migrations.

:data:`TABLES` is the current schema, the one :mod:`worker.store` queries. :data:`MIGRATIONS`
brings any database there: each entry is a function of one open transaction, written
against the schema as it stood when the entry was added (its own table definitions, never
:data:`TABLES`), so an old database and a new one end with the same tables. The version
reached is kept in ``schema_version``; a SQLite file made before that table existed says
its version in ``PRAGMA user_version``.

Two processes starting at once migrate once: the migration transaction first takes the
database's write lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL transaction-level advisory
lock), then reads the version again.

Types that differ: a record's raw REST JSON is ``JSONB`` on PostgreSQL and JSON text on
SQLite (:class:`RawJson`); instants are ISO 8601 text on both, so they sort and compare
the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

# One id for the migration lock, in every PostgreSQL database (pg_advisory_xact_lock).
MIGRATION_LOCK_ID = 0x50_57_6F_72  # "SWor"


class RawJson(sa.types.TypeDecorator[Any]):
    """A record's raw JSON: JSONB on PostgreSQL; JSON text on SQLite, handed back as text
    so that one damaged row is reported on its own instead of failing the whole read."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql" or isinstance(value, str):
            return value
        return orjson.dumps(value).decode()


def _id_column() -> sa.Column[int]:
    # BIGINT identity on PostgreSQL; INTEGER PRIMARY KEY (the rowid) on SQLite.
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True)


def _text(*names: str) -> list[sa.Column[str]]:
    return [sa.Column(name, sa.Text) for name in names]


def _v1_tables(meta: sa.MetaData) -> None:
    """The schema of the first release (per-object ``cache_<sObject>`` tables aside)."""
    sa.Table(
        "watermarks",
        meta,
        sa.Column("sobject", sa.Text, primary_key=True),
        *_text("last_modstamp", "fields_hash", "updated_at"),
    )
    sa.Table(
        "runs",
        meta,
        sa.Column("run_id", sa.Text, primary_key=True),
        *_text("started_at", "finished_at", "mode", "as_of", "status", "summary"),
    )
    sa.Table(
        "ledger",
        meta,
        sa.Column("key", sa.Text, primary_key=True),
        *_text(
            "run_id",
            "rule",
            "sop",
            "step",
            "kind",
            "target_id",
            "target_name",
            "status",
            "sf_id",
            "error_code",
            "message",
            "action",
            "planned_at",
            "updated_at",
        ),
        sa.Index("idx_ledger_status", "status"),
        sa.Index("idx_ledger_target_id", "target_id"),
    )
    sa.Table(
        "audit",
        meta,
        _id_column(),
        *_text(
            "run_id",
            "ts",
            "actor",
            "event",
            "key",
            "rule",
            "sop",
            "step",
            "kind",
            "record_id",
            "record_name",
            "before",
            "after",
            "outcome",
            "error_code",
            "message",
            "reason",
        ),
        *(sa.Index(f"idx_audit_{c}", c) for c in ("record_id", "rule", "run_id", "ts", "outcome")),
    )
    sa.Table(
        "run_lock",
        meta,
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("holder", sa.Text),
        sa.Column("pid", sa.Integer),
        *_text("host", "acquired_at", "expires_at"),
    )


# Migration 2: the Id of the org each run read and wrote, on its run and each audit row.
ORG_ID_COLUMNS = (("runs", "org_id"), ("audit", "org_id"))


def _v2(conn: Connection) -> None:
    """The Id of the org each run read and wrote, on its run and on each audit row."""
    for table, column in ORG_ID_COLUMNS:
        conn.execute(sa.text(f'ALTER TABLE "{table}" ADD COLUMN "{column}" TEXT'))


def _v3_tables(meta: sa.MetaData) -> None:
    """One record cache for every sObject (Salesforce Ids are unique across objects), and
    the store's secrets (a rotated refresh token) in the database instead of a file."""
    sa.Table(
        "records",
        meta,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("sobject", sa.Text, nullable=False),
        *_text("system_modstamp", "name", "what_id", "who_id", "parent_id"),
        sa.Column("raw", RawJson, nullable=False),
        sa.Column("synced_at", sa.Text),
        sa.Index("idx_records_sobject", "sobject", "system_modstamp"),
    )
    sa.Table(
        "store_secrets",
        meta,
        sa.Column("name", sa.Text, primary_key=True),
        *_text("descends_from", "value", "updated_at"),
    )


def _create(define: Callable[[sa.MetaData], None]) -> Callable[[Connection], None]:
    def migrate(conn: Connection) -> None:
        meta = sa.MetaData()
        define(meta)
        meta.create_all(conn)

    migrate.__doc__ = define.__doc__
    return migrate


def _v3(conn: Connection) -> None:
    """The per-object cache tables give way to ``records``; the cache is read again from
    the org (watermarks cleared), the runs, ledger and audit are kept."""
    _create(_v3_tables)(conn)
    for name in sa.inspect(conn).get_table_names():
        if name.startswith("cache_"):
            conn.execute(sa.text(f'DROP TABLE "{name}"'))
    conn.execute(sa.text("DELETE FROM watermarks"))


# Migration 4: a watermark is a cursor on (stamp, Id), with the time of the read it came from.
WATERMARK_CURSOR_COLUMNS = ("last_id", "read_at")


def _v4(conn: Connection) -> None:
    """Each watermark keeps the Id of the last record read at its stamp and when that read
    began, so an incremental read resumes after it instead of reading its stamp again."""
    for column in WATERMARK_CURSOR_COLUMNS:
        conn.execute(sa.text(f'ALTER TABLE "watermarks" ADD COLUMN "{column}" TEXT'))


def _v5(conn: Connection) -> None:
    """An index on each object's records in Id order, so a stored snapshot pages through
    an object (``sobject = ? AND id > ? ORDER BY id``) without sorting all of it for each
    page; on PostgreSQL in byte order, the order the pages are read in."""
    order = ' COLLATE "C"' if conn.dialect.name == "postgresql" else ""
    conn.execute(sa.text(f"CREATE INDEX idx_records_sobject_id ON records (sobject, id{order})"))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _create(_v1_tables),
    _v2,
    _v3,
    _v4,
    _v5,
)

SCHEMA_VERSION = sa.Table(
    "schema_version", sa.MetaData(), sa.Column("version", sa.Integer, nullable=False)
)

# The current schema, for queries: the tables as the migrations above leave them.
METADATA = sa.MetaData()
_v1_tables(METADATA)
for _table, _column in ORG_ID_COLUMNS:
    METADATA.tables[_table].append_column(sa.Column(_column, sa.Text))
_v3_tables(METADATA)
for _column in WATERMARK_CURSOR_COLUMNS:
    METADATA.tables["watermarks"].append_column(sa.Column(_column, sa.Text))
TABLES = METADATA.tables
