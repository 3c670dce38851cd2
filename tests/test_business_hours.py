"""The business calendar: business time added to an instant and elapsed between two, over
working hours, overnight shifts, holidays, closed days and DST changes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from worker.business_hours import BusinessCalendar, Shift, holiday_rule, org_calendar
from worker.errors import ConfigError, MappingError, RecordError
from worker.mapping import load_mapping
from worker.records import Record
from worker.rules import rule_models

from .test_mapping import broken

CHICAGO = ZoneInfo("America/Chicago")
WEEKDAYS_9_TO_5 = {
    d: ["09:00-17:00"] for d in ("monday", "tuesday", "wednesday", "thursday", "friday")
}
NIGHTS = {d: ["22:00-06:00"] for d in ("monday", "tuesday", "wednesday", "thursday", "friday")}
ALL_DAY = {
    d: ["00:00-24:00"]
    for d in ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
}


def at(text: str, zone: ZoneInfo = CHICAGO) -> dt.datetime:
    """A wall-clock time in ``zone`` (``2026-11-20 16:58``)."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


def calendar(
    hours: dict[str, list[str]] | None = None,
    *,
    closed: tuple[str, ...] = (),
    country: str | None = "US",
) -> BusinessCalendar:
    return BusinessCalendar.weekdays(
        WEEKDAYS_9_TO_5 if hours is None else hours,
        CHICAGO,
        closed=[dt.date.fromisoformat(d) for d in closed],
        country=country,
    )


# 2026-11-20 is a Friday; 2026-11-26 is Thanksgiving (a US holiday, a Thursday).
@pytest.mark.parametrize(
    ("hours", "closed", "start", "minutes", "due"),
    [
        pytest.param(None, (), "2026-11-20 16:58", 5, "2026-11-23 09:03", id="friday-to-monday"),
        pytest.param(None, (), "2026-11-20 16:58", 2, "2026-11-20 17:00", id="ends-at-closing"),
        pytest.param(None, (), "2026-11-20 17:00", 0, "2026-11-23 09:00", id="closed-at-17"),
        pytest.param(None, (), "2026-11-23 07:00", 30, "2026-11-23 09:30", id="before-opening"),
        pytest.param(None, (), "2026-11-21 10:00", 60, "2026-11-23 10:00", id="from-saturday"),
        pytest.param(None, (), "2026-11-23 10:00", 16 * 60, "2026-11-25 10:00", id="two-days"),
        pytest.param(None, (), "2026-11-25 16:30", 60, "2026-11-27 09:30", id="thanksgiving"),
        pytest.param(
            None, ("2026-11-23",), "2026-11-20 16:58", 5, "2026-11-24 09:03", id="closed-day"
        ),
        pytest.param(NIGHTS, (), "2026-11-20 05:00", 120, "2026-11-20 23:00", id="overnight"),
        pytest.param(NIGHTS, (), "2026-11-23 23:30", 60, "2026-11-24 00:30", id="past-midnight"),
        # Thanksgiving closes all of Thursday: Wednesday's night shift stops at midnight,
        # Thursday's resumes at midnight on Friday.
        pytest.param(
            NIGHTS, (), "2026-11-25 23:00", 120, "2026-11-27 01:00", id="overnight-into-holiday"
        ),
        pytest.param(
            {"monday": ["09:00-12:00", "13:00-17:00"]},
            (),
            "2026-11-23 11:30",
            60,
            "2026-11-23 13:30",
            id="lunch-break",
        ),
    ],
)
def test_add_business_time(
    hours: dict[str, list[str]] | None, closed: tuple[str, ...], start: str, minutes: int, due: str
) -> None:
    cal = calendar(hours, closed=closed)
    got = cal.add(at(start), dt.timedelta(minutes=minutes))
    assert got == at(due)
    assert got.tzinfo is CHICAGO  # the answer is in the instant's own time zone
    assert cal.elapsed(at(start), got) == dt.timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("hours", "start", "end", "hours_elapsed"),
    [
        # Clocks go forward at 02:00 on 2026-03-08 and back at 02:00 on 2026-11-01.
        pytest.param(ALL_DAY, "2026-03-07 12:00", "2026-03-08 12:00", 23, id="spring-day"),
        pytest.param(ALL_DAY, "2026-10-31 12:00", "2026-11-01 12:00", 25, id="autumn-day"),
        pytest.param(None, "2026-03-06 16:00", "2026-03-09 10:00", 2, id="spring-weekend"),
        pytest.param(
            {"sunday": ["01:00-04:00"]}, "2026-03-08 00:00", "2026-03-08 05:00", 2, id="gap"
        ),
        pytest.param(
            {"sunday": ["01:00-03:00"]}, "2026-11-01 00:00", "2026-11-01 05:00", 3, id="repeat"
        ),
        pytest.param(None, "2026-11-23 12:00", "2026-11-23 11:00", 0, id="backwards"),
    ],
)
def test_elapsed_business_time(
    hours: dict[str, list[str]] | None, start: str, end: str, hours_elapsed: int
) -> None:
    cal = calendar(hours, country=None)
    assert cal.elapsed(at(start), at(end)) == dt.timedelta(hours=hours_elapsed)


