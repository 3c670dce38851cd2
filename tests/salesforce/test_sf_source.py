"""SalesforceSource: composite first pages, nextRecordsUrl streaming, deletions, the
incremental window, the budget stop and the Bulk API 2.0 switch."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
import tenacity

from worker.errors import ApiLimitError, FatalApiError
from worker.ports import ObjectQuery
from worker.records import Record
from worker.salesforce import source as source_module
from worker.salesforce.client import SalesforceClient
from worker.salesforce.reads import chained_pages, first_pages
from worker.salesforce.source import SalesforceSource, rest_datetime

from .fakeorg import FakeOrg
from .fakesoql import parse
from .sfhelpers import FIXTURES, Sleeps, load_fixture, make_client, settings

ACME = "https://acme.my.salesforce.com"
UTC = dt.UTC
RUN_START = dt.datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def opp_query(**kw: Any) -> ObjectQuery:
    return ObjectQuery("Opportunity", ("Name", "StageName", "Amount", "CloseDate"), **kw)


def test_two_pages_are_streamed_and_deletions_split_off() -> None:
    page1 = load_fixture("query_page1.json")
    with responses.RequestsMock() as mock:
        mock.post(
            f"{ACME}/services/data/v66.0/composite",
            json={
                "compositeResponse": [
                    {"body": page1, "httpHeaders": {}, "httpStatusCode": 200, "referenceId": "q0"}
                ]
            },
            headers={"Sforce-Limit-Info": "api-usage=10/15000"},
        )
        mock.get(
            f"{ACME}/services/data/v66.0/queryAll/01g000000000001AAA-2000",
            json=load_fixture("query_page2.json"),
            headers={"Sforce-Limit-Info": "api-usage=11/15000"},
        )
        client = SalesforceClient(
            settings(instance_url=ACME, access_token="00D!x"), wait=tenacity.wait_none()
        )
        src = SalesforceSource(client)
        pages = src.fetch([opp_query()])
        first = next(pages)
        assert len(mock.calls) == 1  # the second page is not fetched before it is wanted
        assert [r["Id"] for r in first.records] == ["006000000000001AAA"]
        assert first.deleted_ids == ("006000000000002AAA",)
        second = next(pages)
        assert [r["Id"] for r in second.records] == ["006000000000003AAA"]
        assert list(pages) == []
        assert src.api_calls() == 2
        usage = src.usage()
        assert usage is not None
        assert usage.used == 11
        sent = json.loads(mock.calls[0].request.body or "")
        (sub,) = sent["compositeRequest"]
        assert sub["method"] == "GET"
        assert sub["url"].startswith(
            "/services/data/v66.0/queryAll/?q=SELECT+Id%2C+SystemModstamp%2C+IsDeleted"
        )
        # Records keep the REST JSON the rest of the worker reads.
        rec = Record.from_json(first.records[0])
        assert rec.sobject == "Opportunity"
        assert rec.get("Owner.Name") == "Dana Reyes"


def test_idle_cycle_costs_exactly_one_call(org: FakeOrg) -> None:
    src = SalesforceSource(make_client(org))
    queries = [
        ObjectQuery(obj, (), since=RUN_START - dt.timedelta(hours=1), until=RUN_START)
        for obj in ("Opportunity", "Lead", "Case", "Task", "CaseComment")
    ]
    pages = list(src.fetch(queries))
    assert [p.sobject for p in pages] == ["Opportunity", "Lead", "Case", "Task", "CaseComment"]
    assert all(not p.records for p in pages)
    assert org.call_count == 1
    assert org.calls_by_kind == {"composite": 1}
    assert src.api_calls() == 1


def test_more_than_five_objects_take_one_composite_per_five(org: FakeOrg) -> None:
    src = SalesforceSource(make_client(org))
    objects = ["Opportunity", "Lead", "Case", "Task", "CaseComment", "Account", "Contact"]
    list(src.fetch([ObjectQuery(o, ()) for o in objects]))
    assert org.calls_by_kind == {"composite": 2}
    assert org.composite_sizes == [5, 2]


def test_incremental_window_and_ordering(org: FakeOrg) -> None:
    inside = []
    for minutes in (-30, -9, -5, 0):
        stamp = (RUN_START + dt.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
        inside.append(org.add("Opportunity", Name=f"at {minutes}", SystemModstamp=stamp))
    org.add("Opportunity", Name="after run start", SystemModstamp="2026-11-23T10:00:01.000+0000")
    since = RUN_START - dt.timedelta(minutes=5)  # the watermark
    src = SalesforceSource(make_client(org, overlap_seconds=300))
    query = ObjectQuery("Opportunity", ("Name",), since=since, until=RUN_START)
    assert src.soql(query) == (
        "SELECT Id, SystemModstamp, IsDeleted, Name FROM Opportunity "
        "WHERE SystemModstamp >= 2026-11-23T09:50:00Z AND SystemModstamp <= 2026-11-23T10:00:00Z "
        "ORDER BY SystemModstamp, Id"
    )
    (page,) = list(src.fetch([query]))
    assert [r["Name"] for r in page.records] == ["at -9", "at -5", "at 0"]


def exchanges(org: FakeOrg) -> list[tuple[Any, Any]]:
    """Each Composite call's request and answer bodies, in order."""
    return [
        (json.loads(c.request.body or ""), json.loads(c.response.text))
        for c in org._mock.calls
        if urlsplit(c.request.url or "").path.endswith("/composite")
    ]


