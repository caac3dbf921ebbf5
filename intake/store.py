"""Stage 1, receive: raw bytes into an inbound row. This commit is the durability point."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email import policy

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from intake.crashpoints import crash_point
from models import InboundMail
from models.db import unit_of_work


@dataclass(frozen=True)
class Envelope:
    """How the mail reached us, whichever door it came through."""
    door: str                       # smtp | imap | import
    mailbox: str
    sender: str | None = None
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    duplicate: bool


_HEADERS = BytesHeaderParser(policy=policy.compat32)


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID, read from the header block only (cheap, and never raises)."""
    try:
        value = _HEADERS.parsebytes(raw[:65536]).get("Message-ID")
    except Exception:       # header block unreadable: dedupe falls back to the bytes' hash
        return None
    if value is None:
        return None
    text = str(value).strip().strip("<>").strip()
    if not text or any(c.isspace() for c in text):
        return None
    return text[:255]


def store(sessions: sessionmaker[Session], raw: bytes, envelope: Envelope, now: datetime) -> Stored:
    """Commit the raw mail unless it is already here (same Message-ID or same bytes)."""
    digest = hashlib.sha256(raw).hexdigest()
    message_id = header_message_id(raw)
    existing = _find_existing(sessions, digest, message_id)
    if existing is not None:
        return Stored(existing, duplicate=True)
    try:
        with unit_of_work(sessions) as session:
            row = InboundMail(received_at=now, door=envelope.door, mailbox=envelope.mailbox,
                              envelope_sender=envelope.sender, envelope_recipients=list(envelope.recipients),
                              raw=raw, sha256=digest, message_id=message_id)
            session.add(row)
            session.flush()
            crash_point("before_commit")
        return Stored(row.id, duplicate=False)
    except IntegrityError:      # stored a moment ago by another session or instance
        found = _find_existing(sessions, digest, message_id)
        if found is None:
            raise
        return Stored(found, duplicate=True)


def _find_existing(sessions: sessionmaker[Session], digest: str, message_id: str | None) -> int | None:
    condition = InboundMail.sha256 == digest
    if message_id:
        condition = or_(condition, InboundMail.message_id == message_id)
    with sessions() as session:
        return session.scalar(select(InboundMail.id).where(condition).limit(1))
