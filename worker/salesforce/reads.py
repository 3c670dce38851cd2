"""Running SOQL with as few API calls as possible.

Up to five queries (the Composite limit for queries and collections) go out as one
Composite call; a query of more pages continues through ``nextRecordsUrl``, up to five
pages chained in one Composite (:func:`chained_pages`). A read-only (dry-run) client sends
the same Composites: they hold only GETs.

Both the source (pull) and the sink (conflict stamps, key lookups, reconcile) use these
helpers, so every read checks the API budget before it starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

from worker.errors import FatalApiError
from worker.salesforce.client import SalesforceClient, SubRequest

QUERIES_PER_COMPOSITE = 5


@dataclass(frozen=True)
class QueryPage:
    """One page of a REST query answer."""

    records: list[dict[str, Any]]
    total_size: int
    next_url: str | None

    @classmethod
    def from_json(cls, body: Any) -> QueryPage:
        if not isinstance(body, Mapping) or not isinstance(body.get("records"), list):
            raise FatalApiError("query response without records")
        next_url = body.get("nextRecordsUrl")
        done = bool(body.get("done", True))
        return cls(
            records=[r for r in body["records"] if isinstance(r, dict)],
            total_size=int(body.get("totalSize") or 0),
            next_url=str(next_url) if next_url and not done else None,
        )


def query_resource(all_rows: bool) -> str:
    # queryAll also returns deleted (recycle bin) and archived rows, with IsDeleted = true.
    return "queryAll" if all_rows else "query"


def query_subrequest(
    client: SalesforceClient, soql: str, reference_id: str, *, all_rows: bool
) -> SubRequest:
    """One query's first page as a Composite subrequest (one of its five queries)."""
    resource = query_resource(all_rows)
    return SubRequest(
        "GET", client.data_path(resource + "/") + "?q=" + quote_plus(soql), reference_id
    )


def first_pages(
    client: SalesforceClient, soqls: Sequence[str], *, all_rows: bool, kind: str
) -> list[QueryPage]:
    """The first page of each query, in order: ceil(n/5) composite calls."""
    out: list[QueryPage] = []
    for start in range(0, len(soqls), QUERIES_PER_COMPOSITE):
        batch = soqls[start : start + QUERIES_PER_COMPOSITE]
        client.check_budget(1)
        subs = [
            query_subrequest(client, soql, f"q{start + i}", all_rows=all_rows)
            for i, soql in enumerate(batch)
        ]
        for sub in client.composite(subs, kind=kind, idempotent=True):
            if not sub.ok:
                raise sub.error()
            out.append(QueryPage.from_json(sub.body))
    return out


def next_page(client: SalesforceClient, url: str, *, kind: str) -> QueryPage:
    client.check_budget(1)
    return QueryPage.from_json(client.get_json(url, kind=kind))


def chained_pages(client: SalesforceClient, url: str, count: int, *, kind: str) -> list[QueryPage]:
    """Up to ``count`` (at most five) further pages of one query in one Composite call: the
    first by its ``nextRecordsUrl``, each next one by a reference to the page before it
    (``@{p0.nextRecordsUrl}``). Query More counts against a Composite's five queries. A
    reference past the last page cannot be resolved and fails alone (``allOrNone`` is
    false); the pages up to the last are kept. One page goes out as a plain GET."""
    count = max(1, min(count, QUERIES_PER_COMPOSITE))
    if count == 1:
        return [next_page(client, url, kind=kind)]
    client.check_budget(1)
    subs = [SubRequest("GET", url, "p0")]
    subs += [SubRequest("GET", f"@{{p{i - 1}.nextRecordsUrl}}", f"p{i}") for i in range(1, count)]
    pages: list[QueryPage] = []
    for answer in client.composite(subs, kind=kind, idempotent=True):
        if pages and pages[-1].next_url is None:
            break  # chained past the last page
        if not answer.ok:
            raise answer.error()
        pages.append(QueryPage.from_json(answer.body))
    return pages


def later_pages(client: SalesforceClient, first: QueryPage, *, kind: str) -> Iterator[QueryPage]:
    """The pages after ``first``, chained five to a Composite: as many as the rows left fill
    at the first page's size (a page can be smaller, never larger), so a chain overruns the
    last page by one page at most."""
    url, read = first.next_url, len(first.records)
    while url:
        left = math.ceil(max(first.total_size - read, 1) / max(len(first.records), 1))
        pages = chained_pages(client, url, left, kind=kind)
        for page in pages:
            read += len(page.records)
            yield page
        url = pages[-1].next_url


def every_row(
    client: SalesforceClient, soqls: Sequence[str], *, all_rows: bool, kind: str
) -> Iterator[dict[str, Any]]:
    """Every row of every query (small lookups: stamps, key markers)."""
    for page in first_pages(client, soqls, all_rows=all_rows, kind=kind):
        yield from page.records
        for more in later_pages(client, page, kind=kind):
            yield from more.records


def composites_for(query_count: int) -> int:
    """API calls :func:`first_pages` spends on ``query_count`` queries."""
    return math.ceil(query_count / QUERIES_PER_COMPOSITE)