def test_adding_across_a_dst_change_keeps_wall_clock_hours() -> None:
    cal = calendar()
    # Friday 16:00 CST + 2 business hours: 1 on Friday, 1 on Monday (now CDT).
    assert cal.add(at("2026-03-06 16:00"), dt.timedelta(hours=2)) == at("2026-03-09 10:00")
    assert at("2026-03-09 10:00").utcoffset() == dt.timedelta(hours=-5)


def test_instants_in_other_zones_are_converted() -> None:
    utc_friday = dt.datetime(2026, 11, 20, 22, 58, tzinfo=dt.UTC)  # 16:58 in Chicago
    due = calendar().add(utc_friday, dt.timedelta(minutes=5))
    assert due == at("2026-11-23 09:03")
    assert due.tzinfo is dt.UTC


def test_open_and_next_opening() -> None:
    cal = calendar()
    assert cal.is_open(at("2026-11-20 09:00"))
    assert not cal.is_open(at("2026-11-20 17:00"))
    assert not cal.is_open(at("2026-11-26 10:00"))  # Thanksgiving
    assert cal.next_open(at("2026-11-20 12:00")) == at("2026-11-20 12:00")
    assert cal.next_open(at("2026-11-25 18:00")) == at("2026-11-27 09:00")


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        ("2026-11-20", 0, "2026-11-20"),
        ("2026-11-21", 0, "2026-11-23"),
        ("2026-11-25", 1, "2026-11-27"),
        ("2026-11-20", 5, "2026-11-30"),
    ],
)
def test_business_days(start: str, days: int, expected: str) -> None:
    cal = calendar()
    day = dt.date.fromisoformat(start)
    assert cal.add_days(day, days) == dt.date.fromisoformat(expected)
    assert cal.days_between(cal.add_days(day, 0), dt.date.fromisoformat(expected)) == days


def test_naive_instants_and_negative_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar().add(dt.datetime(2026, 11, 20, 9), dt.timedelta(0))
    with pytest.raises(ValueError, match="forwards"):
        calendar().add(at("2026-11-20 09:00"), dt.timedelta(minutes=-1))


def test_a_calendar_open_only_on_closed_days_says_so_rather_than_searching_forever() -> None:
    sundays = tuple((dt.date(2026, 11, 22) + dt.timedelta(weeks=n)).isoformat() for n in range(70))
    cal = calendar({"sunday": ["09:00-17:00"]}, closed=sundays, country=None)
    with pytest.raises(ConfigError, match="no working time within a year"):
        cal.add(at("2026-11-20 09:00"), dt.timedelta(minutes=1))


