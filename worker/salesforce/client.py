"""The one HTTP client every Salesforce call goes through.

What it guarantees, whoever calls it:

- **Timeouts**: every request has ``(SF_CONNECT_TIMEOUT, SF_READ_TIMEOUT)``.
- **One retry policy** (:meth:`SalesforceClient.retrying`): tenacity retries only
  :class:`~worker.errors.RetriableError`, full-jitter exponential backoff (base 1 s, cap
  60 s), at most ``SF_MAX_ATTEMPTS`` attempts and ``SF_RETRY_MAX_SECONDS`` of waiting,
  each retry logged as ``salesforce.retry``. Tests pass ``wait=tenacity.wait_none()``.
- **Lost answers**: a request that is not idempotent (a POST that creates, sends or
  converts) is never resent after its answer was lost (read timeout, dropped connection,
  502/504): it raises :class:`~worker.salesforce.errors.UnknownOutcomeError` and the
  caller reconciles. A connect timeout is retried: nothing reached the server.
- **Session renewal**: a 401 / ``INVALID_SESSION_ID`` renews the session once (one renewal
  at a time, shared by every caller) and replays the request once; a second rejection, or
  a static token that cannot be renewed, raises :class:`~worker.errors.AuthError`.
- **API budget**: ``Sforce-Limit-Info`` is read from every response (:meth:`usage`); every
  call is counted (:meth:`api_calls`, :meth:`calls_by_kind`); :meth:`check_budget` stops new
  work below the reserve; once Salesforce says the daily allowance is spent, every further
  request fails fast with :class:`~worker.errors.ApiLimitError` without touching the network.
- **Assignment rules**: every REST request that may write carries ``Sforce-Auto-Assign:
  FALSE`` (absent, Salesforce runs the org's active Lead/Case/Account assignment rules and
  moves Cases to the Default Case Owner), and so does every non-GET Composite subrequest,
  since subrequests inherit only ``Accept``, ``Authorization`` and ``Content-Type`` from the
  composite call. A subrequest that sets the header itself (a step that opts in) keeps it.
- **Stopping** (``stop``, a :class:`threading.Event` set on SIGTERM/SIGINT): once set, no
  new request is sent and a retry's or poll's pause ends at once, both raising
  :class:`~worker.errors.StopRequested`. The request in flight is given ``stop_grace``
  seconds (default 5) to answer, never the whole read timeout: each exchange runs in a
  daemon thread the caller waits on. An answer still missing then is given up: an
  idempotent request raises StopRequested (a later run sends it again), any other one
  :class:`~worker.salesforce.errors.UnknownOutcomeError` (the next run reconciles it).
- **Dry run**: a ``read_only`` client sends only requests that cannot change data: GETs, a
  Composite whose subrequests are all GETs (reads batched five to a call cost the same) and
  the creation of a Bulk API 2.0 query job (``POST jobs/query`` with operation ``query`` or
  ``queryAll``; polling it and fetching its results are GETs). Anything else (an ingest
  job, a write, SOAP) is refused before the network with ``DryRunWriteError``.
- **Secrets**: headers and bodies are never logged; errors carry status, errorCode, message
  and the URL path only. ``verify`` is left to requests, so ``REQUESTS_CA_BUNDLE`` works.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import structlog
import tenacity
from tenacity.wait import wait_base

from worker.errors import (
    ApiLimitError,
    AuthError,
    ConfigError,
    DryRunWriteError,
    FatalApiError,
    RetriableError,
    SalesforceError,
    StopRequested,
)
from worker.ports import ApiUsage, OrgIdentity
from worker.salesforce.auth import Authenticator, Grant, build_authenticator, session_ids
from worker.salesforce.errors import (
    REJECTED_UNPROCESSED_STATUSES,
    UnknownOutcomeError,
    certificate_rejected,
    error_for,
    parse_error_body,
    untrusted_certificate,
)
from worker.salesforce.settings import SalesforceSettings

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Full jitter: each wait is uniform in [0, min(60, 1 * 2**attempt)] seconds.
DEFAULT_WAIT: wait_base = tenacity.wait_random_exponential(multiplier=1, max=60)
COMPOSITE_MAX_SUBREQUESTS = 25
LIMIT_HEADER = "Sforce-Limit-Info"
AUTO_ASSIGN_HEADER = "Sforce-Auto-Assign"
NO_AUTO_ASSIGN: Mapping[str, str] = {AUTO_ASSIGN_HEADER: "FALSE"}
USERINFO_PATH = "/services/oauth2/userinfo"  # OpenID Connect UserInfo, on the org's own host
_API_USAGE = re.compile(r"(?:^|[;,\s])api-usage=(\d+)/(\d+)")
_SESSION_CODES = frozenset({"INVALID_SESSION_ID", "INVALID_AUTH_HEADER"})
_DATA_PREFIX = re.compile(r"^/services/data/v[\d.]+/")
BULK_QUERY_OPERATIONS = frozenset({"query", "queryAll"})  # Bulk API 2.0 jobs that only read
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
STOP_GRACE_SECONDS = 5.0  # a stop's wait for the answer in flight: well inside Heroku's 30 s
_STOP_POLL_SECONDS = 0.1  # how often a wait for an answer looks at the stop token

ErrorParser = Callable[[requests.Response], SalesforceError]
BodyFactory = Callable[[str], str]


@dataclass(frozen=True)
class SubRequest:
    """One subrequest of a Composite call; ``url`` is a ``/services/data/...`` path.

    ``headers`` go into the subrequest's own ``httpHeaders``: a subrequest does not inherit
    the composite call's headers (save ``Accept``, ``Authorization``, ``Content-Type``)."""

    method: str
    url: str
    reference_id: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "referenceId": self.reference_id,
        }
        if self.body is not None:
            out["body"] = self.body
        headers = dict(self.headers)
        if self.method.upper() != "GET":
            headers = {**NO_AUTO_ASSIGN, **headers}
        if headers:
            out["httpHeaders"] = headers
        return out


