"""Due times, business-hours calendars and paused SLA clocks (PRODUCT §2)."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.sla import Calendar, Clock, Duration, due_at, due_with_pauses, elapsed

STOCKHOLM = ZoneInfo("Europe/Stockholm")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
OFFICE = Calendar.from_config("Europe/Stockholm", {day: "09:00-17:00" for day in WEEKDAYS}, "SE", [])
SPLIT = Calendar.from_config("Europe/Stockholm", {day: "09:00-12:00,13:00-17:00" for day in WEEKDAYS}, "SE", [])
EVES_CLOSED = Calendar.from_config("Europe/Stockholm", {day: "09:00-17:00" for day in WEEKDAYS}, "SE",
                                   ["2026-06-19", date(2026, 12, 24)])   # Midsummer Eve, Christmas Eve
SUNDAYS_ONLY = Calendar("Europe/Stockholm", {6: ((time(0), time(0)),)})


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, fold=fold, tzinfo=STOCKHOLM)


def utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def same(result: datetime | None, expected: datetime) -> bool:
    """Same instant, same local offset: `==` between one zone's datetimes ignores `fold`."""
    return result is not None and result.isoformat() == expected.isoformat()


B, H = "business", "24x7"

# 2026-03-13 is a Friday; 2026-03-29 and 2026-10-25 are the Stockholm DST Sundays.
DUE = [
    pytest.param(at(2026, 3, 13, 16, 30), "1bd", B, OFFICE, at(2026, 3, 16, 16, 30), id="friday-1630-1bd-monday-1630"),
    pytest.param(at(2026, 3, 14, 10), "1bd", B, OFFICE, at(2026, 3, 16, 17), id="saturday-1bd-monday-1700"),
    pytest.param(at(2026, 3, 17, 8), "1bd", B, OFFICE, at(2026, 3, 17, 17), id="tuesday-0800-1bd-same-day-1700"),
    pytest.param(at(2026, 3, 17, 17), "1bd", B, OFFICE, at(2026, 3, 18, 17), id="exactly-1700-next-open-day-1700"),
    pytest.param(at(2026, 3, 13, 17), "1bd", B, OFFICE, at(2026, 3, 16, 17), id="friday-1700-monday-1700"),
    pytest.param(at(2026, 3, 17, 9), "2bd", B, OFFICE, at(2026, 3, 18, 17), id="2bd-whole-days"),
    pytest.param(at(2026, 3, 14, 10), "1bd", H, OFFICE, at(2026, 3, 16, 17), id="bd-is-business-time-on-24x7"),
    pytest.param(at(2026, 5, 13, 16), "1bd", B, OFFICE, at(2026, 5, 15, 16), id="ascension-day-skipped"),
    pytest.param(at(2026, 4, 2, 10), "1bd", B, OFFICE, at(2026, 4, 7, 10), id="good-friday-easter-monday-skipped"),
    pytest.param(at(2026, 12, 23, 16), "2bd", B, OFFICE, at(2026, 12, 28, 16), id="christmas-day-skipped"),
    pytest.param(at(2026, 6, 18, 16), "1bd", B, OFFICE, at(2026, 6, 19, 16), id="midsummer-eve-not-a-public-holiday"),
    pytest.param(at(2026, 6, 18, 16), "1bd", B, EVES_CLOSED, at(2026, 6, 22, 16), id="midsummer-eve-extra-closed"),
    pytest.param(at(2026, 3, 27, 16), "1bd", B, OFFICE, at(2026, 3, 30, 16), id="dst-spring-weekend-business"),
    pytest.param(at(2026, 10, 23, 16), "1bd", B, OFFICE, at(2026, 10, 26, 16), id="dst-autumn-weekend-business"),
    pytest.param(at(2026, 3, 17, 11), "2h", B, SPLIT, at(2026, 3, 17, 14), id="split-hours-skip-lunch"),
    pytest.param(at(2026, 3, 17, 12, 30), "1h", B, SPLIT, at(2026, 3, 17, 14), id="split-hours-start-at-lunch"),
    pytest.param(at(2026, 3, 17, 11, 30), "1bd", B, SPLIT, at(2026, 3, 18, 11, 30), id="split-hours-bd-is-7h"),
    pytest.param(at(2026, 3, 13, 16, 45), "30m", B, OFFICE, at(2026, 3, 16, 9, 15), id="minutes-business"),
    pytest.param(at(2026, 3, 14, 10), "4h", H, OFFICE, at(2026, 3, 14, 14), id="sev2-4h-around-the-clock"),
    pytest.param(at(2026, 3, 17, 23, 30), "2h", H, OFFICE, at(2026, 3, 18, 1, 30), id="sev1-2h-across-midnight"),
    pytest.param(at(2026, 3, 29, 1, 30), "2h", H, OFFICE, at(2026, 3, 29, 4, 30), id="sev1-2h-across-dst-spring"),
    pytest.param(at(2026, 10, 25, 1, 30), "2h", H, OFFICE, at(2026, 10, 25, 2, 30, fold=1),
                 id="sev1-2h-across-dst-autumn"),
    pytest.param(at(2026, 3, 20, 10), "14d", H, OFFICE, at(2026, 4, 3, 10), id="days-keep-wall-clock-across-dst"),
    pytest.param(at(2026, 3, 20, 10), "14d", B, OFFICE, at(2026, 4, 3, 10), id="days-ignore-business-clock"),
    pytest.param(at(2026, 3, 14, 10), "0h", B, OFFICE, at(2026, 3, 14, 10), id="zero-is-now"),
    pytest.param(datetime(2026, 3, 13, 15, 30, tzinfo=timezone.utc), "1bd", B, OFFICE, at(2026, 3, 16, 16, 30),
                 id="utc-input-stockholm-output"),
]


