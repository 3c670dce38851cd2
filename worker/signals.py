"""SIGTERM and SIGINT as a stop token: an edge, installed by the CLI around a run.

Heroku stops a dyno with SIGTERM and kills it 30 s later; a person presses Ctrl-C. The first
signal sets the token (a :class:`threading.Event` handed down to the pipeline and the
Salesforce client): nothing new is started, the request in flight gets a few seconds to
answer, the run is recorded ``stopped`` and the command exits 4. A second signal acts at
once, as it would without the worker's handler (SIGTERM ends the process, SIGINT raises
KeyboardInterrupt); the next run reconciles whatever that leaves ``sent``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog

log = structlog.get_logger()

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """A stop token set by the first SIGTERM or SIGINT while the block runs."""
    stop = threading.Event()
    received: list[str] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(signum: int, _frame: FrameType | None) -> None:
        # Nothing here may log: the main thread may be inside the logger when it arrives.
        received.append(signal.Signals(signum).name)
        stop.set()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def announce() -> None:
        stop.wait()
        if received:
            log.warning("run.stop_requested", signal=received[0])

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)
    threading.Thread(target=announce, name="stop-announcer", daemon=True).start()
    try:
        yield stop
    finally:
        for sig, action in previous.items():
            signal.signal(sig, action)
        stop.set()  # ends the announcer (it logs only when a signal came)
