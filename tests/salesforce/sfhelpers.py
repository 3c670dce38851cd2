"""Helpers shared by the Salesforce gateway tests (imported, unlike conftest fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tenacity

from worker.salesforce.client import SalesforceClient
from worker.salesforce.settings import SalesforceSettings

from .fakeorg import FakeOrg

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "salesforce"


def load_fixture(name: str) -> Any:
    """A recorded, scrubbed Salesforce response from fixtures/salesforce/."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class Sleeps:
    """Records the pauses the code asked for instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def make_client(org: FakeOrg, sleeps: Sleeps | None = None, **overrides: Any) -> SalesforceClient:
    """A client on the fake org that never waits between retries."""
    read_only = bool(overrides.pop("read_only", False))
    return SalesforceClient(
        org.settings(**overrides),
        wait=tenacity.wait_none(),
        sleep=sleeps if sleeps is not None else Sleeps(),
        read_only=read_only,
    )


def settings(**values: Any) -> SalesforceSettings:
    """Settings from keyword values only (no .env, no environment)."""
    return SalesforceSettings(_env_file=None, **values)