@pytest.mark.parametrize(("start", "duration", "clock", "calendar", "expected"), DUE)
def test_due_at(start: datetime, duration: str, clock: Clock, calendar: Calendar, expected: datetime) -> None:
    assert same(due_at(start, Duration.parse(duration), clock, calendar), expected)


@pytest.mark.parametrize(("calendar", "day", "is_open", "next_open"), [
    pytest.param(OFFICE, date(2026, 3, 13), True, date(2026, 3, 16), id="friday"),
    pytest.param(OFFICE, date(2026, 3, 14), False, date(2026, 3, 16), id="saturday"),
    pytest.param(OFFICE, date(2026, 5, 14), False, date(2026, 5, 15), id="ascension-day"),
    pytest.param(OFFICE, date(2026, 12, 24), True, date(2026, 12, 28), id="christmas-eve-open-by-default"),
    pytest.param(EVES_CLOSED, date(2026, 12, 24), False, date(2026, 12, 28), id="christmas-eve-extra-closed"),
    pytest.param(EVES_CLOSED, date(2026, 6, 18), True, date(2026, 6, 22), id="before-midsummer-eve"),
])
def test_open_days(calendar: Calendar, day: date, is_open: bool, next_open: date) -> None:
    assert calendar.is_open_day(day) is is_open
    assert calendar.next_open_day(day) == next_open


@pytest.mark.parametrize(("calendar", "length"), [
    pytest.param(OFFICE, timedelta(hours=8), id="9-17"),
    pytest.param(SPLIT, timedelta(hours=7), id="split"),
    pytest.param(Calendar.from_config("UTC", {"mon": "09:00-17:00", "tue": "09:00-17:00", "fri": "09:00-15:00"},
                                      None, []), timedelta(hours=8), id="short-friday"),
    pytest.param(Calendar.from_config("UTC", {"mon": "09:00-17:00", "fri": "09:00-15:00"}, None, []),
                 timedelta(hours=8), id="tie-takes-longest"),
    pytest.param(SUNDAYS_ONLY, timedelta(hours=24), id="whole-day"),
])
def test_business_day_length(calendar: Calendar, length: timedelta) -> None:
    assert calendar.business_day_length() == length


