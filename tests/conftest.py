"""Shared fixtures: the real mapping, the demo org, and a fresh local-org workspace."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from worker import redact
from worker.mapping import LoadedMapping, load_mapping
from worker.rules import rule_models
from worker.store import Store, database_url

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORG = ROOT / "fixtures" / "demo-org"
DEFAULT_MAPPING = ROOT / "mappings" / "default.toml"


@pytest.fixture(scope="session")
def mapping() -> LoadedMapping:
    return load_mapping(DEFAULT_MAPPING, rule_models())


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A private copy of the demo org, so a test may change its records."""
    target = tmp_path / "demo-org"
    shutil.copytree(DEMO_ORG, target)
    return target


@pytest.fixture
def utc() -> dt.timezone:
    return dt.UTC


# -- the store on both backends -------------------------------------------------------------
# PostgreSQL tests run against the server named by SOP_WORKER_TEST_DATABASE_URL (`.ci/run`
# starts a throwaway one), each test in a schema of its own. Without it they skip, unless
# SOP_WORKER_REQUIRE_POSTGRES=1 (CI), where a missing server is a failure.
PG_ENV = "SOP_WORKER_TEST_DATABASE_URL"
PG_HINT = (
    f"PostgreSQL tests skipped: set {PG_ENV} to a server's URL "
    "(`.ci/postgres start /tmp/pg` starts one and prints it)"
)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A URL whose connections use a fresh, empty schema (dropped afterwards); skips (or, in
    CI, fails) when no server is configured."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("SOP_WORKER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{PG_ENV} is not set, and PostgreSQL is required here")
        pytest.skip(PG_HINT)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(database_url(base), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = database_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store lives, on each backend in turn: a SQLite file or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "w.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_target: str) -> Iterator[Store]:
    with Store.open(store_target) as opened:
        yield opened


def execute(store: Store, sql: str, params: Mapping[str, Any] | None = None) -> Any:
    """Raw SQL against a store, for tests that tamper with its rows."""

    def work(conn: sa.Connection) -> Any:
        result = conn.execute(sa.text(sql), dict(params or {}))
        return result.fetchall() if result.returns_rows else result.rowcount

    return store.transaction(work)


@pytest.fixture(autouse=True)
def _no_secrets_from_other_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret values registered by one test (the settings it loaded) stay in that test."""
    monkeypatch.setattr(redact, "_secrets", redact._Secrets())