@pytest.mark.parametrize(
    ("text", "shift"),
    [
        ("09:00-17:00", Shift(540, 1020)),
        ("22:00-06:00", Shift(1320, 1800)),
        ("00:00-24:00", Shift(0, 1440)),
        ("8:30 - 12:00", Shift(510, 720)),
    ],
)
def test_shift_syntax(text: str, shift: Shift) -> None:
    assert Shift.parse(text) == shift


# -- the mapping's [calendar] ------------------------------------------------------------------

CLOSED_WEEK = "\n".join(
    f"{day} = []" for day in ("monday", "tuesday", "wednesday", "thursday", "friday")
)


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        (
            'monday = ["09:00-17:00"]\ntuesday = ["09:00-17:00"]\nwednesday = ["09:00-17:00"]\n'
            'thursday = ["09:00-17:00"]\nfriday = ["09:00-17:00"]',
            CLOSED_WEEK,
            "calendar",
            "no working hours on any day of the week",
        ),
        ('monday = ["09:00-17:00"]', 'monday = ["9-17"]', "calendar.monday", "'9-17'"),
        ('monday = ["09:00-17:00"]', 'monday = ["09:00-25:00"]', "calendar.monday", "00:00"),
        (
            'monday = ["09:00-17:00"]',
            'monday = ["09:00-17:00", "16:00-18:00"]',
            "calendar",
            "monday: shift 16:00-18:00 overlaps",
        ),
        (
            "[calendar]\n",
            '[calendar]\nsource = "org"\n',
            "calendar",
            "remove friday, monday, thursday, tuesday, wednesday",
        ),
        ('holiday_country = "US"', 'holiday_country = "XX"', "org.holiday_country", "'XX'"),
        ("closed_days = []", 'closed_days = ["2026-02-30"]', "calendar.closed_days.0", "date"),
    ],
)
def test_calendar_problems_name_the_key(
    tmp_path: Path, old: str, new: str, key: str, message: str
) -> None:
    with pytest.raises(MappingError) as err:
        load_mapping(broken(tmp_path, old, new), rule_models())
    assert any(k == key and message in m for k, m in err.value.problems), err.value.problems


def test_the_mapping_calendar_is_the_orgs_one_calendar(tmp_path: Path) -> None:
    path = broken(tmp_path, 'monday = ["09:00-17:00"]', 'monday = "07:00-19:00"')
    path.write_text(
        path.read_text().replace("closed_days = []", "closed_days = [2026-11-27]"), "utf-8"
    )
    cal = load_mapping(path, rule_models()).common.calendar
    assert cal.zone == CHICAGO
    assert cal.add(at("2026-11-25 16:30"), dt.timedelta(hours=1)) == at("2026-11-30 07:30")


# -- the org's BusinessHours and Holiday records -----------------------------------------------


def record(sobject: str, rid: str, **fields: Any) -> Record:
    return Record(sobject, rid, {"Id": rid, **fields})


def business_hours(rid: str = "01m000000000001AAA", **fields: Any) -> Record:
    day = {"StartTime": "08:00:00.000Z", "EndTime": "18:00:00.000Z"}
    values: dict[str, Any] = {
        f"{d}{edge}": day[edge]
        for d in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
        for edge in day
    }
    values.update(
        SaturdayStartTime=None,
        SaturdayEndTime=None,
        SundayStartTime=None,
        SundayEndTime=None,
        IsActive=True,
        IsDefault=True,
        TimeZoneSidKey="America/New_York",
    )
    values.update(fields)
    return record("BusinessHours", rid, **values)


NEW_YORK = ZoneInfo("America/New_York")
THANKSGIVING = record(
    "Holiday",
    "0C0000000000001AAA",
    Name="Thanksgiving",
    IsAllDay=True,
    IsRecurrence=True,
    RecurrenceType="RecursYearlyNth",
    RecurrenceInstance="Fourth",
    RecurrenceDayOfWeekMask=16,
    RecurrenceMonthOfYear="November",
    RecurrenceStartDate="2020-11-26",
    ActivityDate=None,
)
CHRISTMAS_EVE_AFTERNOON = record(
    "Holiday",
    "0C0000000000002AAA",
    Name="Christmas Eve",
    IsAllDay=False,
    StartTimeInMinutes=720,
    EndTimeInMinutes=1440,
    IsRecurrence=False,
    ActivityDate="2026-12-24",
)
BASE = calendar(country=None)


