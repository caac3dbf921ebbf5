"""Replies find their case (token address, In-Reply-To/References, subject reference from a
participant), reopen it inside the window, and open a follow-up case after it."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from intake.apply import Context, add_message, ticket_context
from intake.parse import UnparseableMail
from intake.pipeline import read_mail
from models import InboundMail, Message, OutboxMail, Ticket, TicketStatus, utcnow
from models.db import unit_of_work
from notifications.outbox import Outgoing
from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration


def _open_case(service: RunningService, capture: CaptureServer) -> tuple[dict, object]:
    assert service.send(make_mail(cc="bob@acme.example"))[0] == 250
    [ack] = capture.wait_for(1)
    [ticket] = service.cli_json("tickets", "list")
    return ticket, ack.message


def _set_status(service: RunningService, status: TicketStatus, ago: timedelta = timedelta(0)) -> None:
    with unit_of_work(service.services.sessions) as session:
        session.execute(update(Ticket).values(status=status, closed_at=utcnow() - ago, updated_at=utcnow() - ago))


def test_reply_to_the_token_address_threads_without_any_reference(service: RunningService,
                                                                  capture: CaptureServer) -> None:
    ticket, ack = _open_case(service, capture)
    token_address = ack["Reply-To"]
    raw = make_mail(subject="more details", to=token_address, sender="stranger@acme.example")
    assert service.send(raw, recipients=(token_address,))[0] == 250
    show = service.cli_json("tickets", "show", ticket["ref"])
    assert [m["direction"] for m in show["messages"]] == ["in", "out", "in"]
    assert show["messages"][2]["author"] == "stranger@acme.example"
    assert len(service.cli_json("tickets", "list")) == 1


def test_in_reply_to_our_acknowledgment_threads(service: RunningService, capture: CaptureServer) -> None:
    ticket, ack = _open_case(service, capture)
    raw = make_mail(subject="Re: thanks", headers={"In-Reply-To": ack["Message-ID"]})
    assert service.send(raw)[0] == 250
    assert service.cli_json("tickets", "list")[0]["message_count"] == 3
    assert len(capture.wait_for(2, timeout=1)) == 1     # replies get no acknowledgment


def test_subject_reference_threads_only_from_an_address_on_the_case(service: RunningService,
                                                                   capture: CaptureServer) -> None:
    ticket, _ = _open_case(service, capture)
    assert service.send(make_mail(subject=f"Re: [{ticket['ref']}] update", sender="bob@acme.example"))[0] == 250
    assert service.cli_json("tickets", "list")[0]["message_count"] == 3
    # a stranger guessing the number writes no untagged reply into the case: it is rejected as new mail
    assert service.send(make_mail(subject=f"[{ticket['ref']}] let me in", sender="mallory@acme.example"))[0] == 250
    assert service.cli_json("tickets", "list")[0]["message_count"] == 3
    assert [r["reason"] for r in service.cli_json("rejected", "list")] == ["untagged"]


@pytest.mark.parametrize("status", [TicketStatus.PENDING, TicketStatus.RESOLVED, TicketStatus.CLOSED])
def test_customer_reply_sets_a_waiting_or_recently_closed_case_back_to_open(
        service: RunningService, capture: CaptureServer, status: TicketStatus) -> None:
    ticket, ack = _open_case(service, capture)
    _set_status(service, status, timedelta(days=3))
    assert service.send(make_mail(subject="Re: still broken", headers={"In-Reply-To": ack["Message-ID"]}))[0] == 250
    show = service.cli_json("tickets", "show", ticket["ref"])
    assert show["status"] == "open"
    assert any(e["kind"] == "status_changed" and e["data"]["from"] == status.value for e in show["events"])


def test_reply_to_a_case_closed_beyond_the_window_opens_a_new_case_that_refers_to_it(
        service: RunningService, capture: CaptureServer) -> None:
    ticket, ack = _open_case(service, capture)
    _set_status(service, TicketStatus.CLOSED, timedelta(days=30))
    assert service.send(make_mail(subject="Re: it is back", headers={"In-Reply-To": ack["Message-ID"]}))[0] == 250
    tickets = service.cli_json("tickets", "list")
    assert [t["status"] for t in tickets] == ["closed", "open"]
    assert tickets[1]["previous"] == ticket["ref"] and tickets[1]["severity"] == ticket["severity"]
    assert len(capture.wait_for(2)) == 2


def test_differing_tag_on_a_reply_is_a_severity_change_request(service: RunningService,
                                                             capture: CaptureServer) -> None:
    ticket, ack = _open_case(service, capture)
    raw = make_mail(subject="Re: [SEV-1] now production is down", headers={"In-Reply-To": ack["Message-ID"]})
    assert service.send(raw)[0] == 250
    show = service.cli_json("tickets", "show", ticket["ref"])
    assert show["severity"] == 2
    [request] = [e for e in show["events"] if e["kind"] == "severity_change_requested"]
    assert request["data"]["requested"] == 1


def test_a_copy_on_the_case_comes_after_a_message_added_before_it_in_the_same_transaction(
        service: RunningService) -> None:
    assert service.send(make_mail())[0] == 250
    ctx = Context(service.config, service.services.outbox, utcnow())
    with unit_of_work(service.services.sessions) as session:
        ticket = session.scalars(select(Ticket)).one()
        inbound = session.scalars(select(InboundMail)).one()
        mail = read_mail(service.config, make_mail(subject="Re: more", message_id="<more@acme.example>"),
                         "ann@acme.example")
        assert not isinstance(mail, UnparseableMail)
        add_message(session, ticket, inbound, mail, "customer")        # pending in the session
        ctx.outbox.enqueue(session, Outgoing(
            kind="acknowledgment", dedupe_key="test:copy-order", to=("ann@acme.example",), ticket_id=ticket.id,
            context={"ticket": ticket_context(ctx, ticket), "recipient_name": ""}), ctx.now)
    with service.services.sessions() as session:
        kinds = list(session.scalars(select(Message.kind).order_by(Message.id)))
    assert kinds == ["customer", "acknowledgment", "customer", "acknowledgment"]


def test_an_outgoing_mail_enqueued_again_under_its_dedupe_key_is_dropped_with_its_copy(
        service: RunningService) -> None:
    assert service.send(make_mail())[0] == 250
    ctx = Context(service.config, service.services.outbox, utcnow())
    row_ids = []
    for _ in range(2):      # a step retried after its first run committed
        with unit_of_work(service.services.sessions) as session:
            ticket = session.scalars(select(Ticket)).one()
            row_ids.append(ctx.outbox.enqueue(session, Outgoing(
                kind="acknowledgment", dedupe_key="test:once", to=("ann@acme.example",), ticket_id=ticket.id,
                context={"ticket": ticket_context(ctx, ticket), "recipient_name": ""}), ctx.now))
    assert row_ids[0] is not None and row_ids[1] is None
    with service.services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMail)
                              .where(OutboxMail.dedupe_key == "test:once")) == 1
        assert list(session.scalars(select(Message.kind).order_by(Message.id))) == ["customer", "acknowledgment",
                                                                                    "acknowledgment"]


def test_a_reply_acts_on_its_case_as_another_transaction_left_it(service: RunningService,
                                                                 capture: CaptureServer, db_url: str) -> None:
    """Several processing processes (or instances) on PostgreSQL: while one transaction closes a
    case, a reply to it waits, then finds it closed (beyond the reopen window: a new case follows
    it up) instead of reopening it from a read taken before the close."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite lets one transaction write at a time (BEGIN IMMEDIATE)")
    ticket, ack = _open_case(service, capture)
    engine = service.services.sessions.kw["bind"]
    closed_at = utcnow() - timedelta(days=30)
    reply = make_mail(subject="Re: it is back", headers={"In-Reply-To": ack["Message-ID"]})
    with engine.connect() as other:
        with other.begin():
            other.execute(update(Ticket).values(status=TicketStatus.CLOSED, closed_at=closed_at, updated_at=closed_at))
            sending = threading.Thread(target=service.send, args=(reply,))
            sending.start()
            waiting_for_a_lock = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            deadline = time.monotonic() + 10
            with engine.connect() as look:      # the reply is stored and its processing waits for the case
                while not look.scalar(waiting_for_a_lock) and time.monotonic() < deadline:
                    look.rollback()
                    time.sleep(0.02)
    sending.join(30)
    tickets = service.cli_json("tickets", "list")
    assert [t["status"] for t in tickets] == ["closed", "open"]
    assert tickets[1]["previous"] == ticket["ref"]
