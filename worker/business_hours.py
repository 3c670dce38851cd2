"""The business calendar: working hours per weekday in one time zone, less public holidays
and closed days, and the arithmetic of business time over it.

One calendar serves every rule and every object (Salesforce's own business hours apply to
Cases only): the mapping's ``[calendar]`` section, on ``org.calendar``. Pure: no clock, no
I/O.

How time is counted:

- A weekday's hours are shifts in the calendar's zone, ``"09:00-17:00"``; a shift whose end
  is at or before its start runs past midnight into the next day (``"22:00-06:00"``), and
  ``"00:00-24:00"`` is the whole day.
- A closure (a public holiday of ``[org] holiday_country``, a closed day of the mapping)
  removes its period, midnight to midnight when it is all day, from every shift it
  overlaps, including an overnight shift begun the evening before.
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from worker.errors import ConfigError

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
class BusinessCalendar:
    """Working hours per weekday (``week[0]`` is Monday) in ``zone``, less ``closures`` and,
    when ``country`` is set, that country's (and subdivision's) public holidays."""

    zone: ZoneInfo
    week: tuple[tuple[Shift, ...], ...]
    closures: tuple[Closure, ...] = ()
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
