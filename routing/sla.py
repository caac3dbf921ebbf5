"""Response-time arithmetic for PRODUCT §2: durations, business-hours calendars, due times.

All arithmetic is done in UTC, so a 24x7 hour is always a real hour, while business hours
are wall-clock hours of the calendar's time zone on both sides of a DST change. Results are
aware datetimes in the calendar's time zone.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from holidays import country_holidays, list_supported_countries

Unit = Literal["h", "bd", "d", "m"]
Clock = Literal["24x7", "business"]
Intervals = tuple[tuple[time, time], ...]
Pause = tuple[datetime, datetime | None]
_Span = tuple[datetime, datetime]

_SEARCH_DAYS = 3 * 366   # how far ahead a search for open business time may look
_DAY = timedelta(days=1)
_ZERO = timedelta(0)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION = re.compile(r"([0-9]+)(h|bd|d|m)")
_INTERVAL = re.compile(r"([0-9]{1,2}):([0-9]{2})-([0-9]{1,2}):([0-9]{2})")
_NEVER = datetime.max.replace(tzinfo=timezone.utc)   # the end of a pause still open


@dataclass(frozen=True)
class Duration:
    """An SLA or follow-up period as written in config: `2h`, `1bd`, `14d`, `30m`."""

    amount: int
    unit: Unit

    def __post_init__(self) -> None:
        if self.amount < 0 or self.unit not in get_args(Unit):
            raise ValueError(f"invalid duration: amount {self.amount!r}, unit {self.unit!r}")

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = _DURATION.fullmatch(text.strip().lower())
        if match is None:
            raise ValueError(f"invalid duration {text!r}: expected a whole number and h, bd, d or m, like '2h'")
        return cls(int(match[1]), cast(Unit, match[2]))

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"

    def describe(self) -> str:
        """For people: `1 business day`, `4 hours`, `14 days`."""
        name = {"h": "hour", "bd": "business day", "d": "day", "m": "minute"}[self.unit]
        return f"{self.amount} {name}{'' if self.amount == 1 else 's'}"


@lru_cache(maxsize=256)
def _public_holidays(country: str, year: int) -> frozenset[date]:
    """Building a `holidays` table is slow (milliseconds), so each (country, year) is built once."""
    return frozenset(country_holidays(country, years=year))


@dataclass(frozen=True)
class Calendar:
    """Business hours: weekly wall-clock intervals in a time zone, minus public holidays and extra dates.

    `hours` maps a weekday (0 = Monday) to sorted, non-overlapping (open, close) pairs; a close
    of 00:00 means midnight at the end of that day. It is kept as a read-only mapping, left out
    of the hash, so calendars can be cached on.
    """

    timezone: str
    hours: Mapping[int, Intervals] = field(hash=False)
    holidays_country: str | None = None
    extra_closed: tuple[date, ...] = ()

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.holidays_country is not None and self.holidays_country not in list_supported_countries():
            raise ValueError(f"unknown holidays country {self.holidays_country!r} (use an ISO code such as 'SE')")
        checked = {day: _checked_day(day, intervals) for day, intervals in self.hours.items()}
        week = {day: intervals for day, intervals in checked.items() if intervals}
        if not week:
            raise ValueError("calendar has no open hours on any weekday")
        object.__setattr__(self, "hours", MappingProxyType(week))
        object.__setattr__(self, "extra_closed", tuple(sorted(set(self.extra_closed))))

    @classmethod
    def from_config(cls, timezone: str, hours: Mapping[str, str], holidays: str | None,
                    extra_closed: Sequence[str | date]) -> Calendar:
        """From config values: `{"mon": "09:00-17:00", "tue": "09:00-12:00,13:00-17:00"}`, "SE", ["2026-06-19"]."""
        week: dict[int, Intervals] = {}
        for key, value in hours.items():
            name = str(key).lower()
            if name not in _WEEKDAYS:
                raise ValueError(f"hours: unknown weekday {key!r} (expected one of {', '.join(_WEEKDAYS)})")
            week[_WEEKDAYS.index(name)] = _parse_intervals(name, value)
        return cls(timezone, week, holidays, tuple(_parse_date(value) for value in extra_closed))

    @cached_property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def _offsets(self) -> tuple[tuple[tuple[timedelta, timedelta], ...], ...]:
        """Per weekday, the open intervals as offsets from local midnight."""
        return tuple(tuple((_offset(opens), _offset(closes, closing=True)) for opens, closes in self.hours.get(day, ()))
                     for day in range(7))

    @cached_property
    def _extra_closed(self) -> frozenset[date]:
        return frozenset(self.extra_closed)

    def is_open_day(self, day: date) -> bool:
        """Has hours on its weekday and is neither a public holiday nor an extra closed date."""
        if not self._offsets[day.weekday()] or day in self._extra_closed:
            return False
        return self.holidays_country is None or day not in _public_holidays(self.holidays_country, day.year)

    def business_day_length(self) -> timedelta:
        """The most common daily open length across the week (ties: the longest), so 9-17 is 8 h."""
        lengths = Counter(sum((end - start for start, end in day), _ZERO) for day in self._offsets if day)
        return max(lengths, key=lambda length: (lengths[length], length))

    def next_open_day(self, day: date) -> date:
        """The first open day strictly after `day`."""
        for n in range(1, _SEARCH_DAYS + 1):
            if self.is_open_day(day + n * _DAY):
                return day + n * _DAY
        raise ValueError(f"no open day within {_SEARCH_DAYS} days after {day}")

    def start_of_day(self, day: date) -> datetime:
        """When business opens on `day`, which must be an open day."""
        spans = self._spans_on(day)
        if not spans:
            raise ValueError(f"{day} is not an open day")
        return spans[0][0].astimezone(self._zone)

    def next_start(self, moment: datetime) -> datetime:
        """The first opening of an open day at or after `moment`."""
        day = self.local_date(_utc(moment))
        if self.is_open_day(day) and self.start_of_day(day) >= moment:
            return self.start_of_day(day)
        return self.start_of_day(self.next_open_day(day))

    def add_business_time(self, start: datetime, amount: timedelta) -> datetime:
        """The earliest moment by which `amount` of business time has passed since `start`."""
        if amount < _ZERO:
            raise ValueError(f"negative business time {amount}")
        moment = _utc(start)
        if amount == _ZERO:
            return moment.astimezone(self._zone)
        remaining = amount
        for opens, closes in self._spans(self.local_date(moment), _SEARCH_DAYS):
            opens = max(opens, moment)
            if opens >= closes:
                continue
            if remaining <= closes - opens:
                return (opens + remaining).astimezone(self._zone)
            remaining -= closes - opens
        raise ValueError(f"{amount} of business time from {start} reaches beyond {_SEARCH_DAYS} days ahead")

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Open time between `start` and `end`; zero when `end` is not after `start`."""
        first, last = _utc(start), _utc(end)
        if last <= first:
            return _ZERO
        days = (self.local_date(last) - self.local_date(first)).days + 1
        total = _ZERO
        for opens, closes in self._spans(self.local_date(first), days):
            total += max(min(closes, last) - max(opens, first), _ZERO)
        return total

    def local_date(self, moment: datetime) -> date:
        """The calendar day `moment` falls on in this calendar's time zone."""
        return moment.astimezone(self._zone).date()

    def _spans(self, first: date, days: int) -> Iterator[_Span]:
        for n in range(days):
            yield from self._spans_on(first + n * _DAY)

    def _spans_on(self, day: date) -> list[_Span]:
        """The open intervals of `day` in UTC, resolved from local wall-clock times."""
        if not self.is_open_day(day):
            return []
        midnight = datetime(day.year, day.month, day.day, tzinfo=self._zone)
        return [(_utc(midnight + start), _utc(midnight + end)) for start, end in self._offsets[day.weekday()]]


