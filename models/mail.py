"""Inbound mail as received: the durability point of the whole service."""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, enum_column


class InboundStatus(str, enum.Enum):
    RECEIVED = "received"        # stored, not yet processed (or processing crashed)
    PROCESSED = "processed"
    QUARANTINED = "quarantined"  # processing failed; error kept, replayable


class Outcome(str, enum.Enum):
    TICKET = "ticket"            # opened a new case
    REPLY = "reply"              # threaded into an existing case
    REJECTED = "rejected"        # kept as a rejection record with its reason
    HELD = "held"                # waiting for manual review
    BOUNCE = "bounce"            # a delivery status notification


class InboundMail(Base):
    __tablename__ = "inbound_mail"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(index=True)
    door: Mapped[str] = mapped_column(String(16))                     # smtp | imap | import
    mailbox: Mapped[str] = mapped_column(String(320))
    envelope_sender: Mapped[str | None] = mapped_column(String(320))
    envelope_recipients: Mapped[list[str]]
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    status: Mapped[InboundStatus] = mapped_column(enum_column(InboundStatus), default=InboundStatus.RECEIVED)
    outcome: Mapped[Outcome | None] = mapped_column(enum_column(Outcome))
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)                  # human explanation of the outcome
    error: Mapped[str | None] = mapped_column(Text)                   # why it is quarantined
    sender: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"), index=True)
    processed_at: Mapped[datetime | None]
    auto_answer: Mapped[bool] = mapped_column(default=True, server_default=true())  # false: imported without --send-acks
    imap_folder: Mapped[str | None] = mapped_column(String(255))       # where the IMAP door found it, so a
    imap_uidvalidity: Mapped[int | None] = mapped_column(BigInteger)   # refetch after a crash is a duplicate
    imap_uid: Mapped[int | None] = mapped_column(BigInteger)           # (UIDs are unique per folder only)

    __table_args__ = (Index("ix_inbound_mail_status_outcome", "status", "outcome"),
                      UniqueConstraint("mailbox", "imap_folder", "imap_uidvalidity", "imap_uid"))


class InboundRaw(Base):
    """A received mail's bytes, in a table of their own: on SQLite an UPDATE rewrites the whole
    row, and processing updates every inbound mail (its status, outcome, case) at least once, so
    beside those columns the bytes were read and written whole again (twice a mail's size in
    memory for a large one). Written and read in pieces: models/blobs.py."""
    __tablename__ = "inbound_raw"

    inbound_id: Mapped[int] = mapped_column(ForeignKey("inbound_mail.id"), primary_key=True, autoincrement=False)
    raw: Mapped[bytes] = mapped_column(LargeBinary)


class ImapFetchFailure(Base):
    """An IMAP message that could not be fetched whole; kept across runs so `intake poll --once`
    from cron also reaches the limit that moves it to the error folder."""
    __tablename__ = "imap_fetch_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(320))
    folder: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    failures: Mapped[int]
    last_error: Mapped[str] = mapped_column(Text)
    last_failed_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("mailbox", "folder", "uidvalidity", "uid"),)
