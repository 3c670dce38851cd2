"""The business calendar: working hours per weekday in one time zone, less public holidays
and closed days, and the arithmetic of business time over it.

One calendar serves every rule and every object (Salesforce's own business hours apply to
Cases only), on ``org.calendar``: the mapping's ``[calendar]`` section, or with ``source =
"org"`` the org's default ``BusinessHours`` and its ``Holiday`` records
(:func:`org_calendar`, from the cached records at each evaluation). Pure: no clock, no I/O.

How time is counted:

- A weekday's hours are shifts in the calendar's zone, ``"09:00-17:00"``; a shift whose end
  is at or before its start runs past midnight into the next day (``"22:00-06:00"``), and
  ``"00:00-24:00"`` is the whole day.
- A closure (a public holiday of ``[org] holiday_country``, a closed day of the mapping, a
  Holiday record) removes its period, midnight to midnight when it is all day, from every
  shift it overlaps, including an overnight shift begun the evening before.
- Business time is real elapsed time: on the night the clocks go forward a ``00:00-24:00``
  day holds 23 hours. A local time the change skips is read in the offset before it (02:30
  on a spring-forward night is 03:30 daylight time); a local time that occurs twice is its
  first occurrence.
- The business is closed at the end of a shift: 5 business minutes after 16:58 on a Friday,
  with 9-17 hours, is 09:03 on Monday; 2 business minutes after it is 17:00 on Friday.
- A business day is a day on which a shift starts and some of it is left after closures.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from dateutil import rrule

from worker.errors import ConfigError, RecordError
from worker.records import Record

MINUTES_PER_DAY = 24 * 60
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# A calendar whose next working minute is further away than this has none to speak of.
_SEARCH_DAYS = 400
_SHIFT = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")

Period = tuple[dt.datetime, dt.datetime]  # [start, end) in UTC


@dataclass(frozen=True, order=True)
class Shift:
    """Working hours that start on one day: minutes after its local midnight. ``end`` is
    past 1440 when the shift runs into the next day."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Shift:
        """``"09:00-17:00"``; ``"22:00-06:00"`` runs overnight; ``"00:00-24:00"`` is all day."""
        match = _SHIFT.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not a shift like '09:00-17:00'")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
            raise ValueError(f"{text!r}: not a time of day (00:00 to 24:00)")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if end <= start:
            end += MINUTES_PER_DAY
        return cls(start, end)

    def label(self) -> str:
        end = self.end if self.end <= MINUTES_PER_DAY else self.end - MINUTES_PER_DAY
        return f"{_hhmm(self.start)}-{_hhmm(end)}"


@dataclass(frozen=True)
class Closure:
    """A period the business is closed: all of ``day`` unless minutes are given."""

    day: dt.date
    start: int = 0
    end: int = MINUTES_PER_DAY
    name: str = ""


@dataclass(frozen=True)
class RecurringClosure:
    """A closure repeating by a date rule from ``first`` (a recurring Holiday record)."""

    rule: str  # an RFC 5545 RRULE, as dateutil reads it
    first: dt.date
    start: int = 0
    end: int = MINUTES_PER_DAY
    name: str = ""

    def days_in(self, year: int) -> list[dt.date]:
        rule = rrule.rrulestr(self.rule, dtstart=dt.datetime.combine(self.first, dt.time(0)))
        lo = dt.datetime(year, 1, 1)
        hi = dt.datetime(year, 12, 31)
        return [d.date() for d in rule.between(lo, hi, inc=True)]

    def on(self, day: dt.date) -> Closure:
        return Closure(day, self.start, self.end, self.name)


