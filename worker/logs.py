"""structlog setup: JSON lines off a terminal, readable console on one, secrets redacted.

Called once by the CLI (an edge); library code only calls ``structlog.get_logger()``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from worker.redact import REDACTED, is_secret_key, redact_value


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named keys, scrub secret values and shapes."""
    for key in list(event_dict):
        event_dict[key] = REDACTED if is_secret_key(key) else redact_value(event_dict[key])
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> bool:
    """Set up structlog; True when events go out as JSON lines."""
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,  # after format_exc_info: a traceback's text is scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    return not console


def log_fatal(message: str, exit_code: int, json_logs: bool | None) -> bool:
    """The CLI's last word as one ``cli.error`` event when logs are JSON lines, so a
    level-based alert sees it. False when logs are for a person (they get a plain line).
    ``json_logs`` is None when logging was not set up yet (the settings may be what is
    wrong): then ``WORKER_LOG_FORMAT`` decides."""
    if json_logs is None:
        fmt = os.environ.get("WORKER_LOG_FORMAT", "auto").strip().lower()
        if fmt == "console" or (fmt != "json" and sys.stderr.isatty()):
            return False
        configure_logging(fmt="json")
    elif not json_logs:
        return False
    structlog.get_logger().error("cli.error", message=message, exit_code=exit_code)
    return True
