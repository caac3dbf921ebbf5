"""The processing thread behind the SMTP door: arrival order, a backlog that costs no memory,
and a stop that leaves unprocessed mail for the next start."""
from __future__ import annotations

import os
import signal
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from email import message_from_bytes, policy
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text

from intake import pipeline as pipeline_module
from intake import processor as processor_module
from intake.config import load_config
from intake.pipeline import Services, accept, resume_received
from intake.processing_process import PIPE_BYTES
from intake.processor import Accepted, Processor
from intake.service import build_services
from intake.store import Envelope
from models import Base, InboundMail, InboundStatus, Ticket
from models.db import make_engine
from tests.conftest import (TRUSTED_AR, CaptureServer, RunningService, crlf, free_port, make_mail,
                            write_config)
from tests.harness import Database, Serve, send_until_stored, wait_until

ENVELOPE = Envelope("smtp", "support@example.com", "ann@acme.example", ("support@example.com",))


@pytest.fixture
def services(tmp_path: Path, db_url: str) -> Iterator[Services]:
    built = build_services(load_config(write_config(tmp_path, db_url, 2525, 2526)))
    yield built
    built.sessions.kw["bind"].dispose()


def _accept_all(services: Services, subjects: list[str]) -> list[Accepted]:
    accepted = []
    for subject in subjects:
        raw = make_mail(subject)
        accepted.append(Accepted(services, accept(services, raw, ENVELOPE), ENVELOPE, raw, time.monotonic()))
    return accepted


def _statuses(services: Services) -> list[InboundStatus]:
    with services.sessions() as session:
        return list(session.scalars(select(InboundMail.status).order_by(InboundMail.id)))