@dataclass(frozen=True)
class BusinessCalendar:
    """Working hours per weekday (``week[0]`` is Monday) in ``zone``, less ``closures``,
    the ``recurring`` ones and, when ``country`` is set, that country's (and subdivision's)
    public holidays."""

    zone: ZoneInfo
    week: tuple[tuple[Shift, ...], ...]
    closures: tuple[Closure, ...] = ()
    recurring: tuple[RecurringClosure, ...] = ()
    country: str | None = None
    subdivision: str | None = None
    _days: dict[dt.date, tuple[Period, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )
    _years: dict[int, dict[dt.date, tuple[Closure, ...]]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if len(self.week) != len(WEEKDAYS):
            raise ValueError("a week has seven days of hours, Monday first")
        if not any(self.week):
            raise ValueError("no working hours on any day of the week")
        for day, shifts in enumerate(self.week):
            spans = sorted(
                [
                    (0, s.end - MINUTES_PER_DAY)
                    for s in self.week[day - 1]
                    if s.end > MINUTES_PER_DAY
                ]
                + [(s.start, s.end) for s in shifts]
            )
            for (_, end), (start, stop) in itertools.pairwise(spans):
                if start < end:
                    raise ValueError(
                        f"{WEEKDAYS[day]}: shift {Shift(start, stop).label()} overlaps an "
                        "earlier shift"
                    )
        if self.country:
            _holidays(self.country, self.subdivision, 2000)  # an unknown country fails now

    @classmethod
    def weekdays(
        cls,
        hours: Mapping[str, Sequence[str]],
        zone: str | ZoneInfo,
        *,
        closed: Iterable[dt.date] = (),
        country: str | None = None,
        subdivision: str | None = None,
    ) -> BusinessCalendar:
        """From ``{"monday": ["09:00-17:00"], ...}``: a weekday left out is closed."""
        unknown = sorted(set(hours) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"not a weekday: {', '.join(unknown)}")
        week = tuple(tuple(Shift.parse(s) for s in hours.get(day, ())) for day in WEEKDAYS)
        return cls(
            zone=zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone),
            week=week,
            closures=tuple(Closure(day) for day in closed),
            country=country,
            subdivision=subdivision,
        )

    # -- instants ---------------------------------------------------------------------------
    def is_open(self, instant: dt.datetime) -> bool:
        at = _utc(instant)
        return next(self._periods_from(at))[0] <= at

    def next_open(self, instant: dt.datetime) -> dt.datetime:
        """``instant`` if the business is open then, else the next opening."""
        return self.add(instant, dt.timedelta(0))

    def add(self, instant: dt.datetime, duration: dt.timedelta) -> dt.datetime:
        """The instant ``duration`` of business time after ``instant`` (counting starts at
        the next opening when closed), in ``instant``'s time zone."""
        if duration < dt.timedelta(0):
            raise ValueError("business time is added forwards only")
        at = _utc(instant)
        remaining = duration
        for start, end in self._periods_from(at):
            start = max(start, at)
            if remaining <= end - start:
                return (start + remaining).astimezone(instant.tzinfo)
            remaining -= end - start
        raise AssertionError("unreachable: _periods_from never ends")  # pragma: no cover

    def elapsed(self, start: dt.datetime, end: dt.datetime) -> dt.timedelta:
        """Business time between two instants (zero when ``end`` is not after ``start``)."""
        lo, hi = _utc(start), _utc(end)
        total = dt.timedelta(0)
        if hi <= lo:
            return total
        for p_start, p_end in self._periods_from(lo):
            if p_start >= hi:
                break
            total += min(p_end, hi) - max(p_start, lo)
        return total

    # -- days -------------------------------------------------------------------------------
    def is_business_day(self, day: dt.date) -> bool:
        return bool(self._day_periods(day))

    def add_days(self, start: dt.date, days: int) -> dt.date:
        """The business day ``days`` business days after ``start`` (0 = start itself, rolled
        forward to a business day)."""
        day = start
        for _ in range(_SEARCH_DAYS):
            if self.is_business_day(day):
                break
            day += dt.timedelta(days=1)
        else:
            raise ConfigError(f"business calendar: no business day within a year of {start}")
        remaining = days
        while remaining > 0:
            day += dt.timedelta(days=1)
            if self.is_business_day(day):
                remaining -= 1
        return day

    def days_between(self, start: dt.date, end: dt.date) -> int:
        """Business days after ``start`` up to and including ``end`` (0 when end <= start)."""
        count = 0
        day = start
        while day < end:
            day += dt.timedelta(days=1)
            if self.is_business_day(day):
                count += 1
        return count

    # -- periods ----------------------------------------------------------------------------
    def _periods_from(self, at: dt.datetime) -> Iterator[Period]:
        """Open periods ending after ``at`` (UTC), in order, without overlaps."""
        day = at.astimezone(self.zone).date() - dt.timedelta(days=1)  # overnight shifts
        last_end = at
        idle = 0
        while True:
            found = False
            for start, end in self._day_periods(day):
                start = max(start, last_end)
                if end > start:
                    found = True
                    last_end = end
                    yield start, end
            idle = 0 if found else idle + 1
            if idle > _SEARCH_DAYS:
                raise ConfigError(
                    f"business calendar: no working time within a year after {day - dt.timedelta(days=idle)}"
                )
            day += dt.timedelta(days=1)

    def _day_periods(self, day: dt.date) -> tuple[Period, ...]:
        """The open periods of the shifts that start on ``day``, closures removed, in UTC."""
        cached = self._days.get(day)
        if cached is not None:
            return cached
        spans: list[tuple[int, int]] = [(s.start, s.end) for s in sorted(self.week[day.weekday()])]
        if spans:
            for offset in (0, 1):
                for closure in self._closed_on(day + dt.timedelta(days=offset)):
                    base = offset * MINUTES_PER_DAY
                    spans = _minus(spans, base + closure.start, base + closure.end)
        midnight = dt.datetime.combine(day, dt.time(0), tzinfo=self.zone)
        out = []
        for start, end in spans:
            lo = _utc(midnight + dt.timedelta(minutes=start))
            hi = _utc(midnight + dt.timedelta(minutes=end))
            if hi > lo:  # a shift inside a skipped hour has no time
                out.append((lo, hi))
        result = tuple(out)
        self._days[day] = result
        return result

    def _closed_on(self, day: dt.date) -> tuple[Closure, ...]:
        year = self._years.get(day.year)
        if year is None:
            found: dict[dt.date, list[Closure]] = {}
            for closure in self.closures:
                if closure.day.year == day.year:
                    found.setdefault(closure.day, []).append(closure)
            for recurring in self.recurring:
                for when in recurring.days_in(day.year):
                    found.setdefault(when, []).append(recurring.on(when))
            if self.country:
                for when, name in _holidays(self.country, self.subdivision, day.year).items():
                    found.setdefault(when, []).append(Closure(when, name=str(name)))
            year = {k: tuple(v) for k, v in found.items()}
            self._years[day.year] = year
        return year.get(day, ())


def _minus(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    out = []
    for start, end in spans:
        if end <= lo or start >= hi:
            out.append((start, end))
            continue
        if start < lo:
            out.append((start, lo))
        if end > hi:
            out.append((hi, end))
    return out


def _utc(instant: dt.datetime) -> dt.datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"business time needs a timezone-aware instant, got {instant}")
    return instant.astimezone(dt.UTC)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=64)
