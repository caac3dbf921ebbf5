"""The SLA, read: one case's state for `tickets show`, and `intake sla report` over many cases.

Times to first response are measured on the SLA's own clock (business time for business-hours
targets, pauses left out), so they compare directly with the targets.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.config import Config
from intake.timetable import load_history, sla_of
from models import Event, Ticket
from routing.sla_state import SlaState, StatusChange


@dataclass(frozen=True)
class ReportRow:
    tier: str
    severity: int
    target: str
    cases: int
    met: int              # answered within the target
    breached: int         # answered late, or unanswered past the target
    median: timedelta | None
    p90: timedelta | None

    def as_dict(self) -> dict[str, Any]:
        seconds = {name: None if value is None else int(value.total_seconds())
                   for name, value in (("median_seconds", self.median), ("p90_seconds", self.p90))}
        return {"tier": self.tier, "severity": self.severity, "target": self.target, "cases": self.cases,
                "met": self.met, "breached": self.breached, **seconds}


def sla_view(session: Session, config: Config, ticket: Ticket, now: datetime) -> dict[str, Any] | None:
    """`tickets show`'s `sla` object; None when the case has no response target."""
    state = sla_of(config, ticket, load_history(session, ticket).changes, now)
    if state is None:
        return None
    zone = ZoneInfo(config.timezone)

    def local(when: datetime | None) -> str | None:
        return when.astimezone(zone).isoformat() if when else None

    return {"target": str(state.target.duration), "clock": state.target.clock, "due": local(state.due),
            "used": int(state.used.total_seconds()), "left": int(state.left.total_seconds()),
            "breached": state.breached, "paused": state.paused, "responded_at": local(state.responded_at),
            "warned_at": local(ticket.sla_warned_at), "breach_notified_at": local(ticket.sla_breached_at)}


def sla_report(session: Session, config: Config, now: datetime, since: datetime | None = None) -> list[ReportRow]:
    """Per tier and severity, the cases opened since `since` that have a response target."""
    query = select(Ticket).order_by(Ticket.id)
    if since is not None:
        query = query.where(Ticket.created_at >= since)
    tickets = list(session.scalars(query))
    changes: dict[int, list[StatusChange]] = defaultdict(list)
    events = select(Event.ticket_id, Event.at, Event.data).where(
        Event.kind == "status_changed", Event.ticket_id.in_([t.id for t in tickets])).order_by(Event.at, Event.id)
    for ticket_id, at, data in session.execute(events) if tickets else ():
        changes[ticket_id].append(StatusChange(at, data["to"]))
    groups: dict[tuple[str, int], list[SlaState]] = defaultdict(list)
    for ticket in tickets:
        state = sla_of(config, ticket, tuple(changes[ticket.id]), now)
        if state is not None and ticket.tier is not None:
            groups[(ticket.tier, ticket.severity)].append(state)
    return [_row(tier, severity, states) for (tier, severity), states in sorted(groups.items())]


def _row(tier: str, severity: int, states: list[SlaState]) -> ReportRow:
    times = sorted(s.used for s in states if s.responded_at is not None)
    return ReportRow(tier, severity, str(states[0].target.duration), len(states), sum(s.met for s in states),
                     sum(s.breached for s in states), median(times) if times else None,
                     times[math.ceil(0.9 * len(times)) - 1] if times else None)
