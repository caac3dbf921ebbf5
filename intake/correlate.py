"""Stage 4, correlate: which existing case a mail belongs to, in the order PRODUCT.md §3 gives.

1. a per-case reply address (support+<token>@reply_domain) among the recipients;
2. In-Reply-To / References naming a Message-ID we stored or sent (staff notifications included);
3. a case reference in the subject, honoured only from an address already on that case.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from intake.parse import ParsedEmail
from models import Message, OutboxMail, Participant, Ticket
from routing.subject import find_case_numbers

MAX_REFERENCES = 50


@dataclass(frozen=True)
class Thread:
    ticket: Ticket
    via: str       # token | in_reply_to | subject


def reply_tokens(addresses: tuple[str, ...], reply_domain: str) -> list[str]:
    """Tokens from `local+token@reply_domain` addresses, in order."""
    tokens = []
    for address in addresses:
        local, _, domain = address.lower().rpartition("@")
        if domain == reply_domain.lower() and "+" in local:
            tokens.append(local.split("+", 1)[1])
    return tokens


def find_thread(session: Session, mail: ParsedEmail, recipients: tuple[str, ...], reply_domain: str,
                case_prefix: str) -> Thread | None:
    addresses = recipients + tuple(a.email for a in mail.to + mail.cc)
    tokens = reply_tokens(addresses, reply_domain)
    if tokens:
        ticket = session.scalar(select(Ticket).where(Ticket.reply_token.in_(tokens)).limit(1))
        if ticket is not None:
            return Thread(ticket, "token")
    ids = list(dict.fromkeys(mail.in_reply_to + tuple(reversed(mail.references))))[:MAX_REFERENCES]
    if ids:
        ticket = session.scalar(select(Ticket).join(Message).where(Message.message_id.in_(ids))
                                .order_by(Message.id.desc()).limit(1))
        ticket = ticket or session.scalar(select(Ticket).join(OutboxMail, OutboxMail.ticket_id == Ticket.id)
                                          .where(OutboxMail.message_id.in_(ids)).limit(1))
        if ticket is not None:
            return Thread(ticket, "in_reply_to")
    numbers = find_case_numbers(mail.subject, case_prefix)
    if numbers:
        ticket = session.scalar(select(Ticket).join(Participant).where(
            Ticket.id.in_(numbers), Participant.address == mail.sender.email).limit(1))
        if ticket is not None:
            return Thread(ticket, "subject")
    return None