def _holidays(country: str, subdivision: str | None, year: int) -> holidays.HolidayBase:
    try:
        return holidays.country_holidays(country, subdiv=subdivision, years=year)
    except NotImplementedError:
        raise ConfigError(
            f"holiday calendar: country {country!r} / subdivision {subdivision!r} is not known"
        ) from None


# -- the org's BusinessHours and Holiday records ---------------------------------------------
# What the pull reads of them with [calendar] source = "org".

_DAY_FIELDS = tuple(day.capitalize() for day in WEEKDAYS)
BUSINESS_HOURS_FIELDS = (
    "Name",
    "IsActive",
    "IsDefault",
    "TimeZoneSidKey",
    *(f"{day}{edge}Time" for day in _DAY_FIELDS for edge in ("Start", "End")),
)
HOLIDAY_FIELDS = (
    "Name",
    "ActivityDate",
    "IsAllDay",
    "StartTimeInMinutes",
    "EndTimeInMinutes",
    "IsRecurrence",
    "RecurrenceType",
    "RecurrenceInterval",
    "RecurrenceDayOfWeekMask",
    "RecurrenceDayOfMonth",
    "RecurrenceInstance",
    "RecurrenceMonthOfYear",
    "RecurrenceStartDate",
    "RecurrenceEndDateOnly",
)
# RecurrenceDayOfWeekMask: Sunday = 1, Monday = 2, ... Saturday = 64.
_MASK_DAYS = ((1, "SU"), (2, "MO"), (4, "TU"), (8, "WE"), (16, "TH"), (32, "FR"), (64, "SA"))
_INSTANCES = {"First": 1, "Second": 2, "Third": 3, "Fourth": 4, "Last": -1}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def org_calendar(
    hours: Sequence[Record], holiday_records: Sequence[Record], base: BusinessCalendar
) -> BusinessCalendar:
    """The calendar of the org's default, active ``BusinessHours`` record, in its own
    ``TimeZoneSidKey``, closed on the org's ``Holiday`` records (recurring ones by their
    rule) besides ``base``'s closed days and public holidays.

    A day whose start time is empty is closed; a start equal to its end (both 00:00) is
    open all day, as Salesforce's "24 hours" setting stores it. Holidays are not linked to
    business hours through the API, so every Holiday of the org applies.
    """
    defaults = [r for r in hours if r.flag("IsDefault") and r.flag("IsActive")]
    if not defaults:
        raise ConfigError(
            "calendar: source = 'org' but the org has no active default BusinessHours "
            "(Setup > Business Hours); or set the hours in the mapping's [calendar]"
        )
    record = defaults[0]
    zone_name = record.text("TimeZoneSidKey") or ""
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RecordError(record.id, "TimeZoneSidKey", f"unknown time zone {zone_name!r}") from None
    week: list[tuple[Shift, ...]] = []
    for label in _DAY_FIELDS:
        start = _sf_time(record, f"{label}StartTime")
        end = _sf_time(record, f"{label}EndTime")
        if start is None or end is None:
            week.append(())
        else:
            week.append((Shift(start, end if end > start else end + MINUTES_PER_DAY),))
    fixed: list[Closure] = []
    recurring: list[RecurringClosure] = []
    for holiday in holiday_records:
        name = holiday.text("Name") or ""
        start, end = 0, MINUTES_PER_DAY
        if not holiday.flag("IsAllDay"):
            start = int(holiday.number("StartTimeInMinutes") or 0)
            end = int(holiday.number("EndTimeInMinutes") or MINUTES_PER_DAY)
        if holiday.flag("IsRecurrence"):
            first = holiday.date("RecurrenceStartDate")
            if first is None:
                raise RecordError(holiday.id, "RecurrenceStartDate", "empty on a recurring holiday")
            recurring.append(RecurringClosure(holiday_rule(holiday), first, start, end, name))
        else:
            day = holiday.date("ActivityDate")
            if day is None:
                raise RecordError(holiday.id, "ActivityDate", "empty on a one-off holiday")
            fixed.append(Closure(day, start, end, name))
    try:
        return BusinessCalendar(
            zone=zone,
            week=tuple(week),
            closures=(*base.closures, *fixed),
            recurring=tuple(recurring),
            country=base.country,
            subdivision=base.subdivision,
        )
    except ValueError as exc:
        raise ConfigError(f"calendar: BusinessHours {record.id}: {exc}") from None


