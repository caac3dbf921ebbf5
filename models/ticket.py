"""Cases and everything recorded on them: participants, messages, attachments, events."""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, enum_column


class TicketStatus(str, enum.Enum):
    OPEN = "open"
    PENDING = "pending"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Direction(str, enum.Enum):
    IN = "in"
    OUT = "out"


class Ticket(Base):
    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    severity: Mapped[int]
    status: Mapped[TicketStatus] = mapped_column(enum_column(TicketStatus), default=TicketStatus.OPEN, index=True)
    queue: Mapped[str] = mapped_column(String(64))
    assignee: Mapped[str | None] = mapped_column(String(320))
    tags: Mapped[list[str]]
    requester: Mapped[str] = mapped_column(String(320))
    requester_name: Mapped[str] = mapped_column(String(320), default="")
    organization: Mapped[str | None] = mapped_column(String(200))
    tier: Mapped[str | None] = mapped_column(String(64))
    mailbox: Mapped[str] = mapped_column(String(320))
    reply_token: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    first_response_due: Mapped[datetime | None] = mapped_column(index=True)
    first_response_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    previous_ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    notify: Mapped[list[str]] = mapped_column(default=list)          # the routing rule's notify addresses
    # When each sweep looks at the case next (docs/sla.md); the sweep then decides from its history.
    sla_warn_at: Mapped[datetime | None] = mapped_column(index=True)
    sla_warned_at: Mapped[datetime | None]
    sla_breached_at: Mapped[datetime | None]                          # when the breach notice went out
    next_followup_at: Mapped[datetime | None] = mapped_column(index=True)
    followup_attempts: Mapped[int] = mapped_column(default=0)
    next_sev1_reminder_at: Mapped[datetime | None] = mapped_column(index=True)

    participants: Mapped[list["Participant"]] = relationship(back_populates="ticket", order_by="Participant.id")
    messages: Mapped[list["Message"]] = relationship(back_populates="ticket", order_by="Message.id")
    events: Mapped[list["Event"]] = relationship(back_populates="ticket", order_by="Event.id")

    # The incident allowance counts an organization's cases of this contract year (intake/pipeline.py
    # `_incidents_used`): with created_at in the index that is a range of this year's entries, not a
    # read of every case the organization ever had.
    __table_args__ = (Index("ix_tickets_organization_created_at", "organization", "created_at"),)

    def ref(self, prefix: str) -> str:
        return f"{prefix}-{self.id}"


class Participant(Base):
    __tablename__ = "participants"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"))
    address: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(320), default="")
    role: Mapped[str] = mapped_column(String(16))                     # requester | cc

    ticket: Mapped[Ticket] = relationship(back_populates="participants")
    __table_args__ = (UniqueConstraint("ticket_id", "address"), Index("ix_participants_address", "address"))


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_mail.id"))
    direction: Mapped[Direction] = mapped_column(enum_column(Direction))
    author: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(32))     # customer | auto_reply | bounce | acknowledgment | ...
    subject: Mapped[str] = mapped_column(Text)
    body_text: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime]

    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list["Attachment"]] = relationship(order_by="Attachment.id")


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(320))
    data: Mapped[dict[str, Any]]

    ticket: Mapped[Ticket] = relationship(back_populates="events")
