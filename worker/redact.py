"""Secrets out of every output: by key name, by shape, and by value.

An OAuth endpoint or a proxy may echo the request it refused, client secret and password
included, in the error text the worker then shows and stores. So besides blanking keys
named like secrets and text shaped like a session id or a bearer token, every configured
secret value (the ``SecretStr`` ``SF_*`` settings, registered once when they are loaded)
is replaced wherever it appears, also in its URL-encoded and JSON-escaped forms.

Applied at the edges: the log processor (:mod:`worker.logs`), the CLI's error boundary and
output streams, and the store when it writes runs, the ledger and the audit log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
# Shorter values are not looked for: they would blank ordinary words.
MIN_SECRET_CHARS = 4

_SECRET_KEYS = re.compile(
    r"(token|secret|password|passwd|authorization|session_?id|private_?key|api_?key|cookie)",
    re.IGNORECASE,
)
# Salesforce session ids ("00D...!...") and bearer tokens inside free text.
_SECRET_SHAPES = re.compile(r"(00D[A-Za-z0-9]{12,15}![A-Za-z0-9._\-]+|Bearer\s+[A-Za-z0-9._\-!]+)")


class _Secrets:
    """The configured secret values, as one pattern (longest first)."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            if len(value) < MIN_SECRET_CHARS:
                continue
            self.values.update({value, quote_plus(value), quote(value, safe=""), _in_json(value)})
        ordered = sorted(self.values, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None


_secrets = _Secrets()


def register_secrets(values: Iterable[str]) -> None:
    """Scrub these values from every output from now on (the process's configured secrets)."""
    _secrets.add(values)


def scrub(text: str, replacement: str = REDACTED) -> str:
    """``text`` with every registered secret value and secret-shaped token replaced."""
    if _secrets.pattern is not None:
        text = _secrets.pattern.sub(replacement, text)
    return _SECRET_SHAPES.sub(replacement, text)


def redact_value(value: Any) -> Any:
    """Strings scrubbed, secret-named keys blanked, through dicts, lists and tuples."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEYS.search(name))


class ScrubbedStream:
    """A text stream that scrubs whatever is written to it (the CLI's stdout and stderr)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _in_json(value: str) -> str:
    return json.dumps(value)[1:-1]