def test_start_of_day() -> None:
    assert same(SPLIT.start_of_day(date(2026, 3, 30)), at(2026, 3, 30, 9))
    with pytest.raises(ValueError, match="2026-05-14 is not an open day"):
        OFFICE.start_of_day(date(2026, 5, 14))


@pytest.mark.parametrize(("start", "end", "calendar", "expected"), [
    pytest.param(at(2026, 3, 13, 16, 30), at(2026, 3, 16, 16, 30), OFFICE, timedelta(hours=8), id="over-weekend"),
    pytest.param(at(2026, 3, 17, 10), at(2026, 3, 17, 15), SPLIT, timedelta(hours=4), id="minus-lunch"),
    pytest.param(at(2026, 3, 17, 15), at(2026, 3, 17, 10), OFFICE, timedelta(0), id="reversed-is-zero"),
    pytest.param(at(2026, 3, 29), at(2026, 3, 30), SUNDAYS_ONLY, timedelta(hours=23), id="dst-spring-sunday-is-23h"),
    pytest.param(at(2026, 10, 25), at(2026, 10, 26), SUNDAYS_ONLY, timedelta(hours=25), id="dst-autumn-sunday-is-25h"),
])
def test_business_time_between(start: datetime, end: datetime, calendar: Calendar, expected: timedelta) -> None:
    assert calendar.business_time_between(start, end) == expected


THU = at(2026, 3, 12, 10)
WEEKEND_PAUSE = (at(2026, 3, 13, 12), at(2026, 3, 16, 11))


@pytest.mark.parametrize(("clock", "pauses", "expected"), [
    pytest.param("business", [], timedelta(hours=21), id="business-no-pause"),
    pytest.param("business", [WEEKEND_PAUSE], timedelta(hours=14), id="business-pause-over-weekend"),
    pytest.param("24x7", [WEEKEND_PAUSE], timedelta(hours=30), id="24x7-pause-over-weekend"),
    pytest.param("business", [(at(2026, 3, 13, 12), None)], timedelta(hours=10), id="open-pause-runs-to-end"),
    pytest.param("business", [WEEKEND_PAUSE, (at(2026, 3, 13, 11), at(2026, 3, 13, 13))], timedelta(hours=13),
                 id="overlapping-pauses-counted-once"),
    pytest.param("business", [(at(2026, 3, 11, 10), at(2026, 3, 12, 11))], timedelta(hours=20),
                 id="pause-before-start-clipped"),
])
def test_elapsed(clock: Clock, pauses: list[tuple[datetime, datetime | None]], expected: timedelta) -> None:
    assert elapsed(THU, at(2026, 3, 16, 15), clock, OFFICE, pauses) == expected


@pytest.mark.parametrize(("duration", "clock", "pauses", "expected"), [
    pytest.param("1bd", "business", [], at(2026, 3, 13, 10), id="no-pause"),
    pytest.param("1bd", "business", [(at(2026, 3, 12, 16), at(2026, 3, 16, 10))], at(2026, 3, 16, 12),
                 id="pause-over-weekend"),
    pytest.param("1bd", "business", [(at(2026, 3, 12, 18), at(2026, 3, 12, 20))], at(2026, 3, 13, 10),
                 id="pause-outside-hours-costs-nothing"),
    pytest.param("1bd", "business", [(at(2026, 3, 12, 11), at(2026, 3, 12, 12)),
                                     (at(2026, 3, 13, 9, 30), at(2026, 3, 13, 10, 30))],
                 at(2026, 3, 13, 12), id="two-pauses"),
    pytest.param("1bd", "business", [(at(2026, 3, 13, 11), None)], at(2026, 3, 13, 10), id="open-pause-after-breach"),
    pytest.param("2h", "24x7", [(at(2026, 3, 12, 11), at(2026, 3, 12, 11, 30))], at(2026, 3, 12, 12, 30),
                 id="24x7-pause"),
])
def test_due_with_pauses(duration: str, clock: Clock, pauses: list[tuple[datetime, datetime | None]],
                         expected: datetime) -> None:
    assert same(due_with_pauses(THU, Duration.parse(duration), clock, OFFICE, pauses), expected)