def test_a_backlog_keeps_mail_in_memory_up_to_a_byte_budget_and_all_are_processed_in_arrival_order(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    subjects = [f"[SEV-3] mail {n}" for n in range(7)]
    accepted_mails = _accept_all(services, subjects)
    monkeypatch.setattr(processor_module, "RAW_KEPT_BYTES", sum(len(a.raw or b"") for a in accepted_mails[:3]))
    processor = Processor()
    for accepted in accepted_mails:      # queued while the thread is not running yet
        processor.submit(accepted)
    queued = list(processor._queue.queue)
    assert [a.raw is not None for a in queued] == [True] * 3 + [False] * 4
    processor.start()
    try:
        assert processor.wait_idle(30)
    finally:
        processor.stop()
    assert _statuses(services) == [InboundStatus.PROCESSED] * 7
    assert processor._kept == 0         # the budget is given back as mails are processed
    with services.sessions() as session:
        assert list(session.scalars(select(Ticket.subject).order_by(Ticket.id))) == subjects


def _run_queued(accepted_mails: list[Accepted]) -> int:
    """Queue the mails before the thread starts, process them all; how many transactions committed."""
    commits: list[Any] = []
    engine, count = accepted_mails[0].services.sessions.kw["bind"], commits.append
    event.listen(engine, "commit", count)
    processor = Processor()
    for accepted in accepted_mails:
        processor.submit(accepted)
    processor.start()
    try:
        assert processor.wait_idle(30)
    finally:
        processor.stop()
        event.remove(engine, "commit", count)
    return len(commits)


def test_small_mails_queued_behind_a_mail_share_its_transaction_in_arrival_order(services: Services) -> None:
    subjects = [f"[SEV-3] queued {n}" for n in range(processor_module.BATCH_MAILS + 2)]
    assert _run_queued(_accept_all(services, subjects)) == 2        # eight, then two
    assert _statuses(services) == [InboundStatus.PROCESSED] * len(subjects)
    with services.sessions() as session:
        assert list(session.scalars(select(Ticket.subject).order_by(Ticket.id))) == subjects


def _outcome_of_everything(services: Services) -> dict[str, list[tuple[Any, ...]]]:
    """Every row processing writes, by content (ids and times left out)."""
    with services.sessions() as session:
        connection = session.connection()
        return {table: [tuple(row) for row in connection.execute(text(query))] for table, query in {
            "inbound": "SELECT status, outcome, reason, ticket_id FROM inbound_mail ORDER BY id",
            "tickets": "SELECT id, subject, status, severity, queue, requester, organization, first_response_due IS NULL, "
                       "first_response_at IS NULL FROM tickets ORDER BY id",
            "participants": "SELECT ticket_id, address, role FROM participants ORDER BY ticket_id, address",
            "messages": "SELECT ticket_id, direction, kind, author, subject FROM messages ORDER BY ticket_id, id",
            "events": "SELECT ticket_id, kind, actor FROM events ORDER BY ticket_id, id",
            "outbox": "SELECT kind, ticket_id, recipient, recipients, subject FROM outbox ORDER BY id",
        }.items()}


def _emptied(url: str) -> None:
    """Every table emptied and its ids started again at 1 (SQLite's next id is the largest plus one)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        if url.startswith("postgresql"):
            conn.execute(text(f"TRUNCATE {', '.join(t.name for t in Base.metadata.sorted_tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    engine.dispose()


def test_mails_processed_together_leave_what_they_leave_processed_one_by_one(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A case, replies to it from a Cc'd colleague and from someone new, a staff member adding a
    participant and then writing to all, a second case, a mail with no tag and a robot's: the same
    rows whether they share a transaction or each has its own."""
    mails = [
        make_mail("[SEV-3] First problem", cc="Bob <bob@acme.example>", message_id="<first@acme.example>"),
        make_mail("Re: [SEV-3] First problem", sender="Bob <bob@acme.example>",
                  headers={"In-Reply-To": "<first@acme.example>"}),
        make_mail("Re: [SEV-1] First problem", sender="Dave <dave@acme.example>",
                  headers={"In-Reply-To": "<first@acme.example>", "References": "<first@acme.example>"}),
        make_mail("Re: First problem", sender="Alice <alice@example.com>", body="#cc carol@acme.example\nLooping in Carol.\n",
                  headers={"In-Reply-To": "<first@acme.example>", "Authentication-Results": TRUSTED_AR}),
        make_mail("Re: First problem", sender="Alice <alice@example.com>", body="Any news?\n",
                  headers={"In-Reply-To": "<first@acme.example>", "Authentication-Results": TRUSTED_AR}),
        make_mail("[SEV-2] Second problem"),
        make_mail("no tag at all", sender="Eve <eve@acme.example>"),
        make_mail("Out of office", sender="Bob <bob@acme.example>", headers={
            "Auto-Submitted": "auto-replied", "In-Reply-To": "<first@acme.example>"}),
    ]
    outcomes = []
    for batch in (processor_module.BATCH_MAILS, 1):
        monkeypatch.setattr(processor_module, "BATCH_MAILS", batch)
        _emptied(db_url)
        services = build_services(load_config(write_config(tmp_path, db_url, 2525, 2526)))
        try:
            accepted = []
            for raw in mails:
                envelope = replace(ENVELOPE, sender=message_from_bytes(raw)["From"].split("<")[1].rstrip(">"))
                accepted.append(Accepted(services, accept(services, raw, envelope), envelope, raw, time.monotonic()))
            assert _run_queued(accepted) == (1 if batch > 1 else len(mails))
            outcomes.append(_outcome_of_everything(services))
        finally:
            services.sessions.kw["bind"].dispose()
    together, one_by_one = outcomes
    assert together == one_by_one
    assert len(together["tickets"]) == 2 and [row[1] for row in together["inbound"]] == [
        "ticket", "reply", "reply", "reply", "reply", "ticket", "rejected", "reply"]
    relayed = [row for row in together["outbox"] if row[0] == "staff_reply"]
    assert len(relayed) == 2 and all("carol@acme.example" in str(row[3]) for row in relayed)


def test_mails_past_the_byte_budget_are_read_back_and_still_share_a_transaction(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    accepted_mails = _accept_all(services, [f"[SEV-3] backlog {n}" for n in range(6)])
    monkeypatch.setattr(processor_module, "RAW_KEPT_BYTES", len(accepted_mails[0].raw or b""))
    assert _run_queued(accepted_mails) == 1     # five of them without their bytes, their sizes known
    assert _statuses(services) == [InboundStatus.PROCESSED] * 6


def test_a_large_mail_and_a_mail_under_another_config_get_transactions_of_their_own(services: Services) -> None:
    small = _accept_all(services, ["[SEV-3] before", "[SEV-3] large", "[SEV-3] after", "[SEV-3] reloaded"])
    padded = (small[1].raw or b"") + b"x" * processor_module.BATCH_MAIL_BYTES     # as queued: only its length counts
    large = replace(small[1], raw=padded)
    reloaded = replace(small[3], services=replace(services))    # a reload between: another Services
    assert _run_queued([small[0], large, small[2], reloaded]) == 4
    assert _statuses(services) == [InboundStatus.PROCESSED] * 4


def test_a_fault_in_one_mail_of_a_batch_quarantines_that_mail_only(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    real_decide = pipeline_module.decide_new

    def failing(mail: Any, *args: Any) -> Any:
        if "boom" in mail.subject:
            raise RuntimeError("a fault in this mail")
        return real_decide(mail, *args)

    monkeypatch.setattr(pipeline_module, "decide_new", failing)
    subjects = ["[SEV-3] first", "[SEV-3] second", "[SEV-3] boom", "[SEV-3] fourth"]
    assert _run_queued(_accept_all(services, subjects)) == 4     # all rolled back, then each alone
    assert _statuses(services) == [InboundStatus.PROCESSED] * 2 + [InboundStatus.QUARANTINED, InboundStatus.PROCESSED]
    with services.sessions() as session:
        assert list(session.scalars(select(Ticket.subject).order_by(Ticket.id))) == [
            "[SEV-3] first", "[SEV-3] second", "[SEV-3] fourth"]
        assert session.scalar(select(InboundMail.error).where(InboundMail.status == InboundStatus.QUARANTINED)) == \
            "RuntimeError: a fault in this mail"


def test_mail_still_queued_at_a_stop_stays_received_and_the_next_start_processes_it(services: Services) -> None:
    processor = Processor()
    for accepted in _accept_all(services, ["[SEV-2] first", "[SEV-2] second"]):
        processor.submit(accepted)
    processor._stopping.set()       # as after a stop that ran out of time: the thread takes nothing more
    processor.start()
    processor.stop()
    assert not processor.alive()
    assert _statuses(services) == [InboundStatus.RECEIVED] * 2
    assert resume_received(services) == 2       # what `intake serve` does at start
    assert _statuses(services) == [InboundStatus.PROCESSED] * 2


def test_the_listener_answers_once_the_mail_is_stored_while_processing_is_still_to_come(
        service: RunningService, monkeypatch: pytest.MonkeyPatch) -> None:
    go_on, real_finish = threading.Event(), processor_module.finish_together

    def held_back(*args: Any) -> Any:
        assert go_on.wait(30)
        return real_finish(*args)

    monkeypatch.setattr(processor_module, "finish_together", held_back)
    with smtplib.SMTP("127.0.0.1", service.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("ann@acme.example")
        smtp.rcpt("support@example.com")
        code, reply = smtp.data(crlf(make_mail("[SEV-2] answered before processed")))
    assert (code, reply) == (250, b"2.0.0 Ok: stored")
    assert _statuses(service.services) == [InboundStatus.RECEIVED]     # stored, durable, not processed yet
    go_on.set()
    assert service.processor.wait_idle(30)
    assert _statuses(service.services) == [InboundStatus.PROCESSED]


def _processing_children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]     # not the resource tracker


def test_processing_runs_in_a_process_of_its_own_and_serve_ends_as_killed_when_it_dies(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port)
    serve = Serve(config, port, tmp_path / "serve.log")
    try:
        assert send_until_stored(lambda: port, make_mail("[SEV-3] processed next door"), "ann@acme.example",
                                 timeout=20).codes[-1] == 250
        capture.wait_for(1, timeout=20)     # processed in the child, delivered by the door's outbox worker
        children = _processing_children(serve.pid)
        assert len(children) == (1 if db_url.startswith("sqlite") else 2)      # processing_processes = 0
        os.kill(children[-1], signal.SIGKILL)
        assert serve.wait_exit(15) == -signal.SIGKILL
        assert "processing.died" in serve.output()
    finally:
        serve.kill()


def test_a_mail_too_large_for_the_pipe_is_read_back_from_the_store_and_processed(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    port = free_port()
    serve = Serve(write_config(tmp_path, db_url, port, capture.port), port, tmp_path / "serve.log")
    database = Database(db_url)
    payload = os.urandom(PIPE_BYTES)        # over the limit once base64-encoded
    try:
        msg = message_from_bytes(make_mail("[SEV-3] Core dump attached"), policy=policy.default)
        msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="core.bin")
        raw = msg.as_bytes()
        assert send_until_stored(lambda: port, raw, "ann@acme.example", timeout=20).codes[-1] == 250
        wait_until(lambda: database.outcomes() == {"processed/ticket": 1}, what="the mail processed")
        [(name, size, data)] = database.rows("SELECT filename, size, data FROM attachments")
        assert (name, size, bytes(data)) == ("core.bin", len(payload), payload)    # cut out, decoded in pieces
        [stored] = database.rows("SELECT raw FROM inbound_raw")
        assert bytes(stored[0]) == raw.replace(b"\n", b"\r\n")                 # as it came over SMTP
    finally:
        database.close()
        serve.kill()


def test_with_several_processing_processes_each_senders_mail_is_processed_in_the_order_it_came(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    """Each customer sends a new case and, at once, a follow-up in its thread that carries no tag:
    taken before the first, the follow-up would be rejected as untagged. A sender's mail keeps to
    one processing process (its lane), so every follow-up lands on its case."""
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port,
                          replace={"processing_processes = 0": "processing_processes = 3"})
    serve = Serve(config, port, tmp_path / "serve.log")
    database = Database(db_url)
    senders = [f"customer{n}@acme.example" for n in range(12)]
    try:
        assert len(_processing_children(serve.pid)) == 3
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            for sender in senders:
                first = make_msgid(domain="acme.example")
                for raw in (make_mail("[SEV-3] Export fails", sender=sender, message_id=first),
                            make_mail("Re: [SEV-3] Export fails", sender=sender, body="And the log.\n",
                                      headers={"In-Reply-To": first, "References": first})):
                    smtp.sendmail(sender, ["support@example.com"], crlf(raw))
        wait_until(lambda: database.scalar("SELECT count(*) FROM inbound_mail WHERE status = 'received'") == 0,
                   what="every mail processed")
        assert database.outcomes() == {"processed/ticket": len(senders), "processed/reply": len(senders)}
    finally:
        database.close()
        serve.kill()
