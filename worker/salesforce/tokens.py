"""Where a rotated OAuth refresh token is kept between runs.

An app with refresh token rotation answers each refresh with a new refresh token, and the
old one stops working. The new one is written to a file beside the SQLite database
(``salesforce-refresh-token.json``, mode 0600, replaced atomically) with a fingerprint of
the ``SF_REFRESH_TOKEN`` it descends from. Later runs use the stored token for as long as
``SF_REFRESH_TOKEN`` keeps that fingerprint; an admin who sets a new ``SF_REFRESH_TOKEN``
starts afresh and the stored one is ignored.

On a host whose disk does not survive a restart (a Heroku dyno), the stored token is lost
with it: there, turn rotation off for the app or use the JWT bearer or client credentials
flow.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import structlog
from pydantic import SecretStr

from worker.errors import ConfigError

FILE_NAME = "salesforce-refresh-token.json"

log = structlog.get_logger(__name__)


def _fingerprint(token: SecretStr) -> str:
    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()[:24]


class RefreshTokenFile:
    """The latest refresh token descending from the configured one."""

    def __init__(self, folder: Path, configured: SecretStr | None) -> None:
        self.path = folder / FILE_NAME
        self._seed = _fingerprint(configured) if configured else None
        self._configured = configured

    def current(self) -> SecretStr | None:
        """The stored token if it descends from the configured one, else the configured one."""
        if self._seed is None:
            return None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self._configured
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.path}: cannot read the stored refresh token ({type(exc).__name__}); "
                "delete the file to start again from SF_REFRESH_TOKEN"
            ) from None
        if not isinstance(data, dict) or data.get("descends_from") != self._seed:
            return self._configured
        token = data.get("refresh_token")
        return SecretStr(token) if isinstance(token, str) and token else self._configured

    def save(self, token: str) -> None:
        """Keep a rotated token; called by the authenticator before it uses the new session."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"descends_from": self._seed, "refresh_token": token})
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        log.info("salesforce.refresh_token_stored", path=str(self.path))