def test_org_business_hours_and_holidays() -> None:
    cal = org_calendar([business_hours()], [THANKSGIVING, CHRISTMAS_EVE_AFTERNOON], BASE)
    assert cal.zone == NEW_YORK
    # Thanksgiving recurs on the fourth Thursday of November, years after its start date.
    assert not cal.is_business_day(dt.date(2030, 11, 28))
    assert cal.add(at("2026-11-25 17:30", NEW_YORK), dt.timedelta(hours=1)) == at(
        "2026-11-27 08:30", NEW_YORK
    )
    # Christmas Eve closes at noon.
    assert cal.add(at("2026-12-24 11:30", NEW_YORK), dt.timedelta(hours=1)) == at(
        "2026-12-25 08:30", NEW_YORK
    )


def test_org_hours_of_24_hours_and_closed_days() -> None:
    hours = business_hours(SaturdayStartTime="00:00:00.000Z", SaturdayEndTime="00:00:00.000Z")
    cal = org_calendar([hours], [], BASE)
    assert cal.elapsed(at("2026-11-21 00:00", NEW_YORK), at("2026-11-22 00:00", NEW_YORK)) == (
        dt.timedelta(hours=24)
    )
    assert not cal.is_business_day(dt.date(2026, 11, 22))  # Sunday: no start time


def test_only_the_active_default_business_hours_count() -> None:
    inactive = business_hours("01m000000000002AAA", IsActive=False)
    other = business_hours("01m000000000003AAA", IsDefault=False)
    with pytest.raises(ConfigError, match="no active default BusinessHours"):
        org_calendar([inactive, other], [], BASE)


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"RecurrenceType": "RecursDaily", "RecurrenceInterval": 3}, "FREQ=DAILY;INTERVAL=3"),
        ({"RecurrenceType": "RecursEveryWeekday"}, "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"),
        (
            {"RecurrenceType": "RecursWeekly", "RecurrenceDayOfWeekMask": 2 + 32},
            "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,FR",
        ),
        (
            {"RecurrenceType": "RecursMonthly", "RecurrenceDayOfMonth": 15},
            "FREQ=MONTHLY;INTERVAL=1;BYMONTHDAY=15",
        ),
        (
            {
                "RecurrenceType": "RecursMonthlyNth",
                "RecurrenceDayOfWeekMask": 2,
                "RecurrenceInstance": "Last",
            },
            "FREQ=MONTHLY;INTERVAL=1;BYDAY=MO;BYSETPOS=-1",
        ),
        (
            {
                "RecurrenceType": "RecursYearly",
                "RecurrenceMonthOfYear": "July",
                "RecurrenceDayOfMonth": 4,
                "RecurrenceEndDateOnly": "2030-12-31",
            },
            "FREQ=YEARLY;BYMONTH=7;BYMONTHDAY=4;UNTIL=20301231",
        ),
    ],
)
def test_holiday_recurrence_as_a_rule(fields: dict[str, Any], rule: str) -> None:
    assert holiday_rule(record("Holiday", "0C0000000000003AAA", **fields)) == rule


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"RecurrenceType": "RecursFortnightly"}, "RecurrenceType"),
        ({"RecurrenceType": "RecursYearly", "RecurrenceDayOfMonth": 4}, "RecurrenceMonthOfYear"),
        ({"RecurrenceType": "RecursWeekly"}, "RecurrenceDayOfWeekMask"),
    ],
)
def test_a_malformed_holiday_names_its_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(RecordError) as err:
        holiday_rule(record("Holiday", "0C0000000000004AAA", **fields))
    assert err.value.field == field
