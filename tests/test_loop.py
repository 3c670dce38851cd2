"""`run --loop`, as the Procfile's worker dyno runs it: cycles until SIGTERM, then a clean
exit between cycles, the lease released."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.store import Store

from .conftest import DEFAULT_MAPPING

# The real CLI in subprocesses: `pytest -m "not slow"` leaves these out of a quick loop.
pytestmark = pytest.mark.slow


def finished_runs(db: Path) -> list[dict[str, object]]:
    if not db.exists():
        return []
    store = Store.open(db)
    try:
        return [r for r in store.runs() if r["finished_at"]]
    finally:
        store.close()


def test_the_loop_stops_cleanly_on_sigterm(demo_copy: Path, tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "WORKER_LOG_FORMAT": "json",
        "WORKER_MAPPING": str(DEFAULT_MAPPING),
    }
    cmd = [sys.executable, "-m", "worker", "run", "--loop", "--interval", "10",
           "--local-org", str(demo_copy), "--db-path", str(db)]  # fmt: skip
    log = tmp_path / "worker.log"
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the worker
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while not finished_runs(db) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert finished_runs(db), f"no cycle finished:\n{log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGTERM)  # mid-pause: the dyno manager stopping it
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log.read_bytes()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"run.loop_stopped" in err
    runs = finished_runs(db)
    assert len(runs) == 1  # the pause was cut short, no second cycle
    assert runs[0]["status"] == "ok, with errors", err.decode()[-3000:]
    store = Store.open(db)
    try:
        assert store.lock_holder() is None
    finally:
        store.close()
