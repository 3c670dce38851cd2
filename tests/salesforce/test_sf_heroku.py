"""Heroku, played on one machine: one-off dynos whose disk is new every run, one PostgreSQL
database (``DATABASE_URL``) holding the store for all of them."""

from __future__ import annotations

import datetime as dt
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from worker.store import Store

from .test_sf_cli import (
    EXIT_LOCKED,
    EXIT_OK,
    assert_applied_once,
    assert_no_duplicates,
    live_org,
    run_cli,
)
from .test_sf_cli import local_plan as local_plan  # the fixture: the demo org's offline plan

# The real CLI in subprocesses: `pytest -m "not slow"` leaves these out of a quick loop.
pytestmark = pytest.mark.slow


def test_dynos_with_wiped_disks_share_one_history(
    tmp_path: Path, postgres_url: str, local_plan: dict[str, Any]
) -> None:
    with live_org(tmp_path / "dyno", postgres_url) as live:
        first = live.cli("run")
        assert first.returncode == EXIT_OK, first.stderr[-2000:]
        assert_applied_once(live.org, local_plan["actions"])

        # The next one-off dyno starts in another, empty folder.
        dyno = tmp_path / "dyno-2"
        dyno.mkdir()
        env = {**live.env, "HOME": str(dyno), "WORKER_DB_PATH": str(dyno / "w.db")}
        live.server.reset_calls()
        second = run_cli(["run", "--as-of-is-intended"], env, dyno)
        assert second.returncode == EXIT_OK, second.stderr[-2000:]
        assert live.writes() == []  # nothing new the same day
        assert list(dyno.iterdir()) == []  # nothing kept on the dyno's disk
        assert not list(live.folder.glob("w.db*"))

        runs = live.cli("runs", "--format", "jsonl").stdout.splitlines()
        assert len(runs) == 2  # the second dyno sees the first one's run
        applied = [r for r in live.audit() if r["outcome"] == "applied"]
        assert len(applied) >= len(local_plan["actions"])  # and its audit log

        # A third dyno starting while another holds the lease is refused (exit 3).
        with Store.open(postgres_url) as store:
            now = dt.datetime.now(dt.UTC)
            store.acquire_lock("scheduler-run", now, dt.timedelta(minutes=30))
            assert store.lock_holder()["pid"] == os.getpid()  # type: ignore[index]
            third = live.cli("run")
            assert third.returncode == EXIT_LOCKED, third.stderr[-2000:]
            assert "scheduler-run" in third.stderr
            assert socket.gethostname() in third.stderr
            store.release_lock("scheduler-run")
        assert_no_duplicates(live.org)
