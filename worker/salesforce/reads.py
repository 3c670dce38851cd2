"""Running SOQL with as few API calls as possible.

Up to five queries (the Composite limit for queries and collections) go out as one
Composite call; each then continues page by page through ``nextRecordsUrl`` with one GET
per page. A read-only (dry-run) client cannot POST, so it sends each first page as its own
GET instead: more calls, no writes.

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


def every_row(
    client: SalesforceClient, soqls: Sequence[str], *, all_rows: bool, kind: str
) -> Iterator[dict[str, Any]]:
    """Every row of every query (small lookups: stamps, key markers)."""
    for page in first_pages(client, soqls, all_rows=all_rows, kind=kind):
        yield from page.records
        url = page.next_url
        while url:
            more = next_page(client, url, kind=kind)
            yield from more.records
            url = more.next_url


def composites_for(query_count: int) -> int:
    """API calls :func:`first_pages` spends on ``query_count`` queries."""
    return math.ceil(query_count / QUERIES_PER_COMPOSITE)
