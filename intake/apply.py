"""Stage 6, apply: a decision becomes rows (ticket, message, attachments, events, outbox) in the
caller's one transaction."""
from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from intake.config import Config
from intake.decide import NewCase, Refusal
from intake.lifecycle import add_event, change_status
from intake.parse import ParsedEmail
from intake.screen import Screening
from intake.timetable import NO_HISTORY, reschedule
from models import Attachment, Direction, InboundMail, Message, Outcome, Participant, Ticket, TicketStatus
from models.inserts import attach_loaded, insert_row
from notifications.message import can_address
from notifications.outbox import Outbox, Outgoing, may_answer
from routing.severity import SeverityReading
from routing.sla import Duration
from routing.subject import remove_case_references, strip_reply_prefixes

SYSTEM = "system"


@dataclass(frozen=True)
class Context:
    config: Config
    outbox: Outbox
    now: datetime
    breaches: list[int] = field(default_factory=list)   # cases whose SLA breach this mail's processing noticed

    def local(self, when: datetime | None) -> datetime | None:
        return when.astimezone(ZoneInfo(self.config.timezone)) if when else None


def new_token() -> str:
    """An unguessable reply token that survives MTAs lower-casing local parts."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def reply_address(config: Config, ticket: Ticket) -> str:
    local = config.from_address.partition("@")[0]
    return f"{local}+{ticket.reply_token}@{config.reply_domain}"


def open_case(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, decision: NewCase,
              screening: Screening, previous: Ticket | None = None) -> tuple[Ticket, Message]:
    actions = decision.routing.actions
    subject = remove_case_references(strip_reply_prefixes(mail.subject), ctx.config.case_prefix) or "(no subject)"
    message = _received(inbound, mail, "auto_reply" if screening.automatic else "customer")
    ticket = Ticket(subject=subject, severity=decision.severity, status=TicketStatus.OPEN,
                    queue=actions.queue or "triage", assignee=actions.assignee, tags=list(actions.tags),
                    requester=mail.sender.email, requester_name=mail.sender.name,
                    organization=decision.organization.name if decision.organization else None,
                    tier=decision.tier.name if decision.tier else None, mailbox=inbound.mailbox,
                    reply_token=new_token(), created_at=ctx.now, updated_at=ctx.now,
                    first_response_due=decision.due, previous_ticket_id=previous.id if previous else None,
                    notify=list(actions.notify), participants=_participants(ctx, mail), messages=[message])
    # Inserted with its times: the reschedule before commit finds them standing, and no UPDATE follows.
    reschedule(session, ctx.config, ticket, ctx.now, NO_HISTORY)
    # Written at once (models/inserts.py): the acknowledgment and the notifications name the case by
    # its id, and the mail goes in before the acknowledgment's copy (messages are read by id).
    insert_row(session, ticket)
    for participant in ticket.participants:
        participant.ticket_id = ticket.id
        insert_row(session, participant)
    attach_loaded(session, ticket, *ticket.participants, *_insert_message(session, ticket, message))
    inbound.ticket_id = ticket.id
    add_event(session, ticket, "created", ctx.now, mail.sender.email, {
        "rule": decision.routing.rule, "severity": decision.severity, "tag": decision.reading.describe(),
        "tags_seen": list(decision.reading.tags), "queue": ticket.queue,
        "due": ticket.first_response_due.isoformat() if ticket.first_response_due else None,
        "previous": previous.ref(ctx.config.case_prefix) if previous else None})
    if not screening.automatic:
        _acknowledge(session, ctx, ticket, mail, inbound)
    return ticket, message


def _participants(ctx: Context, mail: ParsedEmail) -> list[Participant]:
    """The requester and the CC'd addresses, inserted with the case: its collection is then
    loaded already, and answers read it without a query."""
    own = ctx.config.own_addresses
    seen = {mail.sender.email}
    participants = [Participant(address=mail.sender.email, name=mail.sender.name, role="requester")]
    for cc in mail.cc:
        if cc.email and cc.email not in seen and cc.email not in own and not _ours(ctx.config, cc.email):
            seen.add(cc.email)
            participants.append(Participant(address=cc.email, name=cc.name, role="cc"))
    return participants


def _ours(config: Config, address: str) -> bool:
    return address.rpartition("@")[2] == config.reply_domain.lower() and "+" in address.partition("@")[0]


def _acknowledge(session: Session, ctx: Context, ticket: Ticket, mail: ParsedEmail, inbound: InboundMail) -> None:
    recipients = [p.address for p in ticket.participants]
    if not inbound.auto_answer:
        add_event(session, ticket, "acknowledgment_suppressed", ctx.now, SYSTEM, {"reason": "imported"})
        return
    if not can_address(ticket.requester):
        add_event(session, ticket, "acknowledgment_suppressed", ctx.now, SYSTEM, {"reason": "address_not_writable"})
        return
    if not may_answer(session, ticket.requester, ctx.now, ctx.config.auto_replies_per_hour):
        add_event(session, ticket, "acknowledgment_suppressed", ctx.now, SYSTEM, {"reason": "rate_limit"})
        return
    ctx.outbox.enqueue(session, Outgoing(
        kind="acknowledgment", dedupe_key=f"acknowledgment:{inbound.id}", to=(recipients[0],),
        cc=tuple(recipients[1:]), ticket_id=ticket.id, inbound_id=inbound.id,
        in_reply_to=mail.message_id, references=(*mail.references, *([mail.message_id] if mail.message_id else [])),
        reply_to=reply_address(ctx.config, ticket),
        context={"ticket": ticket_context(ctx, ticket), "recipient_name": ticket.requester_name}), ctx.now)


def ticket_context(ctx: Context, ticket: Ticket) -> dict[str, Any]:
    return {"ref": ticket.ref(ctx.config.case_prefix), "subject": ticket.subject, "severity": ticket.severity,
            "severity_name": ctx.config.level_name(ticket.severity), "status": ticket.status.value,
            "due": ctx.local(ticket.first_response_due), "reply_address": reply_address(ctx.config, ticket)}


def add_reply(session: Session, ctx: Context, ticket: Ticket, inbound: InboundMail, mail: ParsedEmail,
              screening: Screening, reading: SeverityReading) -> Message:
    """A customer-side mail on an existing case: recorded, and it sets a waiting case back to open."""
    message = add_message(session, ticket, inbound, mail, "auto_reply" if screening.automatic else "customer")
    ticket.updated_at = ctx.now
    if screening.automatic:
        return message
    change_status(session, ticket, TicketStatus.OPEN, mail.sender.email, ctx.now, "customer reply")
    if reading.outcome == "tagged" and reading.level != ticket.severity:
        add_event(session, ticket, "severity_change_requested", ctx.now, mail.sender.email,
                  {"current": ticket.severity, "requested": reading.level, "tag": reading.describe()})
    return message


def within_reopen_window(ticket: Ticket, now: datetime, window: Duration) -> bool:
    """Pending and resolved cases always take replies; closed ones only inside the window."""
    if ticket.status is not TicketStatus.CLOSED:
        return True
    return now <= reopen_until(ticket.closed_at or ticket.updated_at, window)


def reopen_until(closed: datetime, window: Duration) -> datetime:
    """The last moment a reply reopens a case closed at `closed` (the closing notice names it)."""
    return closed + timedelta(seconds=_window_seconds(window))


def _window_seconds(window: Duration) -> float:
    per_unit = {"d": 86400, "h": 3600, "m": 60, "bd": 86400}
    return window.amount * per_unit[window.unit]


def refuse(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, refusal: Refusal,
           screening: Screening) -> None:
    """Keep the mail as a rejection or hold record; answer the sender when that helps and is safe."""
    inbound.outcome, inbound.reason, inbound.detail = refusal.outcome, refusal.reason, refusal.detail
    if refusal.reason == "quota_exceeded" and refusal.organization is not None:
        _notify_quota(session, ctx, inbound, mail, refusal)
    if refusal.answer is None or screening.automatic or not mail.sender.email:
        return
    if not inbound.auto_answer:
        inbound.detail = f"{refusal.detail}; not answered (imported)"
        return
    if not can_address(mail.sender.email):
        inbound.detail = f"{refusal.detail}; not answered (an address outgoing mail cannot carry)"
        return
    if not may_answer(session, mail.sender.email, ctx.now, ctx.config.auto_replies_per_hour):
        inbound.detail = f"{refusal.detail}; answer suppressed by the rate limit"
        return
    reading = refusal.reading
    ctx.outbox.enqueue(session, Outgoing(
        kind=refusal.answer, dedupe_key=f"{refusal.answer}:{inbound.id}", to=(mail.sender.email,),
        inbound_id=inbound.id, in_reply_to=mail.message_id,
        context={"reason": refusal.reason, "tags": list(reading.tags) if reading else [],
                 "original_subject": strip_reply_prefixes(mail.subject), "mailbox": inbound.mailbox,
                 "recipient_name": mail.sender.name, "forum_url": _forum_url(ctx, refusal)}), ctx.now)


def _forum_url(ctx: Context, refusal: Refusal) -> str:
    org = refusal.organization
    tier = ctx.config.tiers.get(org.tier) if org else None
    return tier.forum_url if tier else ""


def _notify_quota(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, refusal: Refusal) -> None:
    org = refusal.organization
    assert org is not None
    contact = org.contact or (ctx.config.staff[0].address if ctx.config.staff else None)
    if contact is None:
        return
    tier = ctx.config.tiers[org.tier]
    ctx.outbox.enqueue(session, Outgoing(
        kind="quota_exceeded", dedupe_key=f"quota_exceeded:{inbound.id}", to=(contact,), inbound_id=inbound.id,
        context={"organization": org.name, "used": refusal.incidents_used, "allowed": tier.incidents_per_year,
                 "contract_year_start": org.contract_year_start(ctx.now), "sender": mail.sender.email,
                 "original_subject": mail.subject}), ctx.now)


def add_message(session: Session, ticket: Ticket, inbound: InboundMail, mail: ParsedEmail, kind: str) -> Message:
    message = _received(inbound, mail, kind)
    attach_loaded(session, *_insert_message(session, ticket, message))
    inbound.ticket_id = ticket.id
    return message


def _insert_message(session: Session, ticket: Ticket, message: Message) -> list[Message | Attachment]:
    """Write a received message and its attachments at once (models/inserts.py); returns the
    objects, for the caller to attach with the rest of what it wrote."""
    message.ticket_id = ticket.id
    insert_row(session, message)
    for attachment in message.attachments:
        attachment.message_id = message.id
        insert_row(session, attachment)
    return [message, *message.attachments]


def _received(inbound: InboundMail, mail: ParsedEmail, kind: str) -> Message:
    """The mail as a message on a case, with its attachments; the caller puts it on the case."""
    message = Message(inbound_id=inbound.id, direction=Direction.IN, author=mail.sender.email, kind=kind,
                      subject=mail.subject, body_text=mail.body_text, message_id=mail.message_id,
                      created_at=inbound.received_at)
    message.attachments = [Attachment(filename=part.filename, content_type=part.content_type, size=part.size,
                                      data=part.payload) for part in mail.attachments]
    return message


def record_bounce(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail,
                  ticket: Ticket | None) -> Message | None:
    inbound.outcome, inbound.reason = Outcome.BOUNCE, "matched" if ticket else "unmatched"
    inbound.detail = f"delivery report for {mail.dsn_original_message_id or 'an unknown message'}"
    if ticket is None:
        return None
    message = add_message(session, ticket, inbound, mail, "bounce")
    add_event(session, ticket, "bounce", ctx.now, mail.sender.email or "mailer-daemon",
              {"original_message_id": mail.dsn_original_message_id, "flagged": True})
    return message
