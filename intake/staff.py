"""Staff by email: who may change a case, what their commands do, and who is told.

A staff mail changes a case only when it is trusted: it arrived on a valid staff token
address for that case, or the trusted receiving host's Authentication-Results shows an
aligned DKIM/SPF pass. Anything else claiming to be staff is kept as a customer-side
message, flagged, and staff are told.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from intake.apply import Context, add_event, add_message, reply_address, ticket_context
from intake.config import Config
from intake.correlate import Thread, reply_tokens
from intake.lifecycle import change_status
from intake.parse import ParsedEmail, visible_text
from models import Event, InboundMail, Message, Participant, StaffToken, Ticket, TicketStatus
from notifications.outbox import Outgoing
from routing.commands import HELP, Command, CommandError, Vocabulary, parse_commands
from routing.policy import domain_of
from routing.trust import authentication_passes

TOKEN_BYTES = 20


@dataclass(frozen=True)
class StaffMail:
    ticket: Ticket
    actor: str           # the staff member the mail speaks for
    trusted: bool
    why: str             # token | authentication_results | why it is not trusted


def _hash(token: str) -> str:
    return hashlib.sha256(token.lower().encode()).hexdigest()


def issue_token(session: Session, ctx: Context, ticket: Ticket, staff_address: str) -> str:
    """A fresh secret reply address for one staff member on one case; only its hash is stored
    (inserted at once, outside the ORM's flush: nothing reads it back as an object)."""
    token = "s" + secrets.token_hex(TOKEN_BYTES)
    session.connection().execute(insert(StaffToken.__table__), dict(
        ticket_id=ticket.id, staff_address=staff_address, token_hash=_hash(token), created_at=ctx.now))
    local = ctx.config.from_address.partition("@")[0]
    return f"{local}+{token}@{ctx.config.reply_domain}"


def revoke_tokens(session: Session, ticket_id: int, now: datetime, staff_address: str | None = None) -> int:
    """Invalidate the case's staff reply addresses (one member's, or all); returns how many."""
    query = update(StaffToken).where(StaffToken.ticket_id == ticket_id, StaffToken.revoked_at.is_(None))
    if staff_address is not None:
        query = query.where(StaffToken.staff_address == staff_address.lower())
    return session.execute(query.values(revoked_at=now)).rowcount or 0


def is_staff(config: Config, address: str) -> bool:
    return any(member.address == address.lower() for member in config.staff)


def classify(session: Session, config: Config, mail: ParsedEmail, recipients: tuple[str, ...],
             thread: Thread | None) -> StaffMail | None:
    """Is this a staff mail on a case, and may it change the case? None: not a staff mail."""
    addresses = recipients + tuple(a.email for a in mail.to + mail.cc)
    hashes = [_hash(t) for t in reply_tokens(addresses, config.reply_domain)]
    token = session.scalar(select(StaffToken).where(StaffToken.token_hash.in_(hashes)).limit(1)) if hashes else None
    if token is not None:
        ticket = session.get(Ticket, token.ticket_id)
        assert ticket is not None
        if token.revoked_at is not None or not is_staff(config, token.staff_address):
            return StaffMail(ticket, token.staff_address, False, "revoked_token")
        if thread is not None and thread.ticket.id != ticket.id:
            return StaffMail(thread.ticket, token.staff_address, False, "token_for_another_case")
        return StaffMail(ticket, token.staff_address, True, "token")
    if thread is None or not is_staff(config, mail.sender.email):
        return None
    if authentication_passes(mail.headers.get("authentication-results", ()), domain_of(mail.sender.email),
                             config.trusted_authserv_id):
        return StaffMail(thread.ticket, mail.sender.email, True, "authentication_results")
    return StaffMail(thread.ticket, mail.sender.email, False, "unauthenticated_staff_sender")


def record_suspect(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, staff: StaffMail) -> None:
    """A mail claiming staff authority it cannot prove: kept as a customer message, flagged, staff told.
    Anyone can forge a staff From, and a staff member's auto-responder answering the notice forges
    one too, so notices on one case are limited like automatic answers (`limits.auto_replies_per_hour`
    an hour); past that the event is still recorded, with `notified: false`."""
    message = add_message(session, staff.ticket, inbound, mail, "customer")
    recent = session.scalar(select(func.count(Event.id)).where(
        Event.ticket_id == staff.ticket.id, Event.kind == "suspected_spoofing",
        Event.at > ctx.now - timedelta(hours=1))) or 0
    notify = recent < ctx.config.auto_replies_per_hour
    add_event(session, staff.ticket, "suspected_spoofing", ctx.now, mail.sender.email,
              {"claimed": staff.actor, "why": staff.why, "message_id": mail.message_id, **({} if notify else
                                                                                        {"notified": False})})
    if notify:
        notify_staff(session, ctx, staff.ticket, inbound, message, "suspected_spoofing")


def apply_staff_mail(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail,
                     staff: StaffMail) -> None:
    """Commands all-or-nothing, then a note for staff or a relay to the customer."""
    ticket, actor = staff.ticket, staff.actor
    vocabulary = Vocabulary({lv.level for lv in ctx.config.levels}, {m.address for m in ctx.config.staff},
                            ctx.config.queues)
    parsed = parse_commands(visible_text(mail.body_text), actor, vocabulary)
    if isinstance(parsed, CommandError):
        add_message(session, ticket, inbound, mail, "staff_rejected")
        add_event(session, ticket, "commands_rejected", ctx.now, actor, {"line": parsed.line, "problem": parsed.problem})
        _command_error(session, ctx, ticket, inbound, actor, parsed)
        return
    add_event(session, ticket, "staff_mail", ctx.now, actor, {"trusted_by": staff.why})
    for command in parsed.commands:
        _apply(session, ctx, ticket, command, actor)
    if any(c.name == "note" for c in parsed.commands) or not parsed.body.strip():
        note = add_message(session, ticket, inbound, mail, "note")
        note.body_text, note.author = parsed.body, actor
        if parsed.body.strip():
            notify_staff(session, ctx, ticket, inbound, note, "note", exclude=actor)
        return
    _relay(session, ctx, ticket, inbound, mail, actor, parsed.body)


def _apply(session: Session, ctx: Context, ticket: Ticket, command: Command, actor: str) -> None:
    if command.name == "status":
        change_status(session, ticket, TicketStatus(command.argument), actor, ctx.now, "staff command")
    elif command.name == "close":
        change_status(session, ticket, TicketStatus.CLOSED, actor, ctx.now, "staff command", reason=command.argument)
    elif command.name == "reopen":
        change_status(session, ticket, TicketStatus.OPEN, actor, ctx.now, "staff command")
    elif command.name in ("severity", "assign", "queue"):
        field = {"severity": "severity", "assign": "assignee", "queue": "queue"}[command.name]
        value: object = int(command.argument) if field == "severity" else command.argument
        old = getattr(ticket, field)
        if old != value:
            setattr(ticket, field, value)
            add_event(session, ticket, f"{field}_changed", ctx.now, actor, {"from": old, "to": value})
    elif command.name in ("cc", "uncc"):
        _participant(session, ctx, ticket, command, actor)
    ticket.updated_at = ctx.now


def _participant(session: Session, ctx: Context, ticket: Ticket, command: Command, actor: str) -> None:
    existing = session.scalar(select(Participant).where(Participant.ticket_id == ticket.id,
                                                        Participant.address == command.argument))
    if command.name == "cc" and existing is None:
        session.add(Participant(ticket_id=ticket.id, address=command.argument, role="cc"))
        add_event(session, ticket, "participant_added", ctx.now, actor, {"address": command.argument})
    elif command.name == "uncc" and existing is not None and existing.role != "requester":
        session.delete(existing)
        add_event(session, ticket, "participant_removed", ctx.now, actor, {"address": command.argument})
    session.flush()
    session.expire(ticket, ["participants"])


def _relay(session: Session, ctx: Context, ticket: Ticket, inbound: InboundMail, mail: ParsedEmail,
           actor: str, body: str) -> None:
    """Send the staff text to the customer side from the support address, threaded to their last mail."""
    inbound.ticket_id = ticket.id
    customers = [p.address for p in ticket.participants]
    last = _last_customer_message_id(session, ticket)
    ctx.outbox.enqueue(session, Outgoing(
        kind="staff_reply", dedupe_key=f"staff_reply:{inbound.id}", to=(customers[0],), cc=tuple(customers[1:]),
        ticket_id=ticket.id, inbound_id=inbound.id, in_reply_to=last, references=(last,) if last else (),
        reply_to=reply_address(ctx.config, ticket), automatic=False, author=actor,
        context={"ticket": ticket_context(ctx, ticket), "body": body,
                 "staff_name": _staff_name(ctx.config, actor)}), ctx.now)
    if ticket.first_response_at is None:
        ticket.first_response_at = ctx.now
        add_event(session, ticket, "first_response", ctx.now, actor, {})


def _last_customer_message_id(session: Session, ticket: Ticket) -> str | None:
    return session.scalar(select(Message.message_id).where(
        Message.ticket_id == ticket.id, Message.kind == "customer", Message.message_id.is_not(None))
        .order_by(Message.id.desc()).limit(1))


def _staff_name(config: Config, address: str) -> str:
    return next((m.name for m in config.staff if m.address == address), "") or address


def _command_error(session: Session, ctx: Context, ticket: Ticket, inbound: InboundMail, actor: str,
                   error: CommandError) -> None:
    ctx.outbox.enqueue(session, Outgoing(
        kind="command_error", dedupe_key=f"command_error:{inbound.id}", to=(actor,), ticket_id=ticket.id,
        inbound_id=inbound.id, record_on_ticket=False, automatic=False, auto_submitted="auto-replied",
        reply_to=issue_token(session, ctx, ticket, actor),
        context={"ticket": ticket_context(ctx, ticket), "line": error.line, "problem": error.problem,
                 "commands": list(HELP)}), ctx.now)


def queue_staff(config: Config, ticket: Ticket) -> list[str]:
    """The staff of the case's queue: members listing it, or every member when none do."""
    listed = [m.address for m in config.staff if ticket.queue in m.queues]
    return listed or [m.address for m in config.staff]


def notify_staff(session: Session, ctx: Context, ticket: Ticket, inbound: InboundMail, message: Message,
                 event: str, exclude: str | None = None) -> None:
    """One notification per staff member, each with its own secret reply address; on a new case
    the routing rule's `notify` addresses get one too, without a reply address (they are not staff).
    Imported mail (answers switched off) is history, not news: nobody is notified."""
    if not inbound.auto_answer:
        return
    staff = queue_staff(ctx.config, ticket)
    watchers = [a for a in ticket.notify if a.lower() not in staff] if event == "new_case" else []
    for address in [*staff, *watchers]:
        if address == exclude:
            continue
        is_staff_member = address in staff
        ctx.outbox.enqueue(session, Outgoing(
            kind="staff_notification", dedupe_key=f"staff_notification:{inbound.id}:{event}:{address}",
            to=(address,), ticket_id=ticket.id, inbound_id=inbound.id, record_on_ticket=False,
            automatic=False, auto_submitted="auto-generated",
            reply_to=issue_token(session, ctx, ticket, address) if is_staff_member else None,
            context={"ticket": ticket_context(ctx, ticket), "event": event, "author": message.author,
                     "body": visible_text(message.body_text), "requester": ticket.requester,
                     "participants": [p.address for p in ticket.participants], "commands": list(HELP),
                     "can_reply": is_staff_member}), ctx.now)
