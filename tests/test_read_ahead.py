"""The pull asks for the next page while it stores the last one, and only one ahead."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from worker.pipeline import read_ahead
from worker.ports import Page

WAIT = 10  # seconds: far more than a thread needs to start


def pages(asked: list[int], fetching: threading.Event, count: int = 4) -> Iterator[Page]:
    for i in range(count):
        asked.append(i)
        if i == 1:
            fetching.set()
        yield Page("Lead", [{"Id": f"00Q{i}"}])


def test_the_next_page_is_asked_for_while_the_last_is_stored() -> None:
    asked: list[int] = []
    fetching = threading.Event()
    got = read_ahead(pages(asked, fetching), threading.Event())
    first = next(got)
    # The caller is still "storing" page 0: page 1 is asked for meanwhile.
    assert fetching.wait(WAIT)
    assert first.records[0]["Id"] == "00Q0"
    assert [p.records[0]["Id"] for p in got] == ["00Q1", "00Q2", "00Q3"]
    assert asked == [0, 1, 2, 3]


def test_no_more_than_one_page_waits() -> None:
    asked: list[int] = []
    got = read_ahead(pages(asked, threading.Event(), count=10), threading.Event())
    next(got)
    threading.Event().wait(0.3)
    assert len(asked) <= 3  # the one taken, one waiting, one being asked for
    got.close()  # the caller stops: the reader ends too
    assert len(asked) <= 3


def test_an_error_reaches_the_caller_after_the_pages_before_it() -> None:
    def failing() -> Iterator[Page]:
        yield Page("Lead", [{"Id": "00Q0"}])
        raise RuntimeError("connection lost")

    got = read_ahead(failing(), threading.Event())
    assert next(got).records[0]["Id"] == "00Q0"
    with pytest.raises(RuntimeError, match="connection lost"):
        next(got)


def test_a_stop_asks_for_no_further_page() -> None:
    asked: list[int] = []
    stop = threading.Event()
    got = read_ahead(pages(asked, threading.Event(), count=10), stop)
    next(got)
    stop.set()
    rest = list(got)
    assert len(rest) <= 2  # at most what was already under way
    assert len(asked) <= 3