def holiday_rule(holiday: Record) -> str:
    """A recurring Holiday's recurrence fields as an RFC 5545 RRULE."""
    kind = holiday.text("RecurrenceType") or ""
    interval = int(holiday.number("RecurrenceInterval") or 1)
    mask = int(holiday.number("RecurrenceDayOfWeekMask") or 0)
    days = ",".join(code for bit, code in _MASK_DAYS if mask & bit)
    instance = _INSTANCES.get(holiday.text("RecurrenceInstance") or "")
    month_name = holiday.text("RecurrenceMonthOfYear") or ""
    month = _MONTHS.index(month_name) + 1 if month_name in _MONTHS else None
    day_of_month = holiday.number("RecurrenceDayOfMonth")

    def need(value: object, field_name: str) -> str:
        if value is None or value == "":
            raise RecordError(holiday.id, field_name, f"empty on a {kind} holiday")
        return str(value)

    parts: dict[str, Callable[[], str]] = {
        "RecursDaily": lambda: f"FREQ=DAILY;INTERVAL={interval}",
        "RecursEveryWeekday": lambda: "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
        "RecursWeekly": lambda: (
            f"FREQ=WEEKLY;INTERVAL={interval};BYDAY={need(days, 'RecurrenceDayOfWeekMask')}"
        ),
        "RecursMonthly": lambda: (
            f"FREQ=MONTHLY;INTERVAL={interval};"
            f"BYMONTHDAY={need(day_of_month, 'RecurrenceDayOfMonth')}"
        ),
        "RecursMonthlyNth": lambda: (
            f"FREQ=MONTHLY;INTERVAL={interval};BYDAY={need(days, 'RecurrenceDayOfWeekMask')};"
            f"BYSETPOS={need(instance, 'RecurrenceInstance')}"
        ),
        "RecursYearly": lambda: (
            f"FREQ=YEARLY;BYMONTH={need(month, 'RecurrenceMonthOfYear')};"
            f"BYMONTHDAY={need(day_of_month, 'RecurrenceDayOfMonth')}"
        ),
        "RecursYearlyNth": lambda: (
            f"FREQ=YEARLY;BYMONTH={need(month, 'RecurrenceMonthOfYear')};"
            f"BYDAY={need(days, 'RecurrenceDayOfWeekMask')};"
            f"BYSETPOS={need(instance, 'RecurrenceInstance')}"
        ),
    }
    build = parts.get(kind)
    if build is None:
        raise RecordError(holiday.id, "RecurrenceType", f"not a recurrence type: {kind!r}")
    rule = build()
    until = holiday.date("RecurrenceEndDateOnly")
    return f"{rule};UNTIL={until:%Y%m%d}" if until else rule


def _sf_time(record: Record, name: str) -> int | None:
    """Minutes after midnight of a Salesforce time value (``"09:00:00.000Z"``)."""
    text = record.text(name)
    if text is None:
        return None
    match = re.match(r"^(\d{2}):(\d{2})", text)
    if not match:
        raise RecordError(record.id, name, f"not a time: {text!r}")
    return int(match.group(1)) * 60 + int(match.group(2))
