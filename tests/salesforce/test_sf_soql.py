"""SOQL: checked identifiers, escaped values, the exact incremental query text."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from simple_salesforce.format import quote_soql_value

from worker.salesforce.soql import (
    Condition,
    Select,
    identifier,
    incremental_select,
    like_pattern,
    literal,
    select,
    unique_fields,
)

from .fakesoql import parse

NASTY = [
    "O'Brien",
    "back\\slash",
    "line\nbreak\r\ttab",
    'quote " double',
    "' OR Name != '",
    "\\' OR Id != null --",
    "50% off_sale",
    "ünïcødé ✓",
    "\b\f",
]


@pytest.mark.parametrize(
    "name", ["Id", "Payment_Status__c", "Owner.Name", "Account.Owner.Email", "ns__Field__c"]
)
def test_valid_identifiers(name: str) -> None:
    assert identifier(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1abc",
        "Name; DELETE",
        "Name FROM Account",
        "a..b",
        "Owner.",
        "_x",
        "Name'",
        "Id,Name",
        "(Id)",
    ],
)
def test_invalid_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="API name"):
        identifier(name)


@pytest.mark.parametrize("text", NASTY)
def test_strings_are_escaped_like_simple_salesforce(text: str) -> None:
    assert literal(text) == quote_soql_value(text)


@pytest.mark.parametrize("text", NASTY)
def test_escaped_strings_round_trip_through_a_soql_parser(text: str) -> None:
    soql = select(Select("Account", ("Id",), (Condition("Name", "=", text),)))
    query = parse(soql)
    assert query.where is not None
    assert query.where({"Name": text})
    assert not query.where({"Name": text + "x"})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (None, "null"),
        (42, "42"),
        (Decimal("12.50"), "12.50"),
        (1e-05, "0.00001"),
        (2.5, "2.5"),
        (dt.date(2026, 11, 23), "2026-11-23"),
        (dt.datetime(2026, 11, 23, 10, 0, 0, 123456, tzinfo=dt.UTC), "2026-11-23T10:00:00Z"),
        (
            dt.datetime(2026, 11, 23, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-11-23T10:30:00Z",
        ),
    ],
)
def test_literals(value: object, expected: str) -> None:
    assert literal(value) == expected  # type: ignore[arg-type]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        literal(dt.datetime(2026, 11, 23, 10, 0))


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot write a object"):
        literal(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        literal(float("nan"))


def test_like_pattern_escapes_wildcards() -> None:
    pattern = like_pattern("[sop-worker r:s_1:006]%")
    assert pattern == "'%[sop-worker r:s\\_1:006]\\%%'"
    query = parse(select(Select("Task", ("Id",), (Condition("Subject", "LIKE", "s_1%"),))))
    assert query.where is not None
    assert query.where({"Subject": "xx s_1% yy"})
    assert not query.where({"Subject": "xx sX1% yy"})


def test_incremental_query_text() -> None:
    soql = incremental_select(
        "Opportunity",
        ("Name", "StageName", "Owner.Name", "name"),
        {"StageName": ("Closed Won", "Closed Lost"), "Type": ("Payment",), "IsPrivate": (False,)},
        dt.datetime(2026, 11, 23, 9, 50, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 23, 10, 0, 0, 999000, tzinfo=dt.UTC),
    )
    assert soql == (
        "SELECT Id, SystemModstamp, IsDeleted, Name, StageName, Owner.Name "
        "FROM Opportunity "
        "WHERE IsPrivate = false AND StageName IN ('Closed Won', 'Closed Lost') "
        "AND Type = 'Payment' "
        "AND SystemModstamp >= 2026-11-23T09:50:00Z AND SystemModstamp <= 2026-11-23T10:00:00Z "
        "ORDER BY SystemModstamp, Id"
    )
    parse(soql)  # and it is valid SOQL


def test_a_cursor_resumes_after_the_last_stamp_and_id_read() -> None:
    since = dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC)
    soql = incremental_select("Lead", ("Status",), {}, since, None, after_id="00Q000000000042AAA")
    assert soql == (
        "SELECT Id, SystemModstamp, IsDeleted, Status FROM Lead "
        "WHERE (SystemModstamp > 2026-11-20T10:00:00Z "
        "OR (SystemModstamp = 2026-11-20T10:00:00Z AND Id > '00Q000000000042AAA')) "
        "ORDER BY SystemModstamp, Id"
    )
    where = parse(soql).where
    assert where is not None
    at = {"SystemModstamp": "2026-11-20T10:00:00.000+0000"}
    assert not where({**at, "Id": "00Q000000000042AAA"})
    assert where({**at, "Id": "00Q000000000043AAA"})
    assert where({"SystemModstamp": "2026-11-20T10:00:01.000+0000", "Id": "00Q0"})


def test_bulk_queries_have_no_order_by() -> None:
    soql = incremental_select("Lead", ("Status",), {}, None, None, ordered=False)
    assert soql == "SELECT Id, SystemModstamp, IsDeleted, Status FROM Lead"


def test_bad_filter_field_is_refused() -> None:
    with pytest.raises(ValueError, match="API name"):
        incremental_select("Lead", (), {"Status = 'x' OR Id": ("y",)}, None, None)


def test_unique_fields_is_case_insensitive() -> None:
    assert unique_fields(["Id", "id", "Name", "NAME", "Owner.Name"]) == ("Id", "Name", "Owner.Name")


def test_in_needs_values() -> None:
    with pytest.raises(ValueError, match="not valid SOQL"):
        Condition("Id", "IN", ()).render()


def test_the_escape_tables_are_simple_salesforces() -> None:
    from simple_salesforce.format import soql_escapes, soql_like_escapes

    from worker.salesforce import soql

    assert soql_escapes == soql._ESCAPES
    assert soql_like_escapes == soql._LIKE_ESCAPES
