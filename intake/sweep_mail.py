"""The mail the sweeps send: automatic mail to the customer side of a case, and notices to staff
(the SLA breach notice also when staff take an overdue case out of `open` first)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.apply import SYSTEM, Context, add_event, reply_address, ticket_context
from intake.config import Config
from intake.staff import is_staff, issue_token, queue_staff
from intake.timetable import load_history, sla_of
from models import Message, Ticket, TicketStatus
from notifications.outbox import Outgoing

CUSTOMER_VISIBLE = ("customer", "acknowledgment", "staff_reply", "followup", "closing_notice")
THREAD_DEPTH = 10           # References carries the case's latest message ids, not its whole history


def customer_mail(session: Session, ctx: Context, ticket: Ticket, kind: str, dedupe_key: str,
                  context: dict[str, Any]) -> tuple[str, ...]:
    """To the requester with the participants in copy, from the support address, threaded to the case.

    Automatic (it answers nobody), so it is marked `Auto-Submitted: auto-generated`.
    """
    recipients = [p.address for p in sorted(ticket.participants, key=lambda p: (p.role != "requester", p.id))]
    thread = list(session.scalars(select(Message.message_id).where(
        Message.ticket_id == ticket.id, Message.kind.in_(CUSTOMER_VISIBLE), Message.message_id.is_not(None))
        .order_by(Message.id.desc()).limit(THREAD_DEPTH)))[::-1]
    ctx.outbox.enqueue(session, Outgoing(
        kind=kind, dedupe_key=dedupe_key, to=(recipients[0],), cc=tuple(recipients[1:]), ticket_id=ticket.id,
        in_reply_to=thread[-1] if thread else None, references=tuple(thread[:-1]),
        reply_to=reply_address(ctx.config, ticket), automatic=True, auto_submitted="auto-generated",
        context={"ticket": ticket_context(ctx, ticket), "recipient_name": ticket.requester_name, **context}), ctx.now)
    return tuple(recipients)


def staff_recipients(config: Config, ticket: Ticket) -> list[str]:
    """The routing rule's notify list plus the assignee; the queue's staff when that is empty."""
    chosen = list(dict.fromkeys(a.lower() for a in [*ticket.notify, *([ticket.assignee] if ticket.assignee else [])]))
    return chosen or queue_staff(config, ticket)


def staff_notice(session: Session, ctx: Context, ticket: Ticket, kind: str, dedupe_key: str,
                 context: dict[str, Any]) -> tuple[str, ...]:
    """One notice per recipient; staff members get their own secret reply address, as for any notification."""
    recipients = staff_recipients(ctx.config, ticket)
    for address in recipients:
        ctx.outbox.enqueue(session, Outgoing(
            kind=kind, dedupe_key=f"{dedupe_key}:{address}", to=(address,), ticket_id=ticket.id,
            record_on_ticket=False, automatic=False, auto_submitted="auto-generated",
            reply_to=issue_token(session, ctx, ticket, address) if is_staff(ctx.config, address) else None,
            context={"ticket": ticket_context(ctx, ticket), "recipient_name": _name(ctx.config, address),
                     "requester": ticket.requester, **context}), ctx.now)
    return tuple(recipients)


def _name(config: Config, address: str) -> str:
    return next((m.name for m in config.staff if m.address == address), "")


def record_breach(session: Session, ctx: Context, ticket: Ticket, due: datetime) -> tuple[str, ...]:
    """The first-response target missed: recorded on the case and told to its staff, once."""
    ticket.sla_breached_at = ctx.now
    add_event(session, ticket, "sla_breached", ctx.now, SYSTEM, {"due": due.isoformat()})
    return staff_notice(session, ctx, ticket, "sla_breach", f"sla_breach:{ticket.id}",
                        {"overdue": describe_span(ctx.now - due)})


def breach_left_unnoticed(session: Session, ctx: Context, ticket: Ticket) -> None:
    """A case staff took out of `open`, unanswered, after its deadline and before the SLA sweep
    noticed (the sweep looks at open cases only): the breach is recorded and told now, as the sweep
    would have done. Pausing the clock after the deadline does not undo the breach (routing/sla.py)."""
    due = ticket.first_response_due
    if (ticket.status is TicketStatus.OPEN or ticket.first_response_at is not None
            or ticket.sla_breached_at is not None or due is None or due > ctx.now):
        return
    state = sla_of(ctx.config, ticket, load_history(session, ticket).changes, ctx.now)
    if state is not None and state.breached and state.due is not None:
        record_breach(session, ctx, ticket, state.due)
        ctx.breaches.append(ticket.id)      # counted once committed (intake.pipeline.process)


def describe_span(span: timedelta) -> str:
    """`2 h 05 min`, `3 d 4 h`: for people reading a notice, to the minute."""
    minutes = max(int(span.total_seconds() // 60), 0)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    return f"{days} d {hours} h" if days else f"{hours} h {minutes:02d} min"
