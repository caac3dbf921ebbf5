"""Where a case stands against its response target, from its history of status changes.

The response clock runs from the case's creation while the case is `open`; every other
status stops it (`pending`: waiting on the customer; `resolved` and `closed`: nobody is
waiting for an answer), and a return to `open` starts it again. The clock stops for good at
the first response. Pure: the caller passes the history and the time.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from routing.policy import Tier
from routing.sla import Calendar, Clock, Duration, Pause, clock_amount, due_with_pauses, effective_clock, elapsed

RUNNING = "open"


@dataclass(frozen=True)
class StatusChange:
    at: datetime
    status: str            # the status entered


@dataclass(frozen=True)
class Target:
    """A response target: how long, on which clock, by which calendar."""
    duration: Duration
    clock: Clock
    calendar: Calendar

    @property
    def amount(self) -> timedelta:
        return clock_amount(self.duration, self.calendar)


@dataclass(frozen=True)
class SlaState:
    target: Target
    due: datetime | None          # None while the clock is stopped before the deadline (not known yet)
    warn_due: datetime | None     # when the warning share of the target is used; None while stopped
    used: timedelta               # time on the clock, pauses left out
    left: timedelta               # negative once the deadline has passed
    breached: bool                # answered late, or unanswered past the deadline
    paused: bool                  # the clock is stopped now (never once answered)
    responded_at: datetime | None

    @property
    def met(self) -> bool:
        return self.responded_at is not None and not self.breached


def target_for(tier: Tier | None, severity: int, calendar: Calendar) -> Target | None:
    """The tier's response target for `severity`; None when the tier promises none."""
    if tier is None or severity not in tier.response:
        return None
    return Target(tier.response[severity], tier.clock_for(severity), calendar)


def pauses_from(changes: Sequence[StatusChange], until: datetime) -> list[Pause]:
    """The spans during which the clock was stopped, up to `until`; one still stopped is open-ended."""
    pauses: list[Pause] = []
    stopped_at: datetime | None = None
    for change in sorted(changes, key=lambda c: c.at):
        if change.at > until:
            break
        if change.status != RUNNING and stopped_at is None:
            stopped_at = change.at
        elif change.status == RUNNING and stopped_at is not None:
            pauses.append((stopped_at, change.at))
            stopped_at = None
    if stopped_at is not None:
        pauses.append((stopped_at, None))
    return pauses


def sla_state(target: Target, opened_at: datetime, changes: Sequence[StatusChange], now: datetime,
              responded_at: datetime | None = None, warn_at: float = 0.75) -> SlaState:
    """The state at `now` (or as it stood at the first response) of a case opened at `opened_at`.

    `changes` are the status changes after the case opened (it opens `open`); `warn_at` is the
    share of the target at which a warning is due.
    """
    end = min(responded_at, now) if responded_at is not None else now
    pauses = pauses_from(changes, end)
    clock = effective_clock(target.duration, target.clock)
    used = elapsed(opened_at, end, clock, target.calendar, pauses)
    due = due_with_pauses(opened_at, target.duration, clock, target.calendar, pauses)
    share = min(max(warn_at, 0.0), 1.0)
    warn = Duration(int(target.amount.total_seconds() * share) // 60, "m")
    warn_due = due_with_pauses(opened_at, warn, clock, target.calendar, pauses)
    stopped = bool(pauses) and pauses[-1][1] is None
    return SlaState(target=target, due=due, warn_due=warn_due, used=used, left=target.amount - used,
                    breached=due is not None and end > due, paused=stopped and responded_at is None,
                    responded_at=responded_at if responded_at is not None and responded_at <= now else None)
