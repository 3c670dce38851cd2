"""The bench runs (small N) and stays at the call floor."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "run_bench.py"


def test_small_bench_cycle(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("run_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--records", "3000", "--actions", "1200"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "records",
        "actions",
        "api_calls",
        "min_api_calls",
        "seconds",
        "peak_rss_mb",
    } <= last.keys()
    assert (last["records"], last["actions"]) == (3000, 1200)
    # reads: 1 composite; stamps: 1 composite (480 ids, 3 queries); writes: lookup + 2
    # idempotent composites (3 task + 3 update chunks) + 1 create composite (2 chunks)
    assert last["api_calls"] == 6
    assert last["api_calls"] < last["c_plain"]