def due_at(start: datetime, duration: Duration, clock: Clock, calendar: Calendar) -> datetime:
    """When `duration` from `start` runs out on `clock`; `bd` is always business time, `d` whole calendar days."""
    clock = effective_clock(duration, clock)
    if duration.unit == "d":
        wall = _utc(start).astimezone(calendar._zone) + duration.amount * _DAY   # same wall-clock time
        return _utc(wall).astimezone(calendar._zone)
    return _advance(start, clock_amount(duration, calendar), clock, calendar)


def elapsed(start: datetime, end: datetime, clock: Clock, calendar: Calendar,
            pauses: Sequence[Pause] = ()) -> timedelta:
    """Time used on `clock` between `start` and `end`, not counting pauses; an open pause runs to `end`."""
    paused = sum((_measure(a, b, clock, calendar) for a, b in _merged(pauses, start, _utc(end))), _ZERO)
    return _measure(start, end, clock, calendar) - paused


def due_with_pauses(start: datetime, duration: Duration, clock: Clock, calendar: Calendar,
                    pauses: Sequence[Pause]) -> datetime | None:
    """The due time pushed back by paused time on the clock; None while a pause that began before it is open.

    A pause that starts after the deadline has passed changes nothing: that breach already happened.
    """
    clock = effective_clock(duration, clock)
    due = due_at(start, duration, clock, calendar)
    for paused_at, resumed_at in _merged(pauses, start, _NEVER):
        if paused_at >= due:
            break
        if resumed_at == _NEVER:
            return None
        due = _advance(resumed_at, _measure(paused_at, due, clock, calendar), clock, calendar)
    return due


