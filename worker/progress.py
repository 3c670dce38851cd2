"""Showing how far a run has got: an edge, chosen by the CLI, fed by the pipeline.

The pipeline reports a :class:`~worker.ports.Progress` after each page, rule and write
batch. On a terminal :class:`ProgressBars` shows one rich bar per phase (pull, plan, write)
with its counts; elsewhere :class:`ProgressLog` logs the latest report as one ``progress``
event every few seconds (``WORKER_PROGRESS_SECONDS``), also while a slow request is out,
so a scheduler's log shows the run is alive and how far it is.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress

from worker.ports import Progress

log = structlog.get_logger()


class ProgressLog:
    """The latest progress as a ``progress`` log event every ``every`` seconds."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._latest: Progress | None = None
        self._context: dict[str, Any] = {}
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._log_every, name="progress", daemon=True)

    def __call__(self, progress: Progress) -> None:
        # The reporting thread's bound context (run_id), for events logged from the beat.
        self._context = structlog.contextvars.get_contextvars()
        self._latest = progress

    def __enter__(self) -> ProgressLog:
        self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._beat.join()

    def _log_every(self) -> None:
        while not self._done.wait(self.every):
            latest = self._latest
            if latest is not None:
                log.info("progress", **self._context, **dataclasses.asdict(latest))


class ProgressBars:
    """One rich progress bar per phase on ``console``, with records read, actions sent and
    API calls beside it."""

    def __init__(self, console: Console) -> None:
        self._bars = RichProgress(
            TextColumn("{task.description:<6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, progress: Progress) -> None:
        counts = (
            f"{progress.records_read} read, {progress.actions_sent} sent, "
            f"{progress.api_calls} API calls"
        )
        task = self._tasks.get(progress.phase)
        if task is None:
            task = self._bars.add_task(progress.phase, total=progress.total, counts=counts)
            self._tasks[progress.phase] = task
        self._bars.update(task, completed=progress.done, total=progress.total, counts=counts)

    def __enter__(self) -> ProgressBars:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()