def test_due_with_open_pause_is_none() -> None:
    assert due_with_pauses(THU, Duration.parse("1bd"), "business", OFFICE, [(at(2026, 3, 12, 16), None)]) is None


@pytest.mark.parametrize(("text", "amount", "unit"), [
    pytest.param("2h", 2, "h", id="hours"),
    pytest.param("1bd", 1, "bd", id="business-days"),
    pytest.param("14d", 14, "d", id="days"),
    pytest.param("30m", 30, "m", id="minutes"),
    pytest.param("0h", 0, "h", id="zero"),
    pytest.param(" 4H ", 4, "h", id="case-and-space"),
])
def test_duration_parse(text: str, amount: int, unit: str) -> None:
    duration = Duration.parse(text)
    assert (duration.amount, duration.unit) == (amount, unit)
    assert Duration.parse(str(duration)) == duration


@pytest.mark.parametrize("text", ["", "h", "2", "2x", "-1h", "1.5h", "2 h", "bd1", "２h", "2hh"])
def test_duration_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration " + repr(text)):
        Duration.parse(text)


def test_duration_str() -> None:
    assert str(Duration(2, "bd")) == "2bd"


@pytest.mark.parametrize(("timezone_name", "hours", "country", "closed", "message"), [
    pytest.param("Europe/Stockholm", {"mox": "09:00-17:00"}, None, [], "unknown weekday 'mox'", id="bad-weekday"),
    pytest.param("Europe/Stockholm", {"mon": "9-17"}, None, [], r"hours.mon: bad interval '9-17'", id="bad-format"),
    pytest.param("Europe/Stockholm", {"tue": "25:00-26:00"}, None, [], "hours.tue: bad interval '25:00-26:00'",
                 id="bad-time"),
    pytest.param("Europe/Stockholm", {"wed": 9}, None, [], "hours.wed: expected a string", id="not-a-string"),
    pytest.param("Europe/Stockholm", {"thu": "17:00-09:00"}, None, [], "hours.thu: 17:00-09:00 is empty, reversed",
                 id="reversed"),
    pytest.param("Europe/Stockholm", {"fri": "09:00-12:00,11:00-17:00"}, None, [],
                 "hours.fri: 11:00-17:00 .*overlapping", id="overlapping"),
    pytest.param("Europe/Stockholm", {}, None, [], "no open hours", id="no-hours"),
    pytest.param("Europe/Stockholm", {"mon": ""}, None, [], "no open hours", id="all-closed"),
    pytest.param("Mars/Olympus", {"mon": "09:00-17:00"}, None, [], "unknown time zone 'Mars/Olympus'",
                 id="bad-timezone"),
    pytest.param("Europe/Stockholm", {"mon": "09:00-17:00"}, "XX", [], "unknown holidays country 'XX'",
                 id="bad-country"),
    pytest.param("Europe/Stockholm", {"mon": "09:00-17:00"}, None, ["2026-13-01"], "extra_closed: '2026-13-01'",
                 id="bad-date"),
    pytest.param("Europe/Stockholm", {"mon": "09:00-17:00"}, None, [datetime(2026, 6, 19, 9)], "extra_closed: datetime",
                 id="datetime-not-date"),
])
def test_from_config_errors(timezone_name: str, hours: dict[str, str], country: str | None, closed: list[str | date],
                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Calendar.from_config(timezone_name, hours, country, closed)


def test_from_config_normalises() -> None:
    calendar = Calendar.from_config("UTC", {"Sat": " 13:00-24:00, 08:00 - 12:00 "}, None,
                                    ["2026-06-20", date(2026, 6, 20)])
    direct = Calendar("UTC", {5: ((time(13), time(0)), (time(8), time(12))), 6: ()}, None, (date(2026, 6, 20),))
    assert calendar.hours == {5: ((time(8), time(12)), (time(13), time(0)))}
    assert calendar.extra_closed == (date(2026, 6, 20),)
    assert calendar == direct and len({calendar, direct}) == 1
    assert calendar.business_time_between(datetime(2026, 6, 27, tzinfo=timezone.utc),
                                          datetime(2026, 6, 28, tzinfo=timezone.utc)) == timedelta(hours=15)


def test_naive_datetime_rejected() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        due_at(datetime(2026, 3, 13, 10), Duration.parse("1bd"), "business", OFFICE)
    with pytest.raises(ValueError, match="naive datetime"):
        elapsed(THU, datetime(2026, 3, 16), "24x7", OFFICE)


def test_unknown_clock_rejected() -> None:
    with pytest.raises(ValueError, match="unknown clock 'weekdays'"):
        due_at(THU, Duration.parse("2h"), "weekdays", OFFICE)  # type: ignore[arg-type]


def test_search_is_bounded() -> None:
    mondays = tuple(date(2026, 3, 16) + timedelta(weeks=n) for n in range(200))
    calendar = Calendar("UTC", {0: ((time(9), time(17)),)}, None, mondays)
    with pytest.raises(ValueError, match="no open day within"):
        calendar.next_open_day(date(2026, 3, 13))
    with pytest.raises(ValueError, match="beyond 1098 days ahead"):
        due_at(THU, Duration.parse("1bd"), "business", calendar)


ZONES = st.sampled_from([STOCKHOLM, ZoneInfo("UTC"), ZoneInfo("America/New_York")])
MOMENTS = st.datetimes(datetime(2025, 1, 1), datetime(2028, 12, 31), timezones=ZONES, allow_imaginary=False)
DURATIONS = st.builds(Duration, st.integers(0, 30), st.sampled_from(["h", "m", "bd"]))
CALENDARS = st.sampled_from([OFFICE, SPLIT, EVES_CLOSED, SUNDAYS_ONLY])
CLOCKS = st.sampled_from(["business", "24x7"])


def clock_amount(duration: Duration, calendar: Calendar) -> timedelta:
    if duration.unit == "bd":
        return duration.amount * calendar.business_day_length()
    return timedelta(hours=duration.amount) if duration.unit == "h" else timedelta(minutes=duration.amount)


@settings(max_examples=300, deadline=None)
@given(start=MOMENTS, duration=DURATIONS, calendar=CALENDARS)
def test_due_at_uses_exactly_the_clock_amount(start: datetime, duration: Duration, calendar: Calendar) -> None:
    due = utc(due_at(start, duration, "business", calendar))
    amount = clock_amount(duration, calendar)
    assert calendar.business_time_between(start, due) == amount
    assert due >= utc(start)
    if amount:
        assert calendar.business_time_between(start, due - timedelta(microseconds=1)) < amount


@settings(max_examples=300, deadline=None)
@given(first=MOMENTS, second=MOMENTS, duration=DURATIONS, calendar=CALENDARS, clock=CLOCKS)
def test_due_at_is_monotonic_in_start(first: datetime, second: datetime, duration: Duration, calendar: Calendar,
                                      clock: Clock) -> None:
    early, late = sorted((first, second), key=utc)
    assert utc(due_at(early, duration, clock, calendar)) <= utc(due_at(late, duration, clock, calendar))


@settings(max_examples=200, deadline=None)
@given(start=MOMENTS, duration=DURATIONS, calendar=CALENDARS, clock=CLOCKS,
       pauses=st.lists(st.tuples(st.integers(-48 * 60, 20 * 24 * 60), st.integers(0, 5 * 24 * 60)), max_size=3))
def test_paused_due_uses_exactly_the_amount(start: datetime, duration: Duration, calendar: Calendar, clock: Clock,
                                            pauses: list[tuple[int, int]]) -> None:
    windows = [(start + timedelta(minutes=offset), start + timedelta(minutes=offset + length))
               for offset, length in pauses]
    due = due_with_pauses(start, duration, clock, calendar, windows)
    assert due is not None
    used_clock: Clock = "business" if duration.unit == "bd" else clock
    expected = clock_amount(duration, calendar)
    assert elapsed(start, due, used_clock, calendar, windows) == expected
