"""Case status changes: the one place that moves a case between open, pending, resolved and
closed, so every change is recorded as an event with its actor and reason.

The events are the SLA clock's pause history (routing/sla_state.py). A change also leaves
hints for the sweeps (docs/sla.md): entering `pending` starts a new follow-up sequence,
leaving it cancels what is left of it, and going back to `open` has the response clock looked at
again. The sweeps, or `intake.timetable.reschedule` in the same transaction, turn the hints
into exact times.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from models import Event, Ticket, TicketStatus


def change_status(session: Session, ticket: Ticket, new: TicketStatus, actor: str, now: datetime,
                  why: str, **data: object) -> bool:
    """Move `ticket` to `new`; returns False (and records nothing) when it is already there."""
    old = ticket.status
    if old is new:
        return False
    ticket.status, ticket.updated_at = new, now
    ticket.resolved_at = now if new is TicketStatus.RESOLVED else None
    ticket.closed_at = now if new is TicketStatus.CLOSED else None
    add_event(session, ticket, "status_changed", now, actor, {"from": old.value, "to": new.value, "why": why, **data})
    _leave_hints(ticket, old, new, now)
    return True


def add_event(session: Session, ticket: Ticket, kind: str, at: datetime, actor: str, data: dict[str, Any]) -> None:
    """Record an event on a case whose row is in the database already. Inserted at once on the
    session's connection, outside the ORM's flush (nothing reads events back as objects in the
    transaction that writes them); every event goes this way, so ids keep the order events
    happened in, which timelines and the SLA history read them by."""
    session.connection().execute(_INSERT_EVENT, dict(ticket_id=ticket.id, kind=kind, at=at, actor=actor, data=data))


_INSERT_EVENT = insert(Event.__table__)


def _leave_hints(ticket: Ticket, old: TicketStatus, new: TicketStatus, now: datetime) -> None:
    """Times that are never later than the real ones: a sweep looking early just works them out."""
    if new is TicketStatus.PENDING:
        ticket.followup_attempts, ticket.next_followup_at = 0, now
    elif old is TicketStatus.PENDING:
        ticket.next_followup_at = None
    if new is TicketStatus.OPEN:
        ticket.next_sev1_reminder_at = None
        if ticket.first_response_at is None and ticket.first_response_due is not None and ticket.sla_warned_at is None:
            ticket.sla_warn_at = now
