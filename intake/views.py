"""Read-only views for the CLI: the JSON shapes of PRODUCT.md §8 (a contract: tools rely on them)."""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from intake.config import Config
from intake.sla_report import sla_view
from models import InboundMail, InboundStatus, Message, OutboxMail, OutboxStatus, Outcome, Ticket, TicketStatus, utcnow


def iso(when: datetime | None, tz: str) -> str | None:
    return when.astimezone(ZoneInfo(tz)).isoformat() if when else None


def ticket_summary(ticket: Ticket, config: Config, message_count: int) -> dict[str, Any]:
    tz = config.timezone
    return {
        "ref": ticket.ref(config.case_prefix), "subject": ticket.subject, "severity": ticket.severity,
        "status": ticket.status.value, "queue": ticket.queue, "assignee": ticket.assignee,
        "requester": ticket.requester, "participants": [p.address for p in ticket.participants],
        "organization": ticket.organization, "tier": ticket.tier, "tags": list(ticket.tags),
        "created_at": iso(ticket.created_at, tz), "first_response_due": iso(ticket.first_response_due, tz),
        "first_response_at": iso(ticket.first_response_at, tz), "message_count": message_count,
        "previous": f"{config.case_prefix}-{ticket.previous_ticket_id}" if ticket.previous_ticket_id else None,
    }


def list_tickets(session: Session, config: Config, status: str | None = None) -> list[dict[str, Any]]:
    counts = select(Message.ticket_id, func.count(Message.id).label("n")).group_by(Message.ticket_id).subquery()
    query = (select(Ticket, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.ticket_id == Ticket.id)
             .options(selectinload(Ticket.participants)).order_by(Ticket.id))
    if status:
        query = query.where(Ticket.status == TicketStatus(status))
    return [ticket_summary(t, config, n) for t, n in session.execute(query)]


def parse_ref(ref: str, prefix: str) -> int | None:
    m = re.fullmatch(rf"(?:{re.escape(prefix)}-#?)?(\d+)", ref.strip(), re.IGNORECASE)
    return int(m.group(1)) if m else None


def show_ticket(session: Session, config: Config, ref: str, now: datetime | None = None) -> dict[str, Any] | None:
    number = parse_ref(ref, config.case_prefix)
    ticket = session.get(Ticket, number) if number is not None else None
    if ticket is None:
        return None
    tz = config.timezone
    view = ticket_summary(ticket, config, len(ticket.messages))
    view["messages"] = [{"direction": m.direction.value, "author": m.author, "kind": m.kind, "subject": m.subject,
                         "body_text": m.body_text, "message_id": m.message_id, "created_at": iso(m.created_at, tz),
                         "attachments": [{"filename": a.filename, "content_type": a.content_type, "size": a.size}
                                         for a in m.attachments]}
                        for m in ticket.messages]
    view["events"] = [{"kind": e.kind, "at": iso(e.at, tz), "actor": e.actor, "data": e.data} for e in ticket.events]
    view["sla"] = sla_view(session, config, ticket, now or utcnow())
    view["followup"] = {"attempts": ticket.followup_attempts, "next_at": iso(ticket.next_followup_at, tz)}
    return view


def list_inbound(session: Session, config: Config, outcome: Outcome | None = None,
                 status: InboundStatus | None = None) -> list[dict[str, Any]]:
    """Rejection, hold and quarantine records: `id, reason, sender, subject, message_id, received_at`."""
    query = select(InboundMail).order_by(InboundMail.id)
    if outcome is not None:
        query = query.where(InboundMail.outcome == outcome, InboundMail.status == InboundStatus.PROCESSED)
    if status is not None:
        query = query.where(InboundMail.status == status)
    return [{"id": m.id, "reason": m.error if status is InboundStatus.QUARANTINED else m.reason,
             "sender": m.sender or m.envelope_sender, "subject": m.subject, "message_id": m.message_id,
             "received_at": iso(m.received_at, config.timezone), "detail": m.detail, "door": m.door,
             "mailbox": m.mailbox} for m in session.scalars(query)]


def list_outbox(session: Session, config: Config, status: str | None = None) -> list[dict[str, Any]]:
    query = select(OutboxMail).order_by(OutboxMail.id)
    if status:
        query = query.where(OutboxMail.status == OutboxStatus(status))
    tz = config.timezone
    return [{"id": o.id, "kind": o.kind, "status": o.status.value, "recipients": list(o.recipients),
             "subject": o.subject, "message_id": o.message_id, "attempts": o.attempts,
             "next_attempt_at": iso(o.next_attempt_at, tz), "last_error": o.last_error,
             "created_at": iso(o.created_at, tz), "sent_at": iso(o.sent_at, tz),
             "ticket": f"{config.case_prefix}-{o.ticket_id}" if o.ticket_id else None}
            for o in session.scalars(query)]
