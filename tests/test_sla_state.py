"""The SLA engine with a frozen clock: where a case stands against its target, pauses included,
and when follow-ups fall due (routing/sla_state.py, routing/followup.py)."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from routing.followup import FollowupRules, FollowupStep, next_step
from routing.policy import Tier
from routing.sla import Calendar, Duration
from routing.sla_state import StatusChange, Target, pauses_from, sla_state, target_for

STOCKHOLM = ZoneInfo("Europe/Stockholm")
OFFICE = Calendar.from_config("Europe/Stockholm", {d: "09:00-17:00" for d in ("mon", "tue", "wed", "thu", "fri")},
                              "SE", [])
ENTERPRISE = Tier("enterprise", {1: Duration.parse("2h"), 2: Duration.parse("4h"), 3: Duration.parse("1bd"),
                                 4: Duration.parse("2bd")}, {1: "24x7", 2: "24x7"})
SEV1, SEV2, SEV3 = (target_for(ENTERPRISE, level, OFFICE) for level in (1, 2, 3))
H = timedelta(hours=1)


def at(month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, fold=fold, tzinfo=STOCKHOLM)


def same(result: datetime | None, expected: datetime | None) -> bool:
    """Same instant and same local offset (DST bugs show in the offset)."""
    return (result is None and expected is None) or (
        result is not None and expected is not None and result.isoformat() == expected.isoformat())


def changes(*pairs: tuple[datetime, str]) -> tuple[StatusChange, ...]:
    return tuple(StatusChange(when, status) for when, status in pairs)


# 2026-03-13 is a Friday; 2026-05-14 is Ascension Day (a Swedish public holiday);
# 2026-03-29 is the Stockholm spring DST Sunday (02:00 CET -> 03:00 CEST).
STATES = [
    pytest.param(SEV3, at(3, 13, 16, 30), (), at(3, 16, 12), None,
                 at(3, 16, 16, 30), 3.5 * H, 4.5 * H, False, False, id="friday-1630-sev3-due-monday-1630"),
    pytest.param(SEV3, at(3, 13, 16, 30), (), at(3, 16, 16, 31), None,
                 at(3, 16, 16, 30), 8 * H + timedelta(minutes=1), -timedelta(minutes=1), True, False,
                 id="friday-1630-sev3-breached-monday-1631"),
    pytest.param(SEV3, at(3, 14, 10), (), at(3, 16, 10), None,
                 at(3, 16, 17), 1 * H, 7 * H, False, False, id="saturday-sev3-due-monday-1700"),
    pytest.param(SEV3, at(5, 13, 16), (), at(5, 14, 12), None,
                 at(5, 15, 16), 1 * H, 7 * H, False, False, id="swedish-holiday-ascension-day-skipped"),
    pytest.param(SEV3, at(3, 27, 16), (), at(3, 30, 10), None,
                 at(3, 30, 16), 2 * H, 6 * H, False, False, id="dst-weekend-business-hours-keep-wall-clock"),
    pytest.param(SEV1, at(3, 29, 1, 30), (), at(3, 29, 3, 30), None,
                 at(3, 29, 4, 30), 1 * H, 1 * H, False, False, id="sev1-24x7-across-dst-is-two-real-hours"),
    pytest.param(SEV1, at(3, 14, 23), (), at(3, 15, 1, 1), None,
                 at(3, 15, 1), 2 * H + timedelta(minutes=1), -timedelta(minutes=1), True, False,
                 id="sev1-24x7-saturday-night-breached"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 16), "pending")), at(3, 14, 12), None,
                 None, 6 * H, 2 * H, False, True, id="pending-pauses-due-unknown"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 16), "pending"), (at(3, 16, 10), "open")), at(3, 16, 11),
                 None, at(3, 16, 12), 7 * H, 1 * H, False, False, id="pause-straddling-a-weekend-resumes-monday"),
    pytest.param(SEV2, at(3, 13, 20), changes((at(3, 13, 21), "pending"), (at(3, 14, 9), "open")), at(3, 14, 10),
                 None, at(3, 14, 12), 2 * H, 2 * H, False, False, id="pause-on-a-24x7-clock-counts-every-hour"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 13, 12), "pending")), at(3, 16, 12), None,
                 at(3, 13, 10), 10 * H, -2 * H, True, True, id="pause-after-the-deadline-does-not-undo-a-breach"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 12), "resolved"), (at(3, 12, 15), "closed"),
                                              (at(3, 16, 9), "open")), at(3, 16, 10),
                 None, at(3, 16, 15), 3 * H, 5 * H, False, False, id="resolved-and-closed-stop-the-clock-too"),
    pytest.param(SEV3, at(3, 13, 16, 30), (), at(3, 20, 12), at(3, 16, 11),
                 at(3, 16, 16, 30), 2.5 * H, 5.5 * H, False, False, id="answered-in-time-is-frozen-and-met"),
    pytest.param(SEV3, at(3, 13, 16, 30), (), at(3, 20, 12), at(3, 17, 9, 30),
                 at(3, 16, 16, 30), 9 * H, -1 * H, True, False, id="answered-late-is-breached"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 16), "pending")), at(3, 20, 12), at(3, 13, 9),
                 None, 6 * H, 2 * H, False, False, id="answered-while-pending-is-not-paused"),
]


@pytest.mark.parametrize(("target", "opened", "history", "now", "responded", "due", "used", "left", "breached",
                          "paused"), STATES)
def test_sla_state(target: Target, opened: datetime, history: tuple[StatusChange, ...], now: datetime,
                   responded: datetime | None, due: datetime | None, used: timedelta, left: timedelta,
                   breached: bool, paused: bool) -> None:
    state = sla_state(target, opened, history, now, responded)
    assert same(state.due, due)
    assert (state.used, state.left, state.breached, state.paused) == (used, left, breached, paused)
    assert state.met is (responded is not None and not breached)


@pytest.mark.parametrize(("target", "opened", "history", "warn_at", "expected"), [
    pytest.param(SEV3, at(3, 13, 16, 30), (), 0.75, at(3, 16, 14, 30), id="business-75-percent-is-6h-of-8h"),
    pytest.param(SEV1, at(3, 29, 1, 30), (), 0.75, at(3, 29, 4), id="24x7-across-dst"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 15), "pending"), (at(3, 16, 9), "open")), 0.75,
                 at(3, 16, 10), id="pushed-by-a-pause"),
    pytest.param(SEV3, at(3, 12, 10), changes((at(3, 12, 15), "pending")), 0.75, None, id="unknown-while-paused"),
    pytest.param(SEV3, at(3, 12, 10), (), 1.0, at(3, 13, 10), id="at-100-percent-is-the-deadline"),
])
def test_warning_time(target: Target, opened: datetime, history: tuple[StatusChange, ...], warn_at: float,
                      expected: datetime | None) -> None:
    assert same(sla_state(target, opened, history, at(3, 20), warn_at=warn_at).warn_due, expected)


def test_targets_come_from_the_tier() -> None:
    assert SEV1 is not None and (SEV1.duration, SEV1.clock, SEV1.amount) == (Duration(2, "h"), "24x7", 2 * H)
    assert SEV3 is not None and (SEV3.clock, SEV3.amount) == ("business", 8 * H)
    assert target_for(ENTERPRISE, 5, OFFICE) is None
    assert target_for(None, 1, OFFICE) is None


@pytest.mark.parametrize(("history", "until", "expected"), [
    pytest.param((), at(3, 20), [], id="never-paused"),
    pytest.param(changes((at(3, 12), "pending"), (at(3, 13), "open")), at(3, 20), [(at(3, 12), at(3, 13))],
                 id="one-pause"),
    pytest.param(changes((at(3, 12), "pending"), (at(3, 13), "resolved"), (at(3, 14), "open")), at(3, 20),
                 [(at(3, 12), at(3, 14))], id="pending-then-resolved-is-one-pause"),
    pytest.param(changes((at(3, 12), "pending")), at(3, 20), [(at(3, 12), None)], id="still-paused"),
    pytest.param(changes((at(3, 13), "open"), (at(3, 12), "pending")), at(3, 20), [(at(3, 12), at(3, 13))],
                 id="order-of-input-does-not-matter"),
    pytest.param(changes((at(3, 12), "pending"), (at(3, 13), "open")), at(3, 12, 12), [(at(3, 12), None)],
                 id="cut-at-until"),
])
def test_pauses_from(history: tuple[StatusChange, ...], until: datetime,
                     expected: list[tuple[datetime, datetime | None]]) -> None:
    assert pauses_from(history, until) == expected


RULES = FollowupRules(2, Duration.parse("1bd"), Duration.parse("1bd"))


@pytest.mark.parametrize(("pending_since", "sent", "last", "expected"), [
    pytest.param(at(3, 12, 11), 0, None, FollowupStep("followup", 1, at(3, 16, 9)),
                 id="thursday-pending-attempt-1-monday-start-of-day"),
    pytest.param(at(3, 13, 9), 0, None, FollowupStep("followup", 1, at(3, 16, 9)),
                 id="1bd-ends-friday-1700-attempt-1-monday"),
    pytest.param(at(3, 16, 8), 0, None, FollowupStep("followup", 1, at(3, 17, 9)),
                 id="before-opening-1bd-is-the-whole-day"),
    pytest.param(at(5, 13, 16), 0, None, FollowupStep("followup", 1, at(5, 18, 9)),
                 id="swedish-holiday-skipped"),
    pytest.param(at(3, 12, 11), 1, at(3, 16, 9), FollowupStep("followup", 2, at(3, 17, 9)),
                 id="attempt-2-next-business-day"),
    pytest.param(at(3, 12, 11), 1, at(3, 16, 16, 59), FollowupStep("followup", 2, at(3, 17, 9)),
                 id="attempt-2-never-the-same-day"),
    pytest.param(at(3, 12, 11), 1, at(3, 14, 20), FollowupStep("followup", 2, at(3, 16, 9)),
                 id="attempt-1-sent-late-on-saturday-attempt-2-monday"),
    pytest.param(at(3, 26, 11), 1, at(3, 27, 9), FollowupStep("followup", 2, at(3, 30, 9)),
                 id="dst-weekend-attempt-2-monday-0900-summer-time"),
    pytest.param(at(4, 1, 11), 1, at(4, 2, 9), FollowupStep("followup", 2, at(4, 7, 9)),
                 id="easter-skipped"),
    pytest.param(at(3, 12, 11), 2, at(3, 17, 9), FollowupStep("close", 2, at(3, 17, 17)),
                 id="grace-after-the-last-attempt-then-close"),
])
def test_followup_schedule(pending_since: datetime, sent: int, last: datetime | None,
                           expected: FollowupStep) -> None:
    step = next_step(RULES, OFFICE, pending_since, sent, last)
    assert (step.action, step.attempt) == (expected.action, expected.attempt)
    assert same(step.due, expected.due)


def test_no_attempts_configured_closes_after_the_grace() -> None:
    rules = FollowupRules(0, Duration.parse("1bd"), Duration.parse("2bd"))
    step = next_step(rules, OFFICE, at(3, 12, 11), 0, None)
    assert step.action == "close" and same(step.due, at(3, 16, 11))


@pytest.mark.parametrize(("moment", "expected"), [
    pytest.param(at(3, 16, 8), at(3, 16, 9), id="before-opening-same-day"),
    pytest.param(at(3, 16, 9), at(3, 16, 9), id="at-opening"),
    pytest.param(at(3, 16, 9, 1), at(3, 17, 9), id="after-opening-next-day"),
    pytest.param(at(3, 13, 18), at(3, 16, 9), id="friday-evening-monday"),
    pytest.param(at(5, 13, 17), at(5, 15, 9), id="holiday-skipped"),
])
def test_next_start(moment: datetime, expected: datetime) -> None:
    assert same(OFFICE.next_start(moment), expected)


@pytest.mark.parametrize(("text", "words"), [("1bd", "1 business day"), ("2bd", "2 business days"),
                                             ("4h", "4 hours"), ("14d", "14 days"), ("1m", "1 minute")])
def test_duration_describe(text: str, words: str) -> None:
    assert Duration.parse(text).describe() == words


def test_local_date_is_the_calendars_day() -> None:
    assert OFFICE.local_date(datetime(2026, 3, 15, 23, 30, tzinfo=ZoneInfo("UTC"))) == date(2026, 3, 16)
