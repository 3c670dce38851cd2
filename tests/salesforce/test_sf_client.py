"""The client: the retry/fail table, lost answers, budget, usage, dry run, secrets in logs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
import tenacity
from structlog.testing import capture_logs

from worker.errors import (
    ApiLimitError,
    AuthError,
    DryRunWriteError,
    FatalApiError,
    RetriableError,
    SalesforceError,
    StopRequested,
)
from worker.ports import ApiUsage
from worker.salesforce.client import SalesforceClient, SubRequest, parse_limit_header
from worker.salesforce.errors import Disposition, UnknownOutcomeError, disposition

from .sfhelpers import Sleeps, load_fixture, settings

ACME = "https://acme.my.salesforce.com"
TOKEN = "00D000000000000!AQ.scrubbed-token-value"
LIMITS = f"{ACME}/services/data/v66.0/limits"
COMPOSITE = f"{ACME}/services/data/v66.0/composite"


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as m:
        yield m


def acme(sleeps: Sleeps | None = None, wait: Any = None, **values: Any) -> SalesforceClient:
    s = settings(instance_url=ACME, access_token=TOKEN, **values)
    return SalesforceClient(s, wait=wait or tenacity.wait_none(), sleep=sleeps or Sleeps())


def usage_header(used: int = 100, limit: int = 15000) -> dict[str, str]:
    return {"Sforce-Limit-Info": f"api-usage={used}/{limit}"}


# (status, fixture or body, expected exception, calls made with max_attempts=5)
TABLE = [
    (503, "SERVER_UNAVAILABLE", RetriableError, 5),
    (500, "UNKNOWN_EXCEPTION", RetriableError, 5),
    (502, "", RetriableError, 5),
    (504, "", RetriableError, 5),
    (429, "", RetriableError, 5),
    (420, "", RetriableError, 5),
    (400, "UNABLE_TO_LOCK_ROW", RetriableError, 5),
    (403, "REQUEST_LIMIT_EXCEEDED_concurrent", RetriableError, 5),
    (403, "REQUEST_LIMIT_EXCEEDED_total", ApiLimitError, 1),
    (400, "INVALID_FIELD", FatalApiError, 1),
    (400, "MALFORMED_QUERY", FatalApiError, 1),
    (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", FatalApiError, 1),
    (400, "REQUIRED_FIELD_MISSING", FatalApiError, 1),
    (400, "STRING_TOO_LONG", FatalApiError, 1),
    (400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", FatalApiError, 1),
    (404, "NOT_FOUND", FatalApiError, 1),
    (401, "INVALID_SESSION_ID", AuthError, 1),
    (403, "API_DISABLED_FOR_ORG", AuthError, 1),
]


@pytest.mark.parametrize(("status", "fixture", "expected", "calls"), TABLE)
def test_error_table(
    mock: responses.RequestsMock, status: int, fixture: str, expected: type[Exception], calls: int
) -> None:
    body = load_fixture(f"errors/{fixture}.json") if fixture else None
    mock.get(LIMITS, status=status, json=body, headers=usage_header())
    client = acme()
    with pytest.raises(expected) as info:
        client.get_json(client.data_path("limits"), kind="limits")
    assert len(mock.calls) == calls
    assert client.api_calls() == calls
    err = info.value
    assert isinstance(err, SalesforceError)
    assert err.status == status
    if body:
        assert err.error_code == body[0]["errorCode"]
        assert body[0]["message"] in err.message
        assert err.fields == tuple(body[0].get("fields", ()))
    assert err.url == "/services/data/v66.0/limits"  # the path, never a query string


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("UNABLE_TO_LOCK_ROW", "", Disposition.RETRY),
        ("REQUEST_LIMIT_EXCEEDED", "ConcurrentPerOrgLongTxn Limit exceeded.", Disposition.RETRY),
        ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", Disposition.LIMIT),
        ("SOMETHING_NEW_2027", "", Disposition.FAIL),  # unknown: that record fails, run goes on
        (None, "", Disposition.FAIL),
    ],
)
def test_disposition(code: str | None, message: str, expected: Disposition) -> None:
    assert disposition(code, message) is expected


def test_retries_until_success_and_logs_each_retry(mock: responses.RequestsMock) -> None:
    body = load_fixture("errors/SERVER_UNAVAILABLE.json")
    mock.get(LIMITS, status=503, json=body)
    mock.get(LIMITS, status=503, json=body)
    mock.get(LIMITS, json=load_fixture("limits.json"), headers=usage_header(123))
    # responses serves registrations for one URL in order, the last one repeating
    client = acme()
    with capture_logs() as logs:
        result = client.get_json(client.data_path("limits"), kind="limits")
    assert result["DailyApiRequests"]["Max"] == 15000
    retries = [e for e in logs if e["event"] == "salesforce.retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert retries[0]["error_code"] == "SERVER_UNAVAILABLE"
    assert retries[0]["status"] == 503
    assert client.api_calls() == 3
    assert client.usage() == ApiUsage(123, 15000)


def test_full_jitter_backoff_is_capped(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, status=503, json=load_fixture("errors/SERVER_UNAVAILABLE.json"))
    sleeps = Sleeps()
    s = settings(instance_url=ACME, access_token=TOKEN, max_attempts=8, retry_max_seconds=10_000)
    client = SalesforceClient(s, sleep=sleeps)  # the real wait strategy, a fake sleep
    with pytest.raises(RetriableError):
        client.get_json(client.data_path("limits"), kind="limits")
    assert len(sleeps.calls) == 7
    for attempt, pause in enumerate(sleeps.calls, start=1):
        assert 0 <= pause <= min(60, 2**attempt)


def test_total_waiting_is_capped(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, status=503, json=load_fixture("errors/SERVER_UNAVAILABLE.json"))
    sleeps = Sleeps()
    client = acme(sleeps, wait=tenacity.wait_fixed(50), max_attempts=10, retry_max_seconds=120)
    with pytest.raises(RetriableError):
        client.get_json(client.data_path("limits"), kind="limits")
    assert sleeps.calls == [50, 50]  # a third pause would pass 120 s
    assert len(mock.calls) == 3


def test_connect_timeout_is_retried_even_for_a_create(mock: responses.RequestsMock) -> None:
    mock.post(COMPOSITE, body=requests.ConnectTimeout("no route"))
    mock.post(COMPOSITE, json={"compositeResponse": []})
    client = acme()
    client.request("POST", client.data_path("composite"), kind="write", json={}, idempotent=False)
    assert len(mock.calls) == 2


@pytest.mark.parametrize(
    "failure",
    [requests.ReadTimeout("read timed out"), requests.ConnectionError("reset by peer")],
)
def test_a_lost_answer_is_retried_only_when_idempotent(
    mock: responses.RequestsMock, failure: Exception
) -> None:
    mock.post(COMPOSITE, body=failure)
    client = acme()
    with pytest.raises(UnknownOutcomeError) as info:
        client.request(
            "POST", client.data_path("composite"), kind="write", json={}, idempotent=False
        )
    assert info.value.error_code == "UNKNOWN_OUTCOME"
    assert len(mock.calls) == 1  # never resent
    with pytest.raises(RetriableError):
        client.request("POST", client.data_path("composite"), kind="read", json={}, idempotent=True)
    assert len(mock.calls) == 1 + 5


@pytest.mark.parametrize(
    ("status", "unknown"), [(502, True), (504, True), (500, True), (503, False), (429, False)]
)
def test_gateway_errors_on_a_create_are_unknown_outcomes(
    mock: responses.RequestsMock, status: int, unknown: bool
) -> None:
    mock.post(COMPOSITE, status=status, body="<html>Bad gateway</html>")
    client = acme()
    expected = UnknownOutcomeError if unknown else RetriableError
    with pytest.raises(expected):
        client.request(
            "POST", client.data_path("composite"), kind="write", json={}, idempotent=False
        )
    assert len(mock.calls) == (1 if unknown else 5)


def test_daily_limit_stops_every_later_request_without_calling(
    mock: responses.RequestsMock,
) -> None:
    mock.get(LIMITS, status=403, json=load_fixture("errors/REQUEST_LIMIT_EXCEEDED_total.json"))
    client = acme()
    with pytest.raises(ApiLimitError):
        client.get_json(client.data_path("limits"), kind="limits")
    with pytest.raises(ApiLimitError):
        client.get_json(client.data_path("limits"), kind="limits")
    with pytest.raises(ApiLimitError):
        client.check_budget()
    assert len(mock.calls) == 1


@pytest.mark.parametrize(
    ("used", "planned", "stops"),
    [
        (11_999, 0, False),  # 3,001 left, reserve 3,000
        (12_000, 0, False),  # exactly the reserve left
        (12_001, 0, True),
        (11_999, 2, True),  # the planned work would dip into the reserve
        (None, 0, False),  # usage unknown before the first answer
    ],
)
def test_budget_guard(
    mock: responses.RequestsMock, used: int | None, planned: int, stops: bool
) -> None:
    headers = usage_header(used) if used is not None else {}
    mock.get(LIMITS, json={}, headers=headers)
    client = acme()
    client.get_json(client.data_path("limits"), kind="limits")
    if stops:
        with pytest.raises(ApiLimitError) as info:
            client.check_budget(planned)
        assert info.value.error_code == "API_RESERVE"
    else:
        client.check_budget(planned)


def test_run_budget_caps_one_run(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, json={}, headers=usage_header(10, 100))
    client = acme(run_budget_percent=5, api_reserve_percent=0)
    for _ in range(5):
        client.check_budget(1)
        client.get_json(client.data_path("limits"), kind="limits")
    with pytest.raises(ApiLimitError) as info:
        client.check_budget(1)
    assert info.value.error_code == "RUN_BUDGET"


@pytest.mark.parametrize(
    ("header", "usage"),
    [
        ("api-usage=123/15000", ApiUsage(123, 15000)),
        ("api-usage=25/5000; per-app-api-usage=17/250(appName=sop-worker)", ApiUsage(25, 5000)),
        ("per-app-api-usage=17/250(appName=x)", None),
        (None, None),
    ],
)
def test_limit_header(header: str | None, usage: ApiUsage | None) -> None:
    assert parse_limit_header(header) == usage


def test_dry_run_client_refuses_writes_before_the_network(mock: responses.RequestsMock) -> None:
    s = settings(instance_url=ACME, access_token=TOKEN)
    client = SalesforceClient(s, wait=tenacity.wait_none(), read_only=True)
    for method in ("POST", "PATCH", "DELETE"):
        with pytest.raises(DryRunWriteError):
            client.request(method, client.data_path("composite"), kind="write", json={})
    read = SubRequest("GET", client.data_path("query/?q=SELECT+Id+FROM+Lead"), "q0")
    write = SubRequest("PATCH", client.data_path("composite/sobjects"), "w0", body={})
    with pytest.raises(DryRunWriteError):  # one writing subrequest among reads
        client.composite([read, write], kind="read", idempotent=True)
    with pytest.raises(DryRunWriteError):  # a composite of GETs elsewhere than /composite
        client.request(
            "POST",
            client.data_path("composite/batch"),
            kind="x",
            json={"compositeRequest": [read.to_json()]},
        )
    ingest = {"object": "Lead", "operation": "insert", "contentType": "CSV"}
    with pytest.raises(DryRunWriteError, match="jobs/ingest"):  # a Bulk job that loads data
        client.request("POST", client.data_path("jobs/ingest"), kind="bulk", json=ingest)
    with pytest.raises(DryRunWriteError):  # not a query, whatever resource it is posted to
        client.request("POST", client.data_path("jobs/query"), kind="bulk", json=ingest)
    for method in ("PATCH", "DELETE"):  # aborting or deleting a query job
        with pytest.raises(DryRunWriteError):
            client.request(method, client.data_path("jobs/query/750x"), kind="bulk", json={})
    assert len(mock.calls) == 0


def test_dry_run_client_creates_bulk_query_jobs(mock: responses.RequestsMock) -> None:
    mock.post(f"{ACME}/services/data/v66.0/jobs/query", json={"id": "750x"})
    client = SalesforceClient(
        settings(instance_url=ACME, access_token=TOKEN), wait=tenacity.wait_none(), read_only=True
    )
    for operation in ("query", "queryAll"):
        body = {"operation": operation, "query": "SELECT Id FROM Lead"}
        client.request("POST", client.data_path("jobs/query"), kind="bulk", json=body)
    assert len(mock.calls) == 2


def test_only_instance_paths_carry_the_token() -> None:
    client = acme()
    with pytest.raises(ValueError, match="not an instance path"):
        client.request("GET", "https://evil.example.com/services/data", kind="x")


def test_composite_maps_subresponses_by_reference(mock: responses.RequestsMock) -> None:
    mock.post(
        COMPOSITE, json=load_fixture("composite_query_first_pages.json"), headers=usage_header()
    )
    client = acme()
    subs = [SubRequest("GET", client.data_path("queryAll/?q=x"), f"q{i}") for i in (2, 0, 1)]
    out = client.composite(subs, kind="query", idempotent=True)
    assert [r.reference_id for r in out] == ["q2", "q0", "q1"]
    assert out[0].status == 400
    assert not out[0].ok
    assert out[0].error().error_code == "INVALID_FIELD"
    assert client.api_calls() == 1
    sent = mock.calls[0].request
    assert sent.body is not None
    import json

    payload = json.loads(sent.body)
    assert payload["allOrNone"] is False
    assert [r["referenceId"] for r in payload["compositeRequest"]] == ["q2", "q0", "q1"]


def test_no_secret_reaches_the_logs(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, status=503, json=load_fixture("errors/SERVER_UNAVAILABLE.json"))
    mock.get(LIMITS, status=401, json=load_fixture("errors/INVALID_SESSION_ID.json"))
    client = acme()
    with capture_logs() as logs, pytest.raises(AuthError) as info:
        client.get_json(client.data_path("limits"), kind="limits", params={"q": "secret-soql"})
    text = repr(logs) + str(info.value) + repr(info.value.__dict__)
    assert TOKEN not in text
    assert "Bearer" not in text
    assert "secret-soql" not in text
    assert logs, "the retry must have been logged"


# -- stopping (SIGTERM/SIGINT) -------------------------------------------------------------------
def stoppable(stop: threading.Event, **options: Any) -> SalesforceClient:
    """A client that really waits (on the stop token) between retries."""
    s = settings(instance_url=ACME, access_token=TOKEN, max_attempts=5, retry_max_seconds=600)
    return SalesforceClient(s, wait=tenacity.wait_fixed(60), stop=stop, **options)


def test_a_stop_cuts_a_retry_pause_short(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, status=503, json=load_fixture("errors/SERVER_UNAVAILABLE.json"))
    stop = threading.Event()
    client = stoppable(stop)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StopRequested):
        client.get_json(client.data_path("limits"), kind="limits")
    assert time.monotonic() - started < 5  # not the 60 s pause
    assert len(mock.calls) == 1  # and no retry after it


def test_after_a_stop_no_request_is_sent(mock: responses.RequestsMock) -> None:
    mock.get(LIMITS, json=load_fixture("limits.json"))
    stop = threading.Event()
    stop.set()
    client = stoppable(stop)
    with pytest.raises(StopRequested):
        client.get_json(client.data_path("limits"), kind="limits")
    assert len(mock.calls) == 0


@pytest.mark.parametrize(
    ("idempotent", "expected"), [(True, StopRequested), (False, UnknownOutcomeError)]
)
def test_an_answer_is_given_up_the_grace_period_after_a_stop(
    mock: responses.RequestsMock, idempotent: bool, expected: type[Exception]
) -> None:
    """The read timeout is 120 s; a stop waits only ``stop_grace`` for the answer. A write
    given up may have been applied: its outcome is unknown, to be reconciled."""
    release = threading.Event()

    def slow_answer(_request: Any) -> tuple[int, dict[str, str], str]:
        release.wait(30)
        return 200, {}, '{"compositeResponse": []}'

    mock.add_callback("POST", COMPOSITE, callback=slow_answer)
    stop = threading.Event()
    client = stoppable(stop, stop_grace=0.5)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(expected):
            client.request(
                "POST", client.data_path("composite"), kind="write", json={}, idempotent=idempotent
            )
        assert time.monotonic() - started < 5
    finally:
        release.set()
