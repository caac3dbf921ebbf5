"""The transactional outbox: outgoing mail is rendered and stored in the caller's transaction.

Nothing is sent here. A row exists only if the change that caused it committed, and its
unique dedupe key makes a retried step enqueue nothing twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import Direction, Message, OutboxMail
from notifications.message import build_message, can_address, new_message_id
from notifications.render import Renderer

log = logging.getLogger("intake.outbox")


@dataclass(frozen=True)
class Outgoing:
    kind: str                                   # the template name
    dedupe_key: str
    to: tuple[str, ...]
    context: Mapping[str, Any]
    cc: tuple[str, ...] = ()
    ticket_id: int | None = None
    inbound_id: int | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_to: str | None = None
    automatic: bool = True                      # an automatic answer: Auto-Submitted, rate limited
    auto_submitted: str | None = None           # the header value when not "auto-replied" (notifications)
    author: str | None = None                   # who the copy on the case is from (default: the support address)
    record_on_ticket: bool = True               # keep a copy among the case's messages (threading)
    extra: Mapping[str, str] = field(default_factory=dict)


class Outbox:
    def __init__(self, renderer: Renderer, from_address: str, base_context: Mapping[str, Any]) -> None:
        self.renderer = renderer
        self.from_address = from_address
        self.domain = from_address.rpartition("@")[2]
        self.base_context = dict(base_context)

    def enqueue(self, session: Session, out: Outgoing, now: datetime) -> int | None:
        """Render and store one mail; returns its row id, or None if this dedupe key was enqueued before
        (or no To address can be written: `_addressable`).

        The row, and the copy on the case, are inserted at once on the session's connection, outside
        the ORM: nothing reads them back as objects, so they skip the flush's bookkeeping, and the
        rate-limit query sees the row without an autoflush (which would write the case in several
        small flushes). The dedupe key is checked by the INSERT itself (``ON CONFLICT DO NOTHING``):
        one statement, one round trip on PostgreSQL, at the price of rendering a mail that a retried
        step then drops. Received messages are inserted at once too (intake/apply.py), so the copy's
        id comes after theirs (a case's messages are read by id)."""
        out = _addressable(out)
        if not out.to:
            return None
        connection = session.connection()
        rendered = self.renderer.render(out.kind, {**self.base_context, **out.context})
        message_id = new_message_id(self.domain)
        raw = build_message(from_addr=self.from_address, to=out.to, cc=out.cc, subject=rendered.subject,
                            text=rendered.text, html=rendered.html, message_id=message_id,
                            in_reply_to=out.in_reply_to, references=out.references, reply_to=out.reply_to,
                            auto_submitted=out.auto_submitted or ("auto-replied" if out.automatic else None),
                            extra_headers=out.extra)
        inserted = connection.execute(_INSERT_NEW_OUTBOX[connection.dialect.name], dict(
            dedupe_key=out.dedupe_key, kind=out.kind, ticket_id=out.ticket_id, inbound_id=out.inbound_id,
            recipient=out.to[0].lower(), recipients=[*out.to, *out.cc], sender=self.from_address,
            automatic=out.automatic, message_id=message_id.strip("<>"), subject=rendered.subject,
            raw=raw, next_attempt_at=now, created_at=now)).first()
        if inserted is None:    # enqueued before: a retried step
            return None
        if out.ticket_id is not None and out.record_on_ticket:
            connection.execute(_INSERT_MESSAGE, dict(
                ticket_id=out.ticket_id, inbound_id=None, direction=Direction.OUT, author=out.author or self.from_address,
                kind=out.kind, subject=rendered.subject, body_text=rendered.text, message_id=message_id.strip("<>"),
                created_at=now))
        return int(inserted.id)


def _addressable(out: Outgoing) -> Outgoing:
    """`out` without the addresses outgoing mail cannot carry (`can_address`), logged. A mail whose
    every To address is such is not sent at all: what caused it (a case, a rejection) stands."""
    to, cc = tuple(filter(can_address, out.to)), tuple(filter(can_address, out.cc))
    if len(to) + len(cc) == len(out.to) + len(out.cc):
        return out
    left_out = [address for address in (*out.to, *out.cc) if address not in to + cc]
    log.warning("outbox.not_addressable", extra={"fields": {
        "kind": out.kind, "ticket": out.ticket_id, "inbound": out.inbound_id, "left_out": left_out,
        "sent": bool(to)}})
    return replace(out, to=to, cc=cc)


_OUTBOX = OutboxMail.__table__
_INSERT_NEW_OUTBOX = {     # by dialect: ON CONFLICT is not in the generic insert()
    "postgresql": postgresql.insert(_OUTBOX).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_OUTBOX.c.id),
    "sqlite": sqlite.insert(_OUTBOX).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_OUTBOX.c.id),
}
_INSERT_MESSAGE = insert(Message.__table__)     # the copy on the case: nothing reads it back as an object
_AUTOMATIC_SINCE = select(func.count()).select_from(_OUTBOX).where(
    _OUTBOX.c.recipient == bindparam("recipient"), _OUTBOX.c.automatic.is_(True),
    _OUTBOX.c.created_at >= bindparam("since"))


def automatic_answers_sent(session: Session, recipient: str, since: datetime) -> int:
    """How many automatic answers went to this address since `since` (the rate limit's count).
    A Core query on the session's connection: rows are never pending (enqueue inserts at once),
    so it needs no autoflush, nor the ORM's per-query work."""
    return session.connection().execute(
        _AUTOMATIC_SINCE, {"recipient": recipient.lower(), "since": since}).scalar() or 0


def may_answer(session: Session, recipient: str, now: datetime, per_hour: int) -> bool:
    return automatic_answers_sent(session, recipient, now - timedelta(hours=1)) < per_hour
