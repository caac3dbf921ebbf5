"""The follow-up schedule of a case waiting on the customer (PRODUCT §2). Pure.

Attempt 1 goes out at the start of the first business day once `first_after` has passed
since the case went pending; each later attempt at the start of the business day after the
one the previous attempt actually went out on, so no two attempts share a business day even
when one was sent late. `grace` after the last attempt the case is closed.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from routing.sla import Calendar, Duration, due_at


@dataclass(frozen=True)
class FollowupRules:
    attempts: int
    first_after: Duration
    grace: Duration


@dataclass(frozen=True)
class FollowupStep:
    action: Literal["followup", "close"]
    attempt: int            # followup: the attempt to send (1-based); close: the attempts sent
    due: datetime


def next_step(rules: FollowupRules, calendar: Calendar, pending_since: datetime, attempts_sent: int,
              last_attempt_at: datetime | None) -> FollowupStep:
    """What happens next to a case pending since `pending_since`, and when."""
    if attempts_sent < rules.attempts:
        if attempts_sent == 0 or last_attempt_at is None:
            first = due_at(pending_since, rules.first_after, "business", calendar)
            return FollowupStep("followup", attempts_sent + 1, calendar.next_start(first))
        next_day = calendar.next_open_day(calendar.local_date(last_attempt_at))
        return FollowupStep("followup", attempts_sent + 1, calendar.start_of_day(next_day))
    return FollowupStep("close", attempts_sent,
                        due_at(last_attempt_at or pending_since, rules.grace, "business", calendar))