def test_further_pages_are_chained_five_to_a_composite(org: FakeOrg) -> None:
    """The first page in the first composite; the eleven after it in composites of five
    chained Query More subrequests (``@{p0.nextRecordsUrl}``), then one GET for the last."""
    org.page_size = 5
    for i in range(60):
        org.add("Lead", LastName=f"L{i:02d}", Company="Acme")
    src = SalesforceSource(make_client(org))
    pages = list(src.fetch([ObjectQuery("Lead", ("LastName",))]))
    assert [len(p.records) for p in pages] == [5] * 12
    assert [r["LastName"] for p in pages for r in p.records] == [f"L{i:02d}" for i in range(60)]
    assert org.calls_by_kind == {"composite": 3, "query_more": 1}
    assert src.api_calls() == 4
    chained = exchanges(org)[1][0]["compositeRequest"]
    assert chained[0]["url"].startswith("/services/data/v66.0/queryAll/")
    assert [s["url"] for s in chained[1:]] == [f"@{{p{i}.nextRecordsUrl}}" for i in range(4)]


def test_a_chain_past_the_last_page_keeps_the_pages_before_it(org: FakeOrg) -> None:
    """Pages can be smaller than the first, so a chain may ask for one page too many: that
    subrequest's reference cannot be resolved and fails alone."""
    org.page_size = 2
    for i in range(6):
        org.add("Lead", LastName=f"L{i}")
    client = make_client(org)
    (first,) = first_pages(
        client, ["SELECT Id, LastName FROM Lead ORDER BY LastName"], all_rows=False, kind="query"
    )
    assert first.next_url is not None
    pages = chained_pages(client, first.next_url, 4, kind="query_more")
    assert [[r["LastName"] for r in p.records] for p in pages] == [["L2", "L3"], ["L4", "L5"]]
    assert pages[-1].next_url is None
    answers = exchanges(org)[-1][1]["compositeResponse"]
    assert [a["httpStatusCode"] for a in answers] == [200, 200, 400, 400]
    assert answers[2]["body"][0]["errorCode"] == "PROCESSING_HALTED"


def test_deleted_rows_become_deleted_ids(org: FakeOrg) -> None:
    keep = org.add("Case", Subject="stays")
    gone = org.add("Case", Subject="deleted by a person")
    org.delete(gone)
    (page,) = list(SalesforceSource(make_client(org)).fetch([ObjectQuery("Case", ("Subject",))]))
    assert [r["Id"] for r in page.records] == [keep]
    assert page.deleted_ids == (gone,)


def test_filters_take_str_bool_and_int_values(org: FakeOrg) -> None:
    org.add("Opportunity", Name="a", Type="Payment", Customer_Responded__c=False, Amount=5)
    org.add("Opportunity", Name="b", Type="Payment", Customer_Responded__c=True, Amount=5)
    org.add("Opportunity", Name="c", Type="New Business", Customer_Responded__c=False, Amount=5)
    query = ObjectQuery(
        "Opportunity",
        ("Name",),
        filters={"Type": ("Payment",), "Customer_Responded__c": (False,), "Amount": (5, 6)},
    )
    (page,) = list(SalesforceSource(make_client(org)).fetch([query]))
    assert [r["Name"] for r in page.records] == ["a"]


