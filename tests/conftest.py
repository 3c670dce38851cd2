"""Shared fixtures: the real mapping, the demo org, and a fresh local-org workspace."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from worker.mapping import LoadedMapping, load_mapping
from worker.rules import rule_models

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
