"""models/inserts.py: rows written with Core INSERTs, their objects then in the session as if loaded."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import event, func, select

from intake.pipeline import Services
from models import Attachment, Direction, Message, Participant, Ticket, TicketStatus, blobs
from models.db import unit_of_work
from models.inserts import attach_loaded, insert_row

pytestmark = pytest.mark.integration
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    """The SQL statements the engine runs inside the block."""
    seen: list[str] = []
    engine = services.sessions.kw["bind"]

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def a_case() -> tuple[Ticket, Message]:
    message = Message(inbound_id=None, direction=Direction.IN, author="ann@acme.example", kind="customer",
                      subject="[SEV-2] lag", body_text="hello", message_id="m1@acme.example", created_at=NOW)
    message.attachments = [Attachment(filename="log.txt", content_type="text/plain", size=3, data=b"abc")]
    ticket = Ticket(subject="lag", severity=2, queue="triage", assignee=None, tags=["db"], requester="ann@acme.example",
                    organization=None, tier=None, mailbox="support@example.com", reply_token="tok1",
                    created_at=NOW, updated_at=NOW, first_response_due=None,
                    participants=[Participant(address="ann@acme.example", role="requester"),
                                  Participant(address="bob@acme.example", name="Bob", role="cc")],
                    messages=[message])
    return ticket, message


def write(services: Services, ticket: Ticket, message: Message) -> None:
    with unit_of_work(services.sessions) as session:
        insert_row(session, ticket)
        for participant in ticket.participants:
            participant.ticket_id = ticket.id
            insert_row(session, participant)
        message.ticket_id = ticket.id
        insert_row(session, message)
        for attachment in message.attachments:
            attachment.message_id = message.id
            insert_row(session, attachment)
        attach_loaded(session, ticket, *ticket.participants, message, *message.attachments)
        with statements(services) as seen:
            loaded = [getattr(ticket, column.key) for column in Ticket.__table__.columns]
            assert [p.address for p in ticket.participants] == ["ann@acme.example", "bob@acme.example"]
            assert ticket.messages[0].attachments[0].data == b"abc"
            session.flush()
        assert seen == []       # every column loaded, nothing left for the flush to write
        assert loaded[0] == ticket.id and ticket in session and not session.new and not session.dirty
        ticket.status = TicketStatus.PENDING
        with statements(services) as seen:
            session.flush()
        assert seen == ["UPDATE"]       # a change after the insert is an UPDATE, never a second INSERT


def test_rows_written_at_once_are_loaded_objects_with_their_defaults(services: Services) -> None:
    ticket, message = a_case()
    write(services, ticket, message)
    with services.sessions() as session:
        stored = session.scalars(select(Ticket)).one()
        assert (stored.status, stored.followup_attempts, stored.notify, stored.requester_name) == (
            TicketStatus.PENDING, 0, [], "")     # status changed after the insert; the rest Python defaults
        assert (stored.tags, stored.created_at, stored.next_followup_at) == (["db"], NOW, None)
        assert [(p.address, p.name, p.role) for p in stored.participants] == [
            ("ann@acme.example", "", "requester"), ("bob@acme.example", "Bob", "cc")]
        assert [(m.id, m.subject) for m in stored.messages] == [(message.id, "[SEV-2] lag")]
        assert [(a.filename, a.data) for a in stored.messages[0].attachments] == [("log.txt", b"abc")]
        counts = [session.scalar(select(func.count()).select_from(model))
                  for model in (Ticket, Participant, Message, Attachment)]
        assert counts == [1, 2, 1, 1]


def test_a_large_value_is_not_kept_on_its_object_and_reads_back_whole(services: Services) -> None:
    """A value of blobs.LARGE or more is dropped from the object once written: a cut attachment's
    value holds the whole raw mail, and the objects live on in reference cycles until the collector
    runs. Asked for, it is read back from the row."""
    ticket, message = a_case()
    data = bytes(range(256)) * (blobs.LARGE // 256 + 1)
    message.attachments = [Attachment(filename="big.bin", content_type="application/octet-stream",
                                      size=len(data), data=data)]
    with unit_of_work(services.sessions) as session:
        insert_row(session, ticket)
        message.ticket_id = ticket.id
        insert_row(session, message)
        attachment = message.attachments[0]
        attachment.message_id = message.id
        insert_row(session, attachment)
        attach_loaded(session, ticket, message, attachment)
        assert "data" not in attachment.__dict__
        assert attachment.data == data
