"""Typed SQLAlchemy models; importing the package registers every table on `Base.metadata`."""
from models.base import Base, utcnow
from models.mail import InboundMail, InboundRaw, InboundStatus, Outcome
from models.outbox import OutboxMail, OutboxStatus
from models.staff import StaffToken
from models.ticket import Attachment, Direction, Event, Message, Participant, Ticket, TicketStatus
from models import blobs  # large values written and read in pieces (stores, attachments)

__all__ = ["Base", "blobs", "utcnow", "InboundMail", "InboundRaw", "InboundStatus", "Outcome", "OutboxMail", "OutboxStatus", "StaffToken",
           "Attachment", "Direction", "Event", "Message", "Participant", "Ticket", "TicketStatus"]
