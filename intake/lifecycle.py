"""Case status changes: the one place that moves a case between open, pending, resolved and
closed, so every change is recorded as an event with its actor and reason."""
from __future__ import annotations

from datetime import datetime

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
    session.add(Event(ticket_id=ticket.id, kind="status_changed", at=now, actor=actor,
                      data={"from": old.value, "to": new.value, "why": why, **data}))
    return True