def test_a_bad_field_fails_that_fetch_with_its_error_code(org: FakeOrg) -> None:
    src = SalesforceSource(make_client(org))
    with pytest.raises(FatalApiError) as info:
        list(src.fetch([ObjectQuery("Opportunity", ("Bogus__c",))]))
    assert info.value.error_code == "INVALID_FIELD"


def test_budget_stops_before_the_next_page(org: FakeOrg) -> None:
    org.page_size = 2
    for i in range(5):
        org.add("Lead", LastName=f"L{i}")
    org.daily_limit = 100
    org.used = 79  # the composite makes it 80: 20 left = the 20% reserve
    src = SalesforceSource(make_client(org))
    pages = src.fetch([ObjectQuery("Lead", ("LastName",))])
    got = [next(pages)]
    with pytest.raises(ApiLimitError) as info:
        next(pages)
    assert info.value.error_code == "API_RESERVE"
    assert len(got) == 1  # the page already read is kept by the caller
    assert org.call_count == 1


def test_a_dry_run_reads_as_cheaply_and_writes_nothing(org: FakeOrg) -> None:
    src = SalesforceSource(make_client(org, read_only=True))
    list(src.fetch([ObjectQuery("Lead", ()), ObjectQuery("Case", ())]))
    assert org.writes() == []
    assert org.calls_by_kind == {"composite": 1}  # both first pages in one read-only composite


# -- Bulk API 2.0 ----------------------------------------------------------------------------
@pytest.fixture
def big_org(org: FakeOrg) -> FakeOrg:
    org.page_size = 4
    for i in range(11):
        org.add(
            "Opportunity",
            Name=f'Deal {i}, "quoted"',
            StageName="Closed Won",
            Amount=1000.5 + i if i % 3 else None,
            CloseDate="2026-10-01",
            Customer_Responded__c=i % 2 == 0,
            OwnerId="005000000000000001",
        )
    gone = org.add("Opportunity", Name="deleted", StageName="Closed Lost")
    org.delete(gone)
    return org


def test_large_objects_switch_to_bulk_and_match_rest(
    big_org: FakeOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = ObjectQuery(
        "Opportunity", ("Name", "StageName", "Amount", "CloseDate", "Customer_Responded__c")
    )
    rest = list(SalesforceSource(make_client(big_org, bulk_threshold=100)).fetch([query]))
    big_org.calls.clear()
    big_org.calls_by_kind.clear()

    monkeypatch.setattr(source_module, "BULK_MAX_RECORDS", 5)
    sleeps = Sleeps()
    src = SalesforceSource(make_client(big_org, sleeps, bulk_threshold=10))
    bulk = list(src.fetch([query]))

    def strip(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "attributes"} for r in rows]

    rest_rows = [r for p in rest for r in p.records]
    bulk_rows = [r for p in bulk for r in p.records]
    assert sorted(strip(bulk_rows), key=lambda r: r["Id"]) == sorted(
        strip(rest_rows), key=lambda r: r["Id"]
    )
    assert [i for p in bulk for i in p.deleted_ids] == [i for p in rest for i in p.deleted_ids]
    # REST pages come in SystemModstamp order: each settles the watermark. Bulk rows come in
    # no order: only the closing (empty) page does, once every row is in.
    assert all(p.settled for p in rest)
    assert [p.settled for p in bulk] == [False] * (len(bulk) - 1) + [True]
    assert not bulk[-1].records
    # composite (first page, discarded) + create + 1 poll + 3 result sets of <= 5 rows
    assert big_org.calls_by_kind == {"composite": 1, "bulk": 5}
    assert src.api_calls() == 6
    assert sleeps.calls == [1.0]  # one pause before the first poll
    (job_post,) = [c for c in big_org.calls if c[0] == "POST" and c[2] == "bulk"]
    assert job_post[1].endswith("/jobs/query")


