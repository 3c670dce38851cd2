"""Salesforce connection settings: every ``SF_*`` variable, typed and described.

One settings class (:class:`SalesforceSettings`) read from the environment and ``.env``;
secrets are :class:`~pydantic.SecretStr` so they never show in a repr, a log or a traceback.

:func:`check_auth_config` turns the settings into one :class:`AuthMode` and fails with a
:class:`~worker.errors.ConfigError` naming the missing ``SF_`` variable, so a bad setup
stops before the first request rather than with an OAuth error halfway through a run.

Auth modes, in the order ``SF_AUTH=auto`` tries them (renewable sessions first)::

    jwt                SF_CLIENT_ID + SF_USERNAME + SF_PRIVATE_KEY_FILE (or SF_PRIVATE_KEY)
    client_credentials SF_CLIENT_ID + SF_CLIENT_SECRET (SF_LOGIN_URL = your My Domain)
    refresh_token      SF_CLIENT_ID + SF_REFRESH_TOKEN (+ SF_CLIENT_SECRET if the app has one)
    token              SF_INSTANCE_URL + SF_ACCESS_TOKEN (e.g. from ``sf org display``)
    password           SF_CLIENT_ID + SF_CLIENT_SECRET + SF_USERNAME + SF_PASSWORD (legacy)
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError

ENV_PREFIX = "SF_"
_VERSION = re.compile(r"^\d{2,3}\.0$")
# Hosts where the client-credentials flow cannot work: it needs the org's own My Domain.
_GENERIC_LOGIN_HOSTS = frozenset({"login.salesforce.com", "test.salesforce.com"})


class AuthMode(StrEnum):
    AUTO = "auto"
    TOKEN = "token"  # noqa: S105 - mode names, not credentials
    JWT = "jwt"
    CLIENT_CREDENTIALS = "client_credentials"
    REFRESH_TOKEN = "refresh_token"  # noqa: S105
    PASSWORD = "password"  # noqa: S105 - OAuth username-password flow, deprecated


def require_https(url: str, variable: str) -> str:
    """Return ``url`` without a trailing slash, or raise unless it is an https URL."""
    text = url.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{variable} must be an https:// URL (got {parts.scheme or 'no'} scheme)")
    return f"https://{parts.netloc}{parts.path}"


class SalesforceSettings(BaseSettings):
    """Everything the gateway needs to reach one org, from ``SF_*`` variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    # -- where and who ---------------------------------------------------------------------
    auth: AuthMode = Field(
        default=AuthMode.AUTO,
        description="Auth flow: auto|token|jwt|client_credentials|refresh_token|password. "
        "auto picks the first complete one, renewable flows first.",
    )
    instance_url: str | None = Field(
        default=None,
        description="The org's https URL (My Domain). Needed with SF_ACCESS_TOKEN; the OAuth "
        "flows take it from the token response.",
    )
    access_token: SecretStr | None = Field(
        default=None,
        description="A ready session id / access token (e.g. `sf org display`). It cannot be "
        "renewed: when it expires the run stops with an auth error.",
    )
    login_url: str = Field(
        default="https://login.salesforce.com",
        description="OAuth server: https://login.salesforce.com, https://test.salesforce.com "
        "for sandboxes, or the org's My Domain URL (required for client credentials).",
    )
    client_id: str | None = Field(
        default=None, description="Consumer key of the External Client App / Connected App."
    )
    client_secret: SecretStr | None = Field(
        default=None, description="Consumer secret (client credentials, password, refresh)."
    )
    username: str | None = Field(
        default=None, description="Salesforce username (JWT subject, or password flow)."
    )
    password: SecretStr | None = Field(
        default=None, description="Password for the legacy username-password flow."
    )
    security_token: SecretStr | None = Field(
        default=None,
        description="Security token appended to SF_PASSWORD (password flow, untrusted IPs).",
    )
    private_key_file: Path | None = Field(
        default=None, description="PEM private key signing the JWT bearer assertion."
    )
    private_key: SecretStr | None = Field(
        default=None,
        description="The PEM private key itself, for hosts without a writable disk (Heroku "
        "config vars); used when SF_PRIVATE_KEY_FILE is not set.",
    )
    refresh_token: SecretStr | None = Field(
        default=None,
        description="OAuth refresh token. A token the app rotates is kept in the worker's store "
        "(PostgreSQL with DATABASE_URL) and used while this value is unchanged.",
    )
    api_version: str = Field(
        default="66.0",
        description="Pinned REST API version (66.0 = Spring '26); doctor checks the org has it.",
    )

    # -- transport ---------------------------------------------------------------------------
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a TCP/TLS connection."
    )
    read_timeout: float = Field(
        default=120.0, gt=0, description="Seconds to wait for a response once connected."
    )
    max_attempts: int = Field(
        default=5, ge=1, le=20, description="Attempts per request, the first one included."
    )
    retry_max_seconds: float = Field(
        default=120.0, ge=0, description="Total seconds the retries of one request may wait."
    )

    # -- API budget and strategy ----------------------------------------------------------------
    api_reserve_percent: float = Field(
        default=20.0,
        ge=0,
        le=100,
        description="Stop starting new work (a page, a write batch) when the org's remaining "
        "daily API calls fall under this share of its allowance; the next run resumes.",
    )
    run_budget_percent: float = Field(
        default=25.0,
        gt=0,
        le=100,
        description="Stop starting new work once this run has spent this share of the org's "
        "daily allowance.",
    )
    bulk_threshold: int = Field(
        default=10_000,
        ge=0,
        description="Read an object through Bulk API 2.0 when its query matches more rows.",
    )
    overlap_seconds: int = Field(
        default=600,
        ge=0,
        description="Incremental reads read again the rows stamped this many seconds before "
        "the last read began, so rows committed late by Salesforce are not missed "
        "(duplicates are dropped on Id+stamp); older rows resume from a (stamp, Id) cursor.",
    )

    @field_validator("instance_url")
    @classmethod
    def _instance_https(cls, value: str | None) -> str | None:
        return require_https(value, "SF_INSTANCE_URL") if value else None

    @field_validator("login_url")
    @classmethod
    def _login_https(cls, value: str) -> str:
        return require_https(value, "SF_LOGIN_URL")

    @field_validator("api_version")
    @classmethod
    def _version_shape(cls, value: str) -> str:
        text = value.strip().removeprefix("v")
        if not _VERSION.match(text):
            raise ValueError(f"SF_API_VERSION must look like 66.0 (got {value!r})")
        return text

    @field_validator(
        "client_id",
        "username",
        "access_token",
        "client_secret",
        "password",
        "security_token",
        "private_key",
        "refresh_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An empty line in .env (SF_PASSWORD=) means "not set", not "empty password".
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @property
    def timeout(self) -> tuple[float, float]:
        """(connect, read) seconds, as requests takes them."""
        return (self.connect_timeout, self.read_timeout)


def secret_values(settings: SalesforceSettings) -> list[str]:
    """The value of every secret setting that is set (to scrub them from all output)."""
    found = (getattr(settings, name) for name in type(settings).model_fields)
    return [value.get_secret_value() for value in found if isinstance(value, SecretStr)]


def _missing(settings: SalesforceSettings, names: tuple[str, ...]) -> list[str]:
    out = []
    for name in names:
        if name == "private_key_file":
            if settings.private_key_file is None and settings.private_key is None:
                out.append("SF_PRIVATE_KEY_FILE (or SF_PRIVATE_KEY)")
            continue
        if getattr(settings, name) is None:
            out.append(ENV_PREFIX + name.upper())
    return out


_REQUIRED: dict[AuthMode, tuple[str, ...]] = {
    AuthMode.JWT: ("client_id", "username", "private_key_file"),
    AuthMode.CLIENT_CREDENTIALS: ("client_id", "client_secret"),
    AuthMode.REFRESH_TOKEN: ("client_id", "refresh_token"),
    AuthMode.TOKEN: ("instance_url", "access_token"),
    AuthMode.PASSWORD: ("client_id", "client_secret", "username", "password"),
}
# auto: renewable sessions first; client credentials only without a username, so a
# password setup (which also has id + secret) is not mistaken for it.
_AUTO_ORDER = (
    AuthMode.JWT,
    AuthMode.CLIENT_CREDENTIALS,
    AuthMode.REFRESH_TOKEN,
    AuthMode.TOKEN,
    AuthMode.PASSWORD,
)


def resolve_auth_mode(settings: SalesforceSettings) -> AuthMode:
    """The auth flow the settings select (``auto`` resolved), without checking completeness."""
    if settings.auth is not AuthMode.AUTO:
        return settings.auth
    for mode in _AUTO_ORDER:
        if mode is AuthMode.CLIENT_CREDENTIALS and settings.username:
            continue
        if not _missing(settings, _REQUIRED[mode]):
            return mode
    return AuthMode.AUTO


def check_auth_config(settings: SalesforceSettings) -> AuthMode:
    """Resolve the auth mode and check every variable it needs is set.

    Raises :class:`ConfigError` naming the missing ``SF_`` variables.
    """
    mode = resolve_auth_mode(settings)
    if mode is AuthMode.AUTO:
        raise ConfigError(
            "Salesforce auth is not configured: set SF_CLIENT_ID + SF_USERNAME + "
            "SF_PRIVATE_KEY_FILE (JWT), SF_CLIENT_ID + SF_CLIENT_SECRET (client credentials), "
            "SF_CLIENT_ID + SF_REFRESH_TOKEN, or SF_INSTANCE_URL + SF_ACCESS_TOKEN"
        )
    missing = _missing(settings, _REQUIRED[mode])
    if missing:
        raise ConfigError(f"SF_AUTH={mode.value} needs {', '.join(missing)}")
    key_file = settings.private_key_file
    if mode is AuthMode.JWT and key_file is not None and not key_file.is_file():
        raise ConfigError(f"SF_PRIVATE_KEY_FILE: no file at {key_file}")
    if mode is AuthMode.CLIENT_CREDENTIALS:
        host = urlsplit(settings.login_url).netloc.lower()
        if host in _GENERIC_LOGIN_HOSTS:
            raise ConfigError(
                "SF_AUTH=client_credentials needs SF_LOGIN_URL set to the org's My Domain URL "
                f"(https://<domain>.my.salesforce.com), not {host}"
            )
    return mode
