"""Typed SQLAlchemy models; importing the package registers every table on `Base.metadata`."""
from models.base import Base, utcnow
from models.mail import InboundMail, InboundStatus, Outcome
from models.outbox import OutboxMail, OutboxStatus
from models.staff import StaffToken
from models.ticket import Attachment, Direction, Event, Message, Participant, Ticket, TicketStatus

__all__ = ["Base", "utcnow", "InboundMail", "InboundStatus", "Outcome", "OutboxMail", "OutboxStatus", "StaffToken",
           "Attachment", "Direction", "Event", "Message", "Participant", "Ticket", "TicketStatus"]
