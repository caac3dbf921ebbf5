"""Stage 1, receive: raw bytes into an inbound row. This commit is the durability point."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from email.parser import BytesHeaderParser
from email import policy

from sqlalchemy import and_, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from intake.crashpoints import crash_point
from intake.header_text import MAX_MESSAGE_ID
from models import InboundMail, blobs
from models.db import unit_of_work


@dataclass(frozen=True)
class ImapOrigin:
    """Where the IMAP door found a mail: a refetch (after a crash before the flag) is a duplicate
    by this even when the server renders different bytes and there is no Message-ID."""
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Envelope:
    """How the mail reached us, whichever door it came through."""
    door: str                       # smtp | imap | import
    mailbox: str
    sender: str | None = None
    recipients: tuple[str, ...] = ()
    auto_answer: bool = True        # False: the sender gets no automatic answer (`intake import` default)
    imap: ImapOrigin | None = None

    @classmethod
    def from_headers(cls, raw: bytes, door: str, mailbox: str, *, auto_answer: bool = True,
                     imap: ImapOrigin | None = None) -> "Envelope":
        """For doors without an SMTP envelope (IMAP, import): what the delivering MTA recorded in
        `Return-Path`, `Delivered-To` and `X-Original-To`; the mailbox when nothing was recorded."""
        sender: str | None = None
        recipients: tuple[str, ...] = ()
        try:
            headers = _HEADERS.parsebytes(_header_block(raw))
            path = headers.get("Return-Path")
            sender = str(path).strip().strip("<>").strip() if path is not None else None
            delivered = [str(v) for name in ("Delivered-To", "X-Original-To") for v in headers.get_all(name, [])]
            recipients = tuple(dict.fromkeys(v.strip().strip("<>").lower() for v in delivered if "@" in v))
        except Exception:       # unreadable header block: the parse stage decides what the mail is
            pass
        return cls(door, mailbox, sender, recipients or (mailbox,), auto_answer, imap)


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    duplicate: bool


_HEADERS = BytesHeaderParser(policy=policy.compat32)
_HEADER_LIMIT = 65536
_EMPTY_LINE_STARTS = (b"\n\n", b"\n\r", b"\r\r")     # the parser splits lines at CRLF, CR and LF


def _header_block(raw: bytes) -> bytes:
    """The bytes the header parser reads: up to the first empty line, at most 64 KiB. Parsing
    only these gives the same headers and spares splitting the whole body into lines."""
    head = raw[:_HEADER_LIMIT]
    ends = [i for i in (head.find(marker) for marker in _EMPTY_LINE_STARTS) if i >= 0]
    return head[:min(ends) + 3] if ends else head


def header_message_id(raw: bytes) -> str | None:
    """The Message-ID, read from the header block only (cheap, and never raises)."""
    try:
        value = _HEADERS.parsebytes(_header_block(raw)).get("Message-ID")
    except Exception:       # header block unreadable: dedupe falls back to the bytes' hash
        return None
    if value is None:
        return None
    text = str(value).strip().strip("<>").strip()
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        return None     # a broken id cannot be a dedupe key (and NUL cannot be stored in PostgreSQL)
    return text[:MAX_MESSAGE_ID]


def store(sessions: sessionmaker[Session], raw: bytes, envelope: Envelope, now: datetime) -> Stored:
    """Commit the raw mail unless it is already here (same Message-ID, same bytes or same IMAP message).

    The unique constraints on exactly those keys detect a duplicate, so a new mail costs two
    INSERTs (plain ones: the rows are not used as objects here; the bytes go to a table of their
    own, written in pieces, models/blobs.py) and their commit; only a refused INSERT looks the
    stored one up."""
    digest = hashlib.sha256(raw).hexdigest()
    message_id = header_message_id(raw)
    values = dict(received_at=now, door=envelope.door, mailbox=envelope.mailbox, envelope_sender=envelope.sender,
                  envelope_recipients=list(envelope.recipients), sha256=digest, message_id=message_id,
                  auto_answer=envelope.auto_answer)
    if envelope.imap is not None:
        values.update(imap_folder=envelope.imap.folder, imap_uidvalidity=envelope.imap.uidvalidity,
                      imap_uid=envelope.imap.uid)
    try:
        with unit_of_work(sessions) as session:
            connection = session.connection()
            inbound_id = connection.execute(insert(InboundMail.__table__), values).inserted_primary_key[0]
            blobs.insert_raw(connection, inbound_id, raw)
            crash_point("before_commit")
        return Stored(inbound_id, duplicate=False)
    except IntegrityError:      # stored before, or a moment ago by another session or instance
        found = _find_existing(sessions, digest, message_id, envelope)
        if found is None:
            raise
        return Stored(found, duplicate=True)


def _find_existing(sessions: sessionmaker[Session], digest: str, message_id: str | None,
                   envelope: Envelope) -> int | None:
    condition = InboundMail.sha256 == digest
    if message_id:
        condition = or_(condition, InboundMail.message_id == message_id)
    if envelope.imap is not None:
        condition = or_(condition, and_(InboundMail.mailbox == envelope.mailbox,
                                        InboundMail.imap_folder == envelope.imap.folder,
                                        InboundMail.imap_uidvalidity == envelope.imap.uidvalidity,
                                        InboundMail.imap_uid == envelope.imap.uid))
    with sessions() as session:
        return session.scalar(select(InboundMail.id).where(condition).limit(1))