def effective_clock(duration: Duration, clock: Clock) -> Clock:
    """The clock `duration` is measured on: business days are business time even on a 24x7 tier,
    calendar days are plain elapsed time."""
    if clock not in get_args(Clock):
        raise ValueError(f"unknown clock {clock!r} (expected '24x7' or 'business')")
    if duration.unit == "bd":
        return "business"
    return "24x7" if duration.unit == "d" else clock


def clock_amount(duration: Duration, calendar: Calendar) -> timedelta:
    """How much time on its clock `duration` is (`1bd` on a 9-17 calendar: 8 h)."""
    if duration.unit == "bd":
        return duration.amount * calendar.business_day_length()
    if duration.unit == "h":
        return timedelta(hours=duration.amount)
    return timedelta(minutes=duration.amount) if duration.unit == "m" else timedelta(days=duration.amount)


def _advance(start: datetime, amount: timedelta, clock: Clock, calendar: Calendar) -> datetime:
    if clock == "business":
        return calendar.add_business_time(start, amount)
    return (_utc(start) + amount).astimezone(calendar._zone)


def _measure(start: datetime, end: datetime, clock: Clock, calendar: Calendar) -> timedelta:
    if clock == "business":
        return calendar.business_time_between(start, end)
    return max(_utc(end) - _utc(start), _ZERO)


def _merged(pauses: Sequence[Pause], start: datetime, horizon: datetime) -> list[_Span]:
    """Pauses clipped to [start, horizon] in UTC, sorted, overlaps joined; open ones run to `horizon`."""
    lower = _utc(start)
    clipped = []
    for paused_at, resumed_at in pauses:
        first, last = _utc(paused_at), horizon if resumed_at is None else _utc(resumed_at)
        if last < first:
            raise ValueError(f"pause ends ({resumed_at}) before it starts ({paused_at})")
        first, last = max(first, lower), min(last, horizon)
        if first < last:
            clipped.append((first, last))
    merged: list[_Span] = []
    for first, last in sorted(clipped):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: a time zone is required")
    return moment.astimezone(timezone.utc)


def _offset(moment: time, closing: bool = False) -> timedelta:
    """Offset from midnight; a closing time of 00:00 is the midnight that ends the day."""
    offset = timedelta(hours=moment.hour, minutes=moment.minute, seconds=moment.second,
                       microseconds=moment.microsecond)
    return _DAY if closing and offset == _ZERO else offset


def _checked_day(day: int, intervals: Intervals) -> Intervals:
    if day not in range(7):
        raise ValueError(f"hours: weekday {day!r} is not 0 (Monday) to 6 (Sunday)")
    ordered = tuple(sorted((opens, closes) for opens, closes in intervals))
    previous_end = _ZERO
    for opens, closes in ordered:
        if _offset(opens) >= _offset(closes, closing=True) or _offset(opens) < previous_end:
            raise ValueError(f"hours.{_WEEKDAYS[day]}: {opens:%H:%M}-{closes:%H:%M} is empty, reversed or overlapping")
        previous_end = _offset(closes, closing=True)
    return ordered


def _parse_intervals(key: str, value: str) -> Intervals:
    if not isinstance(value, str):
        raise ValueError(f"hours.{key}: expected a string like '09:00-17:00', got {value!r}")
    return tuple(_parse_interval(key, part.strip()) for part in value.split(",") if part.strip())


def _parse_interval(key: str, text: str) -> tuple[time, time]:
    """`09:00-17:00`; `24:00` is accepted as the midnight that closes the day."""
    match = _INTERVAL.fullmatch(text.replace(" ", ""))
    with suppress(ValueError):
        if match:
            closes = time(0) if match.group(3, 4) == ("24", "00") else time(int(match[3]), int(match[4]))
            return time(int(match[1]), int(match[2])), closes
    raise ValueError(f"hours.{key}: bad interval {text!r} (expected HH:MM-HH:MM)")


def _parse_date(value: str | date) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str):
        with suppress(ValueError):
            return date.fromisoformat(value)
    raise ValueError(f"extra_closed: {value!r} is not a date like '2026-06-19'")
