"""Worker settings from the environment (``WORKER_*``), a ``.env`` file, or CLI options.

Salesforce connection settings (``SF_*``) live in :mod:`worker.salesforce.settings`; both
are loaded through :func:`load_settings`, which turns any invalid value into a
:class:`~worker.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import ConfigError
from worker.redact import register_secrets

ENV_PREFIX = "WORKER_"
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def parse_as_of(text: str) -> dt.date:
    """A ``YYYY-MM-DD`` calendar date; :class:`ValueError` saying what is wrong otherwise."""
    match = _ISO_DATE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a date in the form YYYY-MM-DD")
    try:
        return dt.date(*(int(part) for part in match.groups()))
    except ValueError as exc:
        raise ValueError(f"{text.strip()} is not a calendar date ({exc})") from None


class WorkerSettings(BaseSettings):
    """Everything the worker needs besides the Salesforce connection."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    db_path: Path = Field(
        default=Path("var/sop-worker.db"),
        description="SQLite file: record cache, ledger, audit log (created with mode 0600). "
        "Not used when DATABASE_URL is set.",
    )
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL for the whole store (postgres:// or postgresql://, Heroku's "
        "convention). Unset: SQLite at WORKER_DB_PATH.",
    )
    mapping: Path = Field(
        default=Path("mappings/default.toml"),
        description="Mapping file: SOP parameters, field API names, picklist values.",
    )
    local_org: Path | None = Field(
        default=None,
        description="Use an org folder on disk (e.g. fixtures/demo-org) as source and sink "
        "instead of Salesforce; writes go to a working copy beside the database.",
    )
    as_of: dt.date | None = Field(
        default=None,
        description="Evaluate as of this date (YYYY-MM-DD), within five years of the org's "
        "today. Default: the local org's manifest date, else today in the org's time zone "
        "(the mapping's org.time_zone). A run or apply on a live org refuses any other day "
        "than today unless told it is intended.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest log level written."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console on a terminal, JSON lines otherwise."
    )
    interval_seconds: int = Field(
        default=900, ge=10, description="Pause between cycles with `run --loop`."
    )
    progress_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Off a terminal, log a `progress` event this often during a run.",
    )
    lock_ttl_seconds: int = Field(
        default=1800,
        ge=30,
        description="Run lease length; a lease older than this (its process died) is taken over.",
    )

    @property
    def store_target(self) -> str | Path:
        """Where the store is: DATABASE_URL, else the SQLite file."""
        return self.database_url.get_secret_value() if self.database_url else self.db_path

    @property
    def legacy_state_dir(self) -> Path | None:
        """The folder beside a SQLite file, where older versions kept state files."""
        return None if self.database_url else self.db_path.parent

    @field_validator("as_of", mode="before")
    @classmethod
    def _calendar_date(cls, value: Any) -> Any:
        return parse_as_of(value) if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def load_settings(**overrides: Any) -> WorkerSettings:
    """Settings from environment and ``.env``, with CLI ``overrides`` (None = not given)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = WorkerSettings(**given)
    except ValidationError as exc:
        raise settings_error(exc, ENV_PREFIX) from None
    if settings.database_url:  # its password is a secret wherever it might be echoed
        url = settings.database_url.get_secret_value()
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        register_secrets([url, *([unquote(password), password] if password else [])])
    return settings


def settings_error(exc: ValidationError, prefix: str) -> ConfigError:
    """One line per bad value, each naming its environment variable."""
    lines = []
    for err in exc.errors():
        name = prefix + "_".join(str(p) for p in err["loc"]).upper()
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = (
            ""
            if got is None or "secret" in name.lower() or "token" in name.lower()
            else (f" (got {got!r})")
        )
        lines.append(f"{name}: {msg}{shown}")
    return ConfigError("invalid settings\n  " + "\n  ".join(lines))
