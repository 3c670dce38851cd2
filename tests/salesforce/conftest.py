"""Fixtures for the Salesforce gateway tests: a fake org and clients that never wait.

Every test here runs offline: HTTP goes to ``responses`` (the fake org or recorded
fixtures), retries do not sleep (``tenacity.wait_none()`` and a recording sleep), and the
developer's ``SF_*`` variables or ``.env`` never leak in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from worker.salesforce.client import SalesforceClient

from .fakeorg import FakeOrg
from .sfhelpers import Sleeps, make_client


@pytest.fixture(autouse=True)
def _no_sf_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("SF_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def org() -> Iterator[FakeOrg]:
    with FakeOrg() as fake:
        yield fake


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(org: FakeOrg, sleeps: Sleeps) -> SalesforceClient:
    return make_client(org, sleeps)


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[bytes, bytes]:
    """(private PEM, public PEM) for the JWT bearer tests."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public