@dataclass(frozen=True)
class SubResponse:
    """One subrequest's answer: its own HTTP status and body."""

    reference_id: str
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self) -> SalesforceError:
        code, message, fields = parse_error_body(self.body)
        return error_for(
            status=self.status,
            error_code=code,
            message=message or f"subrequest {self.reference_id} failed",
            fields=fields,
        )


def parse_limit_header(value: str | None) -> ApiUsage | None:
    """``api-usage=123/15000`` (possibly among other entries) -> ApiUsage(123, 15000)."""
    if not value:
        return None
    match = _API_USAGE.search(value)
    if not match:
        return None
    return ApiUsage(used=int(match.group(1)), limit=int(match.group(2)))


def json_error(response: requests.Response) -> SalesforceError:
    """The default error parser: a REST JSON error body."""
    code, message, fields = parse_error_body(response.content)
    return error_for(
        status=response.status_code,
        error_code=code,
        message=message or f"HTTP {response.status_code}",
        fields=fields,
        url=_path_of(response.url),
    )


class SalesforceClient:
    """Authenticated, timed, retried, counted access to one org's REST and SOAP APIs."""

    def __init__(
        self,
        settings: SalesforceSettings,
        *,
        http: requests.Session | None = None,
        authenticator: Authenticator | None = None,
        wait: wait_base | None = None,
        sleep: Callable[[float], None] | None = None,
        read_only: bool = False,
        store_refresh_token: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.read_only = read_only
        self._http = http or requests.Session()
        self._authenticator = authenticator or build_authenticator(
            settings, store_refresh_token=store_refresh_token
        )
        self._wait = wait if wait is not None else DEFAULT_WAIT
        self._sleep = sleep  # None: wait on the stop token, so a stop ends the pause
        self._stop = stop or threading.Event()
        self._stop_grace = stop_grace
        self._grant: Grant | None = None
        self._generation = 0
        self._auth_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._api_calls = 0
        self._usage: ApiUsage | None = None
        self._limit_error: ApiLimitError | None = None

    # -- paths ------------------------------------------------------------------------------
    @property
    def api_version(self) -> str:
        return self.settings.api_version

    def data_path(self, suffix: str = "") -> str:
        """``/services/data/v66.0/<suffix>``."""
        return f"/services/data/v{self.api_version}/{suffix.lstrip('/')}"

    @property
    def instance_url(self) -> str:
        return self._current()[0].instance_url

    def identity(self, label: str) -> OrgIdentity:
        """The org and user of the session, named ``label``. The OAuth flows' token response
        says which (its identity URL): no call. A ready access token says nothing, so the
        org's OpenID Connect UserInfo endpoint is asked: one call, counted as ``identity``."""
        grant = self._current()[0]
        if grant.org_id:
            return OrgIdentity(grant.org_id, label, grant.user_id, grant.username)
        body = self.get_json(USERINFO_PATH, kind="identity")
        info = body if isinstance(body, Mapping) else {}
        org_id, user_id = session_ids(info.get("organization_id"), info.get("user_id"))
        if org_id is None:
            raise FatalApiError(
                "the UserInfo endpoint did not say which org this session belongs to",
                url=USERINFO_PATH,
            )
        username = info.get("preferred_username")
        return OrgIdentity(org_id, label, user_id, username if isinstance(username, str) else None)

    # -- accounting ---------------------------------------------------------------------------
    def api_calls(self) -> int:
        """HTTP calls made to the org (retries and failures included; OAuth excluded, since
        token requests do not count against the daily API allowance)."""
        return self._api_calls

    def calls_by_kind(self) -> dict[str, int]:
        return dict(self._calls)

    def usage(self) -> ApiUsage | None:
        return self._usage

    def check_budget(self, planned_calls: int = 0) -> None:
        """Raise ApiLimitError rather than start work that would dip into the reserve.

        Call before each new unit of work (a query page, a write batch). Before the first
        response the org's usage is unknown and nothing is stopped.
        """
        if self._limit_error is not None:
            raise self._limit_error
        usage = self._usage
        if usage is None or usage.limit <= 0:
            return
        reserve = math.ceil(usage.limit * self.settings.api_reserve_percent / 100)
        if usage.remaining - planned_calls < reserve:
            raise ApiLimitError(
                f"API reserve reached: {usage.remaining} of {usage.limit} daily calls left, "
                f"reserve is {self.settings.api_reserve_percent:g}% ({reserve}); "
                "stopping before new work, the next run resumes",
                error_code="API_RESERVE",
            )
        run_cap = math.floor(usage.limit * self.settings.run_budget_percent / 100)
        if self._api_calls + planned_calls > run_cap:
            raise ApiLimitError(
                f"run budget reached: this run made {self._api_calls} calls, the cap is "
                f"{self.settings.run_budget_percent:g}% of {usage.limit} ({run_cap})",
                error_code="RUN_BUDGET",
            )

    # -- retry policy --------------------------------------------------------------------------
    def retrying(self, *, kind: str = "request", what: str = "") -> tenacity.Retrying:
        """The one retry policy. Also used by callers that retry single records."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(RetriableError),
            stop=(
                tenacity.stop_after_attempt(self.settings.max_attempts)
                | tenacity.stop_before_delay(self.settings.retry_max_seconds)
                | _stop_before_waiting(self.settings.retry_max_seconds)
            ),
            wait=self._wait,
            sleep=self.pause,
            before_sleep=_log_retry(kind, what),
            reraise=True,
        )

    def pause(self, seconds: float) -> None:
        """The client's one way to wait (retry backoff, Bulk API polling); a stop ends it
        at once with StopRequested."""
        if self._sleep is None:
            self._stop.wait(seconds)
        else:
            self._sleep(seconds)
        self._check_stop()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise StopRequested("stop requested (SIGTERM/SIGINT): no new request sent")

    # -- requests ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        kind: str,
        json: Any = None,
        data: str | bytes | None = None,
        body_factory: BodyFactory | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        error_parser: ErrorParser = json_error,
        ok_statuses: frozenset[int] = frozenset(),
    ) -> requests.Response:
        """Send one request (retried, renewed, counted); raise a SalesforceError on failure.

        ``ok_statuses`` are error statuses handed back instead of raised, for resources
        whose error answers still hold per-item results (invocable actions).
        ``path`` must be a path on the instance (``/services/...``), so the bearer token is
        only ever sent to the org. ``body_factory`` builds the body from the access token
        (SOAP carries the session id in its envelope) and is re-run after a renewal.
        """
        method = method.upper()
        if not path.startswith("/services/"):
            raise ValueError(f"not an instance path: {_path_of(path)}")
        reads = _reads_only(method, path, json)
        if self.read_only and not reads:
            raise DryRunWriteError(f"dry run: refused {method} {_path_of(path)}")
        if self._limit_error is not None:
            raise self._limit_error
        headers = dict(headers or {})
        if path.startswith("/services/data/") and not reads:
            headers = {**NO_AUTO_ASSIGN, **headers}
        call = _Call(
            method=method,
            path=path,
            kind=kind,
            json=json,
            data=data,
            body_factory=body_factory,
            params=params,
            headers=headers,
            idempotent=method in _IDEMPOTENT_METHODS if idempotent is None else idempotent,
            error_parser=error_parser,
            ok_statuses=ok_statuses,
        )
        response: requests.Response = self.retrying(kind=kind, what=_path_of(path))(
            self._send_renewing, call
        )
        return response

    def get_json(self, path: str, *, kind: str, params: Mapping[str, str] | None = None) -> Any:
        return _json_body(self.request("GET", path, kind=kind, params=params))

    def composite(
        self, subrequests: Sequence[SubRequest], *, kind: str, idempotent: bool
    ) -> list[SubResponse]:
        """One Composite call (``allOrNone: false``): up to 25 subrequests, one API call.

        The caller keeps to the further limit of 5 collections/queries per composite.
        """
        if not subrequests:
            return []
        if len(subrequests) > COMPOSITE_MAX_SUBREQUESTS:
            raise ValueError(f"a composite takes at most {COMPOSITE_MAX_SUBREQUESTS} subrequests")
        body = {
            "allOrNone": False,
            "compositeRequest": [s.to_json() for s in subrequests],
        }
        raw = _json_body(
            self.request(
                "POST", self.data_path("composite"), kind=kind, json=body, idempotent=idempotent
            )
        )
        items = raw.get("compositeResponse") if isinstance(raw, Mapping) else None
        if not isinstance(items, list):
            raise FatalApiError("composite response without compositeResponse")
        by_ref: dict[str, SubResponse] = {}
        for item in items:
            if not isinstance(item, Mapping):
                continue
            ref = str(item.get("referenceId") or item.get("referenceID") or "")
            by_ref[ref] = SubResponse(
                reference_id=ref,
                status=int(item.get("httpStatusCode") or 0),
                body=item.get("body"),
                headers=dict(item.get("httpHeaders") or {}),
            )
        out = []
        for sub in subrequests:
            found = by_ref.get(sub.reference_id)
            if found is None:
                raise FatalApiError(f"composite response has no result for {sub.reference_id}")
            out.append(found)
        return out

    # -- internals -------------------------------------------------------------------------------
    def _current(self) -> tuple[Grant, int]:
        with self._auth_lock:
            if self._grant is None:
                if self._authenticator.renewable:  # a ready token takes no request
                    self._count("oauth", api=False)
                self._grant = self._in_flight(
                    partial(self._authenticator.authenticate, self._http),
                    what="sign-in",
                    idempotent=True,
                )
                self._generation += 1
            return self._grant, self._generation

    def _renew(self, seen_generation: int, cause: SalesforceError) -> None:
        with self._auth_lock:
            if self._generation != seen_generation:
                return  # another caller renewed while we waited: use its session
            if not self._authenticator.renewable:
                raise AuthError(
                    f"Salesforce rejected the session ({cause.message}) and SF_ACCESS_TOKEN "
                    "cannot be renewed: get a fresh token (sf org display) or configure JWT "
                    "or client credentials",
                    status=cause.status,
                    error_code=cause.error_code,
                    url=cause.url,
                ) from None
            log.info("salesforce.reauth", reason=cause.error_code or cause.status)
            self._count("oauth", api=False)
            self._grant = self._in_flight(
                partial(self._authenticator.authenticate, self._http),
                what="sign-in",
                idempotent=True,
            )
            self._generation += 1

    def _send_renewing(self, call: _Call) -> requests.Response:
        grant, generation = self._current()
        try:
            return self._send(grant, call)
        except AuthError as exc:
            if exc.status != 401 and exc.error_code not in _SESSION_CODES:
                raise
            self._renew(generation, exc)
        grant, _ = self._current()
        # One replay; a second rejection propagates as AuthError (exit with an auth error).
        return self._send(grant, call)

    def _send(self, grant: Grant, call: _Call) -> requests.Response:
        token = grant.access_token.get_secret_value()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        headers.update(call.headers)
        data = call.body_factory(token) if call.body_factory is not None else call.data
        shown = _path_of(call.path)
        self._check_stop()
        self._count(call.kind)
        started = time.monotonic()
        try:
            response = self._in_flight(
                partial(
                    self._http.request,
                    call.method,
                    grant.instance_url + call.path,
                    json=call.json,
                    data=data,
                    params=call.params,
                    headers=headers,
                    timeout=self.settings.timeout,
                ),
                what=f"{call.method} {shown}",
                idempotent=call.idempotent,
            )
        except requests.ConnectTimeout:
            raise RetriableError("connect timeout", url=shown) from None
        except (
            requests.Timeout,
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if certificate_rejected(exc):
                # The TLS handshake failed: nothing was sent, and no retry can help.
                raise untrusted_certificate(grant.instance_url) from None
            # The request may have been received and applied; only the answer is missing.
            problem = f"no answer ({type(exc).__name__})"
            if call.idempotent:
                raise RetriableError(problem, url=shown) from None
            raise UnknownOutcomeError(
                f"{problem} to a non-idempotent {call.method}; reconcile before resending",
                error_code="UNKNOWN_OUTCOME",
                url=shown,
            ) from None
        except requests.RequestException as exc:
            raise FatalApiError(f"request failed: {type(exc).__name__}", url=shown) from None
        except OSError as exc:
            # requests' own setup, e.g. a REQUESTS_CA_BUNDLE path with no file: nothing sent.
            raise ConfigError(f"HTTPS setup: {exc}") from None
        self._note_usage(response.headers.get(LIMIT_HEADER))
        log.debug(
            "salesforce.request",
            method=call.method,
            path=shown,
            kind=call.kind,
            status=response.status_code,
            ms=round((time.monotonic() - started) * 1000),
        )
        if response.status_code < 400 or response.status_code in call.ok_statuses:
            return response
        error = call.error_parser(response)
        if isinstance(error, ApiLimitError):
            self._limit_error = error
            raise error
        if (
            isinstance(error, RetriableError)
            and not call.idempotent
            and response.status_code not in REJECTED_UNPROCESSED_STATUSES
            and error.error_code is None
        ):
            # A gateway 500/502/504 without a Salesforce body: the write may have happened.
            raise UnknownOutcomeError(
                f"HTTP {response.status_code} to a non-idempotent {call.method}; reconcile "
                "before resending",
                status=response.status_code,
                error_code="UNKNOWN_OUTCOME",
                url=shown,
            )
        raise error

    def _in_flight(self, exchange: Callable[[], T], *, what: str, idempotent: bool) -> T:
        """Run one HTTP exchange, waiting for its answer at most ``stop_grace`` seconds
        once a stop is requested (see the module docstring)."""
        outcome: list[tuple[T, None] | tuple[None, BaseException]] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((exchange(), None))
            except BaseException as exc:  # handed to the waiting caller below
                outcome.append((None, exc))
            finally:
                done.set()

        threading.Thread(target=run, name="salesforce-request", daemon=True).start()
        deadline: float | None = None
        while not done.wait(_STOP_POLL_SECONDS):
            if deadline is None and self._stop.is_set():
                deadline = time.monotonic() + self._stop_grace
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("salesforce.answer_given_up", request=what, waited_s=self._stop_grace)
                problem = f"no answer to {what} within {self._stop_grace:g} s of the stop"
                if idempotent:
                    raise StopRequested(f"stop requested (SIGTERM/SIGINT): {problem}")
                raise UnknownOutcomeError(
                    f"{problem}; reconcile before resending", error_code="UNKNOWN_OUTCOME"
                )
        value, error = outcome[0]
        if error is not None:
            raise error
        return value  # type: ignore[return-value]

    def _note_usage(self, header: str | None) -> None:
        usage = parse_limit_header(header)
        if usage is not None:
            self._usage = usage

    def note_usage(self, usage: ApiUsage) -> None:
        """Record usage read from elsewhere (the SOAP LimitInfoHeader, /limits)."""
        self._usage = usage

    def _count(self, kind: str, *, api: bool = True) -> None:
        with self._count_lock:
            self._calls[kind] += 1
            if api:
                self._api_calls += 1


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    kind: str
    json: Any
    data: str | bytes | None
    body_factory: BodyFactory | None
    params: Mapping[str, str] | None
    headers: Mapping[str, str]
    idempotent: bool
    error_parser: ErrorParser
    ok_statuses: frozenset[int]


class _stop_before_waiting(tenacity.stop.stop_base):
    """Stop when the pauses so far plus the next one would exceed ``max_seconds``.

    ``stop_before_delay`` measures wall-clock time; this one counts only the waiting, so
    the cap holds (and is testable) whatever sleep function is injected.
    """

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return retry_state.idle_for + (retry_state.upcoming_sleep or 0.0) > self.max_seconds


def _log_retry(kind: str, what: str) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "salesforce.retry",
            kind=kind,
            path=what,
            attempt=state.attempt_number,
            wait_s=round(float(wait), 2),
            status=getattr(exc, "status", None),
            error_code=getattr(exc, "error_code", None),
            error=getattr(exc, "message", type(exc).__name__ if exc else None),
        )

    return before_sleep


def _json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FatalApiError(
            "response is not JSON", status=response.status_code, url=_path_of(response.url)
        ) from None


def _path_of(url: str | None) -> str:
    """The URL's path only: query strings may hold SOQL with record values."""
    return urlsplit(url or "").path


def _reads_only(method: str, path: str, body: Any) -> bool:
    """Whether a request cannot change data: a GET; a Composite whose every subrequest is a
    GET; creating a Bulk API 2.0 query job (it reads, like the GETs that poll it and fetch
    its results). An ingest job, a write or any other POST does not qualify."""
    if method == "GET":
        return True
    if method != "POST" or not isinstance(body, Mapping):
        return False
    rest = _DATA_PREFIX.sub("", path).strip("/")
    if rest == "jobs/query":
        return body.get("operation") in BULK_QUERY_OPERATIONS
    if rest != "composite":
        return False
    subs = body.get("compositeRequest")
    return (
        isinstance(subs, list)
        and bool(subs)
        and all(isinstance(s, Mapping) and s.get("method") == "GET" for s in subs)
    )