def test_bulk_job_that_fails_is_a_fatal_error(big_org: FakeOrg) -> None:
    big_org.fail(
        kind="bulk",
        method="GET",
        status=200,
        error_code=None,
        body={"id": "750x", "state": "Failed", "errorMessage": "InvalidBatch: query timed out"},
    )
    src = SalesforceSource(make_client(big_org, bulk_threshold=10))
    with pytest.raises(FatalApiError, match="Failed") as info:
        list(src.fetch([ObjectQuery("Opportunity", ("Name",))]))
    assert info.value.error_code == "BULK_JOB_FAILED"


def test_bulk_csv_is_typed_after_the_rest_sample() -> None:
    sample = load_fixture("query_page1.json")["records"]
    content = (FIXTURES / "bulk_results.csv").read_bytes()
    convert = source_module._csv_converters(sample)
    rows = list(source_module._iter_csv(content, "Opportunity", convert, "/services/data/v66.0/"))
    assert rows[0]["IsDeleted"] is False
    assert rows[1]["IsDeleted"] is True
    assert rows[0]["Amount"] == 1250.0
    assert rows[2]["Amount"] is None
    assert rows[0]["SystemModstamp"] == "2026-11-20T09:15:02.000+0000"
    assert rows[1]["Name"] == 'Globex, "West" - Invoice 77'
    assert rows[0]["Owner"] == {"Name": "Dana Reyes"}
    assert rows[2]["Owner"] is None
    assert rows[2]["Customer_Responded__c"] == "true"  # no sample value: left as text
    assert rows[0]["CloseDate"] == "2026-10-01"
    assert rows[0]["attributes"]["type"] == "Opportunity"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T09:15:02.000Z", "2026-11-20T09:15:02.000+0000"),
        ("2026-11-20T09:15:02Z", "2026-11-20T09:15:02.000+0000"),
        ("2026-11-20", "2026-11-20"),
        ("Acme", "Acme"),
    ],
)
def test_rest_datetime(text: str, expected: str) -> None:
    assert rest_datetime(text) == expected


def test_bulk_results_follow_the_locator_with_max_records(
    big_org: FakeOrg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "BULK_MAX_RECORDS", 4)
    list(
        SalesforceSource(make_client(big_org, bulk_threshold=1)).fetch(
            [ObjectQuery("Opportunity", ("Name",))]
        )
    )
    assert big_org._mock is not None
    results = [
        parse_qs(urlsplit(str(c.request.url)).query)
        for c in big_org._mock.calls
        if "/results" in (c.request.url or "")
    ]
    assert [r.get("maxRecords") for r in results] == [["4"]] * 3
    assert "locator" not in results[0]
    assert "locator" in results[1]
    query = [
        c
        for c in big_org._mock.calls
        if c.request.method == "POST" and "jobs/query" in (c.request.url or "")
    ]
    body = json.loads(query[0].request.body or "")
    assert body["operation"] == "queryAll"
    assert "ORDER BY" not in body["query"]
    parse(body["query"])


def test_an_object_whose_probe_fails_is_read(org: FakeOrg, monkeypatch: pytest.MonkeyPatch) -> None:
    read_at = org.now - dt.timedelta(hours=1)
    org.add("Lead", LastName="Lee")
    queries = [
        ObjectQuery(o, (), since=read_at, until=org.now, read_at=read_at)
        for o in ("Account", "Case", "Contact", "Opportunity", "Task", "Lead", "EmailMessage")
    ]
    source = SalesforceSource(make_client(org))
    pages = list(source.fetch(queries))  # five first pages; Lead and EmailMessage probed
    assert [p.sobject for p in pages][-1] == "Lead"  # its probe found the new Lead
    assert len(pages[-1].records) == 1
    assert "EmailMessage" not in [p.sobject for p in pages]  # no change: not read
    assert org.calls_by_kind["composite"] == 2

    org.calls_by_kind.clear()
    monkeypatch.setattr(org, "_replicated", lambda *a: (500, [{"errorCode": "UNKNOWN"}]))
    assert {p.sobject for p in source.fetch(queries)} >= {"Lead", "EmailMessage"}
    assert org.calls_by_kind["composite"] == 2  # an unreadable probe counts as a change
