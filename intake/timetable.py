"""A case's timetable: its clocks as config defines them, its history as the database records it,
and the times stored on it that tell each sweep when to look at it next.

The stored times are only ever early, never late: whoever changes a case without working
them out leaves a "look now" (intake/lifecycle.py), and a sweep that looks at a case works
out the real time from the history and stores it. `reschedule` does the same at once, in the
transaction that changed the case.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from intake.config import DEFAULT_HOURS, Config
from models import Direction, Event, Message, Ticket, TicketStatus
from routing.followup import FollowupRules, FollowupStep, next_step
from routing.sla import Calendar, due_at
from routing.sla_state import SlaState, StatusChange, sla_state, target_for

UPDATE_KINDS = ("staff_reply",)     # outgoing mail that counts as an update to the customer


@dataclass(frozen=True)
class History:
    """What the clocks need to know about a case, read from its events and messages."""
    changes: tuple[StatusChange, ...]
    last_followup_at: datetime | None       # the latest follow-up attempt sent
    last_reminder_at: datetime | None       # the latest SEV-1 update reminder
    last_update_at: datetime | None         # the latest update staff sent the customer


NO_HISTORY = History(changes=(), last_followup_at=None, last_reminder_at=None, last_update_at=None)


def calendar_for(config: Config, ticket: Ticket) -> Calendar:
    """The tier's calendar; without a tier, the `business` calendar (or the first one configured)."""
    tier = config.tiers.get(ticket.tier) if ticket.tier else None
    name = tier.calendar if tier else "business"
    if name in config.calendars:
        return config.calendars[name]
    if config.calendars:
        return next(iter(config.calendars.values()))
    return Calendar.from_config(config.timezone, DEFAULT_HOURS, None, [])


def followup_rules(config: Config) -> FollowupRules:
    return FollowupRules(config.followup_attempts, config.followup_first_after, config.followup_grace)


def most_urgent(config: Config) -> int:
    """The level that gets periodic update reminders: SEV-1 with the shipped levels."""
    return config.levels[0].level


def load_history(session: Session, ticket: Ticket) -> History:
    events = session.execute(select(Event.kind, Event.at, Event.data).where(
        Event.ticket_id == ticket.id, Event.kind.in_(("status_changed", "followup_sent", "sev1_reminder")))
        .order_by(Event.at, Event.id)).all()
    last_update = session.scalar(select(func.max(Message.created_at)).where(
        Message.ticket_id == ticket.id, Message.direction == Direction.OUT, Message.kind.in_(UPDATE_KINDS)))
    return History(
        changes=tuple(StatusChange(at, data["to"]) for kind, at, data in events if kind == "status_changed"),
        last_followup_at=max((at for kind, at, _ in events if kind == "followup_sent"), default=None),
        last_reminder_at=max((at for kind, at, _ in events if kind == "sev1_reminder"), default=None),
        last_update_at=last_update)


def sla_of(config: Config, ticket: Ticket, changes: tuple[StatusChange, ...], now: datetime) -> SlaState | None:
    """The response SLA of the case at `now`; None when its tier promises no response time."""
    tier = config.tiers.get(ticket.tier) if ticket.tier else None
    target = target_for(tier, ticket.severity, calendar_for(config, ticket))
    if target is None:
        return None
    return sla_state(target, ticket.created_at, changes, now, ticket.first_response_at, config.warn_at)


def followup_step(config: Config, ticket: Ticket, history: History) -> FollowupStep | None:
    """The next follow-up attempt or the closing of a pending case; None for any other case."""
    if ticket.status is not TicketStatus.PENDING:
        return None
    pending_since = max((c.at for c in history.changes if c.status == TicketStatus.PENDING.value),
                        default=ticket.updated_at)
    last = history.last_followup_at if history.last_followup_at and history.last_followup_at >= pending_since else None
    return next_step(followup_rules(config), calendar_for(config, ticket), pending_since,
                     ticket.followup_attempts, last)


def sev1_reminder_due(config: Config, ticket: Ticket, history: History) -> datetime | None:
    """When staff are next reminded to update the customer of an open most-urgent case."""
    if ticket.status is not TicketStatus.OPEN or ticket.severity != most_urgent(config):
        return None
    since = max(t for t in (ticket.created_at, history.last_update_at, history.last_reminder_at) if t is not None)
    return due_at(since, config.sev1_update_every, "24x7", calendar_for(config, ticket))


def store_sla(ticket: Ticket, state: SlaState | None) -> None:
    """Keep the stored response times in step with the engine; while the clock is stopped they stay."""
    if state is None:           # no target (any more): nothing is due
        _store(ticket, first_response_due=None, sla_warn_at=None)
        return
    if ticket.first_response_at is not None or ticket.status is not TicketStatus.OPEN:
        _store(ticket, sla_warn_at=None)
        return
    if state.due is not None:
        _store(ticket, first_response_due=state.due)
    pending_warning = ticket.sla_warned_at is None and ticket.sla_breached_at is None
    _store(ticket, sla_warn_at=state.warn_due if pending_warning else None)


def _store(ticket: Ticket, **times: datetime | None) -> None:
    """Assign only the times that changed: a case whose times all stand stays clean, and the
    flush leaves it out (a case is inserted with its times, see intake/apply.py open_case)."""
    for name, value in times.items():
        if getattr(ticket, name) != value:
            setattr(ticket, name, value)


def reschedule(session: Session, config: Config, ticket: Ticket, now: datetime,
               history: History | None = None) -> None:
    """Work out every stored time of `ticket` now, in the caller's transaction. A caller that knows
    the history passes it (a case opened in this transaction has `NO_HISTORY`): that spares a
    flush and two queries on every new case."""
    if history is None:
        session.flush()
        history = load_history(session, ticket)
    store_sla(ticket, sla_of(config, ticket, history.changes, now))
    step = followup_step(config, ticket, history)
    _store(ticket, next_followup_at=step.due if step else None,
           next_sev1_reminder_at=sev1_reminder_due(config, ticket, history))
