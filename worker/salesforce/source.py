"""SalesforceSource: incremental pulls with ``queryAll``, in as few API calls as possible.

For each :class:`~worker.ports.ObjectQuery`:

- SOQL from the mapping (:func:`~worker.salesforce.soql.incremental_select`): always
  ``Id, SystemModstamp, IsDeleted``; the scope filters; ``SystemModstamp >= since -
  SF_OVERLAP_SECONDS AND SystemModstamp <= until``; ``ORDER BY SystemModstamp, Id``. An
  object read otherwise (:func:`worker.schema.replication`: ``CreatedDate`` for field
  history; no ``IsDeleted`` on User, Group, GroupMember, ...) is queried on its own fields.
- ``queryAll``, so rows deleted since the last run come back with ``IsDeleted = true``:
  they go to :attr:`Page.deleted_ids`, never to :attr:`Page.records` (the ``deleted``
  resource only reaches back 15 days; ``queryAll`` reaches the whole recycle bin).
- The first pages of up to five objects share one Composite call, beside the replication
  probes (Get Updated / Get Deleted) of up to ten more (:meth:`SalesforceSource.probe_window`),
  so an idle cycle costs one API call; further pages follow ``nextRecordsUrl``, up to five
  chained in one Composite (:func:`~worker.salesforce.reads.chained_pages`), yielded as
  they arrive (at most five pages in memory per object, one open cursor per object).
- When a first page says ``totalSize > SF_BULK_THRESHOLD``, that object is read through
  Bulk API 2.0 instead (a ``queryAll`` job, polled, its CSV streamed by
  ``Sforce-Locator``). CSV has no types, so values are typed like the same fields in the
  REST first page (checkboxes to bool, numbers to int/float, ``""`` to None), datetimes are
  rewritten to the REST form (``...000+0000``) so Id+stamp de-duplication still matches,
  and ``Owner.Name`` columns are nested like REST nests them.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import requests
import structlog

from worker import schema
from worker.errors import FatalApiError
from worker.ports import ApiUsage, ObjectQuery, OrgIdentity, Page
from worker.salesforce.client import (
    COMPOSITE_MAX_SUBREQUESTS,
    SalesforceClient,
    SubRequest,
    SubResponse,
)
from worker.salesforce.reads import (
    QUERIES_PER_COMPOSITE,
    QueryPage,
    later_pages,
    query_subrequest,
)
from worker.salesforce.soql import incremental_select

log = structlog.get_logger(__name__)
T = TypeVar("T")

PAGE_ROWS = 2000  # REST's own page size; Bulk rows are re-cut to it for the pipeline
# Rows per Bulk results request: 25,000 rows of CSV are a few MB held at once, and a 200,000-row
# object takes 8 results calls (REST would take 100 pages in 20 Composites).
BULK_MAX_RECORDS = 25_000
BULK_POLL_DELAYS = (1.0, 2.0, 4.0, 8.0)  # then every 10 s
BULK_POLL_EVERY = 10.0
BULK_MAX_WAIT = 1800.0  # seconds of polling before the job is given up
PROBE_MAX_DAYS = 14  # replication probes' reach: Get Deleted answers for 15 days back
_SF_UTC = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,3})?Z$")


class SalesforceSource:
    """A :class:`~worker.ports.Source` over a live org."""

    name = "salesforce"

    def __init__(self, client: SalesforceClient, *, org_name: str | None = None) -> None:
        self._client = client
        self._calls = 0
        self._org_name = org_name
        self._identity: OrgIdentity | None = None

    def identity(self) -> OrgIdentity:
        """The org signed in to, labelled with the mapping's ``org.name`` (else its host)."""
        if self._identity is None:
            label = self._org_name or urlsplit(self._client.instance_url).netloc
            self._identity = self._metered(self._client.identity, label)
        return self._identity

    def api_calls(self) -> int:
        return self._calls

    def usage(self) -> ApiUsage | None:
        return self._client.usage()

    def soql(self, query: ObjectQuery, *, ordered: bool = True) -> str:
        """The SOQL text pulled for one query.

        A row Salesforce commits late carries a stamp up to ``SF_OVERLAP_SECONDS`` older
        than its commit, so the rows stamped within that overlap before the last read began
        (``read_at``) are read again. A cursor older than that resumes after its (stamp, Id)
        and reads nothing twice: the worker's own writes, a mass load sharing one stamp.
        A watermark without ``read_at`` (written by an older version) is widened by the
        overlap as before.
        """
        since, after_id = query.since, None
        if since is not None:
            overlap = dt.timedelta(seconds=self._client.settings.overlap_seconds)
            window = (query.read_at or since) - overlap
            if query.read_at is not None and since < window:
                after_id = query.after_id
            else:
                since = window
        return incremental_select(
            query.sobject,
            query.fields,
            query.filters,
            since,
            query.until,
            ordered=ordered,
            replication=query.replication,
            after_id=after_id,
        )

    def fetch(self, queries: Sequence[ObjectQuery]) -> Iterator[Page]:
        """Each composite carries the first pages of up to five objects and, beside them,
        the replication probes of further objects (see :meth:`probe_window`); an object
        whose probe finds a change (or fails) has its first page in the next composite,
        one whose probe finds none is not read this cycle."""
        todo = list(queries)
        must_read: set[int] = set()  # id() of the queries whose probe found a change

        def probed(query: ObjectQuery) -> bool:
            return id(query) not in must_read and self.probe_window(query) is not None

        def rank(query: ObjectQuery) -> int:
            """Who gets the five first pages: objects that cannot be probed, then those
            whose probe would list rows already read (their cursor's row is stamped
            inside its window; an object found empty has no such row)."""
            window = self.probe_window(query) if probed(query) else None
            if window is None:
                return 0
            inside = query.since is not None and query.since >= window[0]
            return 1 if inside and query.after_id is not None else 2

        while todo:
            todo.sort(key=rank)  # stable: the mapping's order within a rank
            group = todo[:QUERIES_PER_COMPOSITE]
            probes: list[tuple[ObjectQuery, list[SubRequest]]] = []
            room = COMPOSITE_MAX_SUBREQUESTS - len(group)
            for query in todo[len(group) :]:
                subs = self._probe(query, len(probes)) if probed(query) else []
                if not subs or len(subs) > room:
                    break
                probes.append((query, subs))
                room -= len(subs)
            todo = todo[len(group) + len(probes) :]
            pages: list[QueryPage | None]
            found, changed = self._metered(self._first_pages, group, probes)
            pages = list(found)
            must_read.update(id(q) for q in changed)
            todo = [*changed, *todo]
            for i, query in enumerate(group):
                first = pages[i]
                pages[i] = None  # let it go once streamed
                assert first is not None
                yield from self._stream(query, first)

    def probe_window(self, query: ObjectQuery) -> tuple[dt.datetime, dt.datetime] | None:
        """The window a replication probe must cover for ``query``, if one can stand in
        for its first page: sObject Get Updated and Get Deleted list the Ids changed or
        deleted between two minutes (seconds are ignored), and are not queries, so they
        do not count against a composite's five.

        Every row stamped up to ``read_at - SF_OVERLAP_SECONDS`` was read by the last read
        (a row committed late is stamped within the overlap), so a change not yet read is
        stamped after that. The window runs from that minute to the minute after ``until``;
        the last read's ``read_at`` stays as it was, so the next probe starts there again.
        A probe lists rows already read when the cursor's stamp falls inside its window:
        such an object is then read, at the cost of one more composite. Objects read on
        another field than SystemModstamp, read whole, never read yet, or last read more
        than :data:`PROBE_MAX_DAYS` ago (Get Deleted reaches back 15 days) are queried.
        """
        if query.since is None or query.read_at is None or query.until is None:
            return None
        if query.replication.stamp != schema.SYSTEM_MODSTAMP or query.replication.full:
            return None
        overlap = dt.timedelta(seconds=self._client.settings.overlap_seconds)
        start = _minute(query.read_at - overlap)
        if query.until - start > dt.timedelta(days=PROBE_MAX_DAYS):
            return None
        return start, _minute(query.until) + dt.timedelta(minutes=1)

    def _probe(self, query: ObjectQuery, index: int) -> list[SubRequest]:
        window = self.probe_window(query)
        if window is None:
            return []
        params = urlencode({"start": window[0].isoformat(), "end": window[1].isoformat()})
        kinds = ("updated", "deleted") if query.replication.deletes else ("updated",)
        return [
            SubRequest(
                "GET",
                self._client.data_path(f"sobjects/{query.sobject}/{kind}/") + "?" + params,
                f"{kind}{index}",
            )
            for kind in kinds
        ]

    def _first_pages(
        self,
        group: Sequence[ObjectQuery],
        probes: Sequence[tuple[ObjectQuery, Sequence[SubRequest]]],
    ) -> tuple[list[QueryPage], list[ObjectQuery]]:
        """One composite: the group's first pages, and the probed objects found changed."""
        client = self._client
        client.check_budget(1)
        subs = [
            query_subrequest(client, self.soql(q), f"q{i}", all_rows=True)
            for i, q in enumerate(group)
        ]
        answers = client.composite(
            [*subs, *(s for _, p in probes for s in p)], kind="query", idempotent=True
        )
        pages = []
        for answer in answers[: len(group)]:
            if not answer.ok:
                raise answer.error()
            pages.append(QueryPage.from_json(answer.body))
        by_ref = {a.reference_id: a for a in answers[len(group) :]}
        changed = [q for q, p in probes if any(_changes(by_ref[s.reference_id]) for s in p)]
        log.debug(
            "salesforce.probed",
            unchanged=[q.sobject for q, _ in probes if q not in changed],
            changed=[q.sobject for q in changed],
        )
        return pages, changed

    def _stream(self, query: ObjectQuery, first: QueryPage) -> Iterator[Page]:
        """One object's pages from its first: REST pages as they come, or a Bulk job."""
        threshold = self._client.settings.bulk_threshold
        if first.total_size > threshold:
            log.info(
                "salesforce.bulk_switch",
                sobject=query.sobject,
                total_size=first.total_size,
                threshold=threshold,
            )
            yield from self._bulk(query, first.records)
            return
        yield self._page(query, first.records)
        pages = later_pages(self._client, first, kind="query_more")
        while (page := self._metered(next, pages, None)) is not None:
            yield self._page(query, page.records)

    # -- Bulk API 2.0 -----------------------------------------------------------------------
    def _bulk(self, query: ObjectQuery, sample: Sequence[Mapping[str, Any]]) -> Iterator[Page]:
        client = self._client
        body = {
            "operation": "queryAll",
            "query": self.soql(query, ordered=False),
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        }

        def create() -> Any:
            client.check_budget(1)
            # A duplicate query job (answer lost, job created twice) reads the same rows
            # and costs nothing else, so creating one is safe to retry.
            return client.request(
                "POST", client.data_path("jobs/query"), kind="bulk", json=body, idempotent=True
            ).json()

        job = self._metered(create)
        job_id = str(job.get("id") or "")
        if not job_id:
            raise FatalApiError("Bulk API 2.0 did not return a job id")
        self._wait_for_job(job_id)
        convert = _csv_converters(sample)
        locator: str | None = None
        while True:
            params = {"maxRecords": str(BULK_MAX_RECORDS)}
            if locator:
                params["locator"] = locator

            def results(params: dict[str, str] = params) -> requests.Response:
                client.check_budget(1)
                return client.request(
                    "GET",
                    client.data_path(f"jobs/query/{job_id}/results"),
                    kind="bulk",
                    params=params,
                    headers={"Accept": "text/csv"},
                )

            response = self._metered(results)
            next_locator = response.headers.get("Sforce-Locator")
            content = response.content
            del response
            # Rows are parsed as the pages go out: one page of dicts at a time, not the
            # whole result set (up to BULK_MAX_RECORDS rows) on top of its CSV text.
            # Bulk rows come in no particular order: no page settles the watermark until
            # the whole result set is in (the closing empty page below).
            rows: list[dict[str, Any]] = []
            for row in _iter_csv(content, query.sobject, convert, client.data_path()):
                rows.append(row)
                if len(rows) == PAGE_ROWS:
                    yield self._page(query, rows, settled=False)
                    rows = []
            del content
            if rows:
                yield self._page(query, rows, settled=False)
            # The last set says "null" (a string) rather than leaving the header out.
            if not next_locator or next_locator == "null":
                yield Page(
                    sobject=query.sobject,
                    records=(),
                    settled=True,
                    stamp_field=query.replication.stamp,
                )
                return
            locator = next_locator

    def _wait_for_job(self, job_id: str) -> None:
        client = self._client
        waited = 0.0
        delays = iter(BULK_POLL_DELAYS)
        while True:
            delay = next(delays, BULK_POLL_EVERY)
            if waited + delay > BULK_MAX_WAIT:
                raise FatalApiError(
                    f"Bulk API 2.0 job {job_id} not complete after {BULK_MAX_WAIT:.0f} s"
                )
            client.pause(delay)
            waited += delay

            def poll() -> Any:
                client.check_budget(1)
                return client.get_json(client.data_path(f"jobs/query/{job_id}"), kind="bulk")

            state = self._metered(poll)
            status = str(state.get("state") or "") if isinstance(state, Mapping) else ""
            if status == "JobComplete":
                return
            if status in ("Failed", "Aborted"):
                raise FatalApiError(
                    f"Bulk API 2.0 job {job_id} {status}: {state.get('errorMessage') or ''}",
                    error_code="BULK_JOB_" + status.upper(),
                )

    # -- helpers ----------------------------------------------------------------------------
    def _metered(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` and add the API calls it made to this source's count."""
        before = self._client.api_calls()
        try:
            result = fn(*args, **kwargs)
        finally:
            self._calls += self._client.api_calls() - before
        return result

    @staticmethod
    def _page(
        query: ObjectQuery, rows: Sequence[Mapping[str, Any]], *, settled: bool = True
    ) -> Page:
        records = []
        deleted = []
        for row in rows:
            if row.get(schema.IS_DELETED) is True:
                rid = row.get(schema.ID)
                if isinstance(rid, str):
                    deleted.append(rid)
            else:
                records.append(row)
        return Page(
            sobject=query.sobject,
            records=records,
            deleted_ids=tuple(deleted),
            settled=settled,
            stamp_field=query.replication.stamp,
        )


def _minute(instant: dt.datetime) -> dt.datetime:
    """The UTC minute an instant falls in (replication probes ignore seconds)."""
    return instant.astimezone(dt.UTC).replace(second=0, microsecond=0)


def _changes(answer: SubResponse) -> bool:
    """Whether a probe's answer shows a change (or cannot be read as showing none)."""
    if not answer.ok or not isinstance(answer.body, Mapping):
        return True
    return bool(answer.body.get("ids") or answer.body.get("deletedRecords"))


# -- CSV typing ----------------------------------------------------------------------------
Converter = Callable[[str], Any]


def rest_datetime(text: str) -> str:
    """Bulk's ``2026-11-20T10:00:00.000Z`` as REST writes it: ``...000+0000``."""
    match = _SF_UTC.match(text)
    if not match:
        return text
    millis = (match.group(2) or ".000").ljust(4, "0")
    return f"{match.group(1)}{millis}+0000"


def _to_bool(text: str) -> bool:
    return text.strip().lower() == "true"


def _to_number(sample: int | float) -> Converter:
    def convert(text: str) -> Any:
        try:
            return int(text) if isinstance(sample, int) and "." not in text else float(text)
        except ValueError:
            return text

    return convert


def _lookup(row: Mapping[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _csv_converters(sample: Sequence[Mapping[str, Any]]) -> Callable[[str], Converter]:
    """Per-column converters, typed after the REST JSON of the same fields."""
    cache: dict[str, Converter] = {}

    def for_column(column: str) -> Converter:
        if column in cache:
            return cache[column]
        found: Any = None
        for row in sample:
            found = _lookup(row, column)
            if found is not None:
                break
        conv: Converter
        if column == schema.IS_DELETED or isinstance(found, bool):
            conv = _to_bool
        elif isinstance(found, (int, float)):
            conv = _to_number(found)
        else:
            conv = rest_datetime
        cache[column] = conv
        return conv

    return for_column


def _iter_csv(
    content: bytes, sobject: str, converters: Callable[[str], Converter], data_path: str
) -> Iterator[dict[str, Any]]:
    """The rows of one Bulk results CSV, typed and nested, one at a time.

    The bytes are decoded as they are read (no second, decoded copy of the whole set);
    ``newline="\\n"`` splits lines on LF only and translates nothing, as ``io.StringIO``
    did, and the csv module handles quoted line breaks itself.
    """
    text = io.TextIOWrapper(io.BytesIO(content), encoding="utf-8-sig", newline="\n")
    reader = csv.reader(text)
    header = next(reader, None)
    if not header:
        return
    convs = [converters(c) for c in header]
    for values in reader:
        if not values:
            continue
        flat: dict[str, Any] = {
            col: (None if raw == "" else conv(raw))
            for col, conv, raw in zip(header, convs, values, strict=False)
        }
        row = _nest(flat)
        rid = row.get(schema.ID)
        row[schema.ATTRIBUTES] = {
            "type": sobject,
            "url": f"{data_path}sobjects/{sobject}/{rid}",
        }
        yield row


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"Owner.Name": "Ann"}`` -> ``{"Owner": {"Name": "Ann"}}``; an all-empty parent is
    None, as REST returns a null relationship."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if "." not in key:
            out[key] = value
            continue
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return {k: _null_if_empty(v) for k, v in out.items()}


def _null_if_empty(value: Any) -> Any:
    if isinstance(value, dict):
        inner = {k: _null_if_empty(v) for k, v in value.items()}
        return None if all(v is None for v in inner.values()) else inner
    return value
