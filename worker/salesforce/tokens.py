"""Where a rotated OAuth refresh token is kept between runs: in the worker's store.

An app with refresh token rotation answers each refresh with a new refresh token, and the
old one stops working. The new one is saved in the store's ``store_secrets`` table (SQLite
or PostgreSQL, see :mod:`worker.store`) with a fingerprint of the ``SF_REFRESH_TOKEN`` it
descends from. Later runs use the stored token for as long as ``SF_REFRESH_TOKEN`` keeps
that fingerprint; an admin who sets a new ``SF_REFRESH_TOKEN`` starts afresh and the stored
one is ignored.

With ``DATABASE_URL`` (Heroku Postgres) the token survives a dyno's wiped disk. On SQLite it
lives as long as the database file. A token left by an earlier version in
``salesforce-refresh-token.json`` beside the SQLite file is moved into the store once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import structlog
from pydantic import SecretStr

from worker.store import Store

ENTRY = "salesforce_refresh_token"
LEGACY_FILE_NAME = "salesforce-refresh-token.json"

log = structlog.get_logger(__name__)


def _fingerprint(token: SecretStr) -> str:
    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()[:24]


class RefreshTokenStore:
    """The latest refresh token descending from the configured one."""

    def __init__(
        self, store: Store, configured: SecretStr | None, legacy_folder: Path | None = None
    ) -> None:
        self._store = store
        self._configured = configured
        self._seed = _fingerprint(configured) if configured else None
        self._legacy = legacy_folder / LEGACY_FILE_NAME if legacy_folder else None

    def current(self) -> SecretStr | None:
        """The stored token if it descends from the configured one, else the configured one."""
        if self._seed is None:
            return None
        self._adopt_legacy_file()
        stored = self._store.secret(ENTRY)
        if stored is None or stored[0] != self._seed or not stored[1]:
            return self._configured
        return SecretStr(stored[1])

    def save(self, token: str) -> None:
        """Keep a rotated token; called by the authenticator before it uses the new session."""
        if self._seed is None:
            return
        self._store.save_secret(ENTRY, self._seed, token, dt.datetime.now(dt.UTC))
        log.info("salesforce.refresh_token_stored", backend=self._store.backend)

    def _adopt_legacy_file(self) -> None:
        if self._legacy is None or not self._legacy.is_file():
            return
        try:
            data = json.loads(self._legacy.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.warning("salesforce.refresh_token_file_unreadable", path=str(self._legacy))
            return
        token = data.get("refresh_token") if isinstance(data, dict) else None
        seed = data.get("descends_from") if isinstance(data, dict) else None
        if isinstance(token, str) and isinstance(seed, str) and self._store.secret(ENTRY) is None:
            self._store.save_secret(ENTRY, seed, token, dt.datetime.now(dt.UTC))
        self._legacy.unlink()
        log.info("salesforce.refresh_token_moved_into_store", path=str(self._legacy))
