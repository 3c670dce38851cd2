"""The bench runs (small N) against the fake org in its own process and stays at the floor."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_org_children() -> list[int]:
    """Pids of this process's children running the bench's fake org (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines() if line[:5] == "PPid:"), "")
        if ppid == str(os.getpid()) and b"fake_server.py" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's folder for the test, to see that the bench leaves nothing behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_small_bench_cycle(
    bench: ModuleType, temp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench.main(["--records", "3000", "--actions", "1200"])
    last: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "records",
        "actions",
        "api_calls",
        "min_api_calls",
        "c_min",
        "c_plain",
        "calls_by_kind",
        "seconds",
        "peak_rss_mb",
        "server_api_calls",
        "fake_org_peak_rss_mb",
        "sqlite_mb",
    } <= last.keys()
    assert (last["records"], last["actions"]) == (3000, 1200)
    # reads: 1 composite; stamps: every target, 960 opportunities and 240 cases (2 + 1
    # queries of up to 800 Ids, 1 composite); writes: lookup + 2 idempotent composites (3
    # task + 3 update chunks) + 1 create composite (2 chunks)
    assert last["api_calls"] == 6
    assert last["calls_by_kind"] == {"query": 1, "stamps": 1, "lookup": 1, "write": 3}
    # The worker counted what the server answered (the bench also checks after each phase).
    assert last["server_api_calls"] == last["api_calls"]
    assert last["server_calls_by_kind"] == {"composite": 6}
    # Reads and writes at the floor; the stamp re-read and the key-marker lookup
    # are the only calls on top of it.
    by_kind = last["calls_by_kind"]
    assert last["api_calls"] - by_kind["stamps"] - by_kind["lookup"] <= last["min_api_calls"]
    assert last["api_calls"] < last["c_plain"]
    assert last["sqlite_mb"] > 0
    assert last["fake_org_peak_rss_mb"] > 0
    # The fake org ran elsewhere and is gone, with its certificate and the SQLite file.
    assert fake_org_children() == []
    assert list(temp_root.iterdir()) == []


def test_fake_org_process_is_stopped_on_interrupt(bench: ModuleType, tmp_path: Path) -> None:
    fake = bench.FakeOrgProcess({"Case": 10}, tmp_path, ids={"Case": 3})

    def interrupted() -> None:
        with fake:
            assert fake.url.startswith("https://127.0.0.1:")
            assert fake.ids == {"Case": [f"500{i:012d}AAA" for i in range(3)]}
            assert fake.stats()["api_calls"] == 0
            raise KeyboardInterrupt  # a Ctrl-C in the middle of the cycle

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert fake.proc.returncode == 0  # told to stop, and it did
    assert fake_org_children() == []
    fake.close()  # twice is harmless
