"""Where the worker finds its own writes again, and Salesforce's field rules for them.

An action's key (:func:`worker.actions.make_key`) travels with what it creates: in the
mapping's Task key field, else as a ``[sop-worker <key>]`` marker at the end of the text
(Task description, CaseComment body, email body). The field rules are the ones Salesforce
enforces on those writes (no WhatId beside a Lead WhoId, 255 characters for
``Subject``/``NextStep``, 4,000 bytes for ``CommentBody``), kept here once for the rules
that build actions and the sinks that write them.

Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import re
from typing import Any

from worker import schema
from worker.mapping import OrgMapping
from worker.records import Record

_MARKER = re.compile(r"\[sop-worker ([^\]\s]+)\]")
TEXT_255_FIELDS = frozenset({schema.SUBJECT, "NextStep"})


def key_marker(key: str) -> str:
    """The tag that carries an action key inside text (Task description, CaseComment)."""
    return f"[sop-worker {key}]"


def keys_in_text(text: str | None) -> list[str]:
    return _MARKER.findall(text or "")


def with_key_marker(text: str, key: str) -> str:
    """``text`` ending with the key's marker (added after a blank line when missing)."""
    marker = key_marker(key)
    if marker in text:
        return text
    return f"{text}\n\n{marker}" if text else marker


def task_key(task: Record, org: OrgMapping) -> str | None:
    """The worker's action key on a Task: its external-id field, else the text marker."""
    if org.org.task_key_field:
        value = task.get(org.org.task_key_field)
        if isinstance(value, str) and value:
            return value
    found = keys_in_text(task.text(schema.DESCRIPTION))
    return found[0] if found else None


def task_what_id(who_id: Any, what_id: Any) -> Any:
    """The WhatId a Task can carry beside ``who_id``: none beside a Lead (Salesforce
    rejects it with FIELD_INTEGRITY_EXCEPTION)."""
    if isinstance(who_id, str) and who_id.startswith(schema.LEAD_ID_PREFIX):
        return None
    return what_id


def cut_text(name: str, value: Any, notes: list[str]) -> Any:
    """``value`` cut to 255 characters when ``name`` is a field that holds no more
    (``Subject``, ``NextStep``), the cut noted in ``notes``."""
    limit = schema.SUBJECT_MAX_CHARS
    if name in TEXT_255_FIELDS and isinstance(value, str) and len(value) > limit:
        notes.append(f"{name} truncated from {len(value)} to {limit} characters")
        return value[: limit - 1] + "…"
    return value


def cut_keeping_marker(
    text: str, key: str, limit: int, *, unit: str, notes: list[str], field_name: str
) -> str:
    """``text`` cut to ``limit`` (chars or UTF-8 bytes) keeping the key marker at its end,
    the cut noted in ``notes``."""
    marker = key_marker(key)

    def size(s: str) -> int:
        return len(s.encode()) if unit == "bytes" else len(s)

    if size(text) <= limit:
        return text
    head = text.replace(marker, "").rstrip()
    room = limit - size(marker) - size("…\n\n")
    if unit == "bytes":
        cut = head.encode()[: max(room, 0)].decode(errors="ignore")
    else:
        cut = head[: max(room, 0)]
    notes.append(f"{field_name} truncated to {limit} {unit}")
    return f"{cut}…\n\n{marker}"


def comment_body(body: str, key: str, notes: list[str]) -> str:
    """A CaseComment's body as Salesforce takes it: the key marker at its end, within
    4,000 bytes."""
    return cut_keeping_marker(
        with_key_marker(body, key),
        key,
        schema.COMMENT_BODY_MAX_BYTES,
        unit="bytes",
        notes=notes,
        field_name=schema.COMMENT_BODY,
    )
