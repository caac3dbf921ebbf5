"""Hostile and broken mail and SMTP sessions: whatever the bytes, the pipeline ends every stored
mail with an outcome (a case, a reply, a rejection, a hold, a bounce), never an escaped exception
and never a quarantine caused by our own code, and the listener keeps serving (docs/reliability.md)."""
from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message as MailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from sqlalchemy import select

from intake.pipeline import Services, ingest
from intake.store import Envelope
from models import Direction, Event, InboundMail, Message, OutboxMail, Ticket
from tests.conftest import TRUSTED_AR, RunningService, make_mail

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("INTAKE_FUZZ_EXAMPLES", "300"))
CORPUS = sorted((Path(__file__).resolve().parents[2] / "shared" / "corpus").rglob("*.eml"))
ENVELOPE = Envelope(door="smtp", mailbox="support@example.com", sender="ann@acme.example",
                    recipients=("support@example.com",))

header_names = st.sampled_from(["Subject", "From", "To", "Cc", "Message-ID", "In-Reply-To", "References",
                                "Content-Type", "Content-Transfer-Encoding", "Auto-Submitted", "X-Weird"])
header_values = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["=?x-unknown?q?=FF=00?=", "=?utf-8?b?////?=", "=?utf-8?q?a=0D=0ABcc:_x@y?=",
                     'multipart/mixed; boundary=""', "multipart/alternative", "text/plain; charset=bogus",
                     "base64", "quoted-printable", "<>", "<a@b> <c@d>", "x" * 5000,
                     "Jörg <jörg@acme.example>", "=?utf-8?q?J=C3=B6rg?= <jörg@bücher.example>", "a\x00b@acme.example"]),
)
charsets = st.sampled_from(["utf-8", "iso-8859-1", "gb2312", "x-bogus", "", "utf-7", "us-ascii"])


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 4 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b1", "b2", "=_x", "", "a" * 80]))
        children = draw(st.lists(mime_part(depth + 1), max_size=4))
        closing = draw(st.sampled_from([b"--\r\n", b"\r\n", b""]))   # sometimes never closed
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + child for child in children)
        return (f'Content-Type: multipart/{draw(st.sampled_from(["mixed", "alternative", "report", "related"]))};'
                f' boundary="{boundary}"\r\n\r\n').encode() + body + b"--" + boundary.encode() + closing
    charset = draw(charsets)
    kind = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream", "message/rfc822"]))
    encoding = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode"]))
    name = draw(st.sampled_from(["", '; name="../../etc/passwd"', '; name="a\r\n b.txt"', '; name="=?utf-8?q?x?="']))
    payload = draw(st.binary(max_size=400))
    return (f"Content-Type: {kind}; charset={charset}{name}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
            ).encode() + payload + b"\r\n"


@st.composite
def weird_mail(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=12))
    lines = [f"{name}: {value}".encode("utf-8", "surrogateescape") for name, value in headers]
    lines.insert(0, b"Subject: [SEV-" + str(draw(st.integers(0, 5))).encode() + b"] fuzz")
    return b"\r\n".join(lines) + b"\r\n" + draw(mime_part())


@st.composite
def mutated_corpus_mail(draw: st.DrawFn) -> bytes:
    raw = bytearray(Path(draw(st.sampled_from(CORPUS))).read_bytes() if CORPUS else b"Subject: x\r\n\r\nbody")
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 8))):
        position = rng.randrange(len(raw) or 1)
        action = rng.choice(["flip", "cut", "dup", "nul"])
        if action == "flip" and raw:
            raw[position] = rng.randrange(256)
        elif action == "cut":
            del raw[position:position + rng.randrange(200)]
        elif action == "dup":
            raw[position:position] = raw[position:position + rng.randrange(300)]
        else:
            raw[position:position] = b"\x00"
    return bytes(raw)


# Staff command lines (PROTOCOL.md) with arguments right, wrong and hostile.
commands = st.sampled_from(["#status", "#pending", "#severity", "#sev", "#assign", "#take", "#queue", "#note",
                            "#close", "#reopen", "#cc", "#uncc", "#bogus", "#", "# status"])
arguments = st.one_of(st.sampled_from(["", "1", "4", "9", "open", "pending", "closed", "resolved", "triage", "nowhere",
                                       "bob@example.com", "alice@example.com", "evil@attacker.example",
                                       "jörg@acme.example", "a\x00b@acme.example", "x@y.example\r\nBcc: evil@z.example",
                                       "=?utf-8?q?a=0D=0Ab?=@acme.example"]),
                      st.text(max_size=40))


@st.composite
def staff_reply(draw: st.DrawFn, notification: MailMessage) -> bytes:
    """alice's reply to her notification of a case: command lines, then text, the token address in To."""
    lines = draw(st.lists(st.tuples(commands, arguments).map(" ".join), max_size=6))
    body = "\n".join(lines) + "\n\n" + draw(st.text(max_size=200)) + "\n\n> quoted\n"
    return make_mail(subject=f"Re: {notification['Subject']}", sender="alice@example.com",
                     to=str(notification["Reply-To"]), body=body, message_id=_reply_id(draw),
                     headers={"In-Reply-To": str(notification["Message-ID"]), "Authentication-Results": TRUSTED_AR})


@st.composite
def customer_reply(draw: st.DrawFn, acknowledgment: MailMessage) -> bytes:
    """A reply on the case's side: from the requester, a colleague, a stranger or an address outside
    ASCII; to the case's reply address or the support address; the case's reference kept, changed or
    gone, a tag or none; threaded or not; any subject text and body, written as raw UTF-8 (lone
    surrogates as invalid bytes)."""
    sender = draw(st.sampled_from(["ann@acme.example", "Carl <carl@acme.example>", "eve@elsewhere.example",
                                   "Jörg <jörg@acme.example>"]))
    to = draw(st.sampled_from([str(acknowledgment["Reply-To"]), "support@example.com"]))
    ref = draw(st.sampled_from(["[CASE-1]", "[CASE-999]", "[case-1]", "CASE-1", "", "[CASE-1"]))
    tag = draw(st.sampled_from(["", "[SEV-1]", "[SEV-9]", "[SEV-2][SEV-3]", "[sev 2]"]))
    parent = draw(st.sampled_from([str(acknowledgment["Message-ID"]), "<nowhere@x>", "garbage", ""]))
    lines = [f"From: {sender}", f"To: {to}", f"Subject: Re: {ref} {tag} {draw(st.text(max_size=60))}",
             f"Message-ID: {_reply_id(draw)}", f"In-Reply-To: {parent}", "Content-Type: text/plain; charset=utf-8",
             "", draw(st.text(max_size=300))]
    return "\r\n".join(lines).encode("utf-8", "surrogatepass")


def _reply_id(draw: st.DrawFn) -> str:
    return f"<reply-{draw(st.integers(0, 2**64))}@fuzz.example>"


def _case(services: Services) -> tuple[MailMessage, MailMessage]:
    """A case; its acknowledgment and alice's notification of it (whose Reply-To holds her token)."""
    assert ingest(services, make_mail(subject="[SEV-3] A case for replies", cc="carl@acme.example"), ENVELOPE).ticket_id
    with services.sessions() as session:
        rows = session.query(OutboxMail).all()
    [ack] = [message_from_bytes(row.raw) for row in rows if row.kind == "acknowledgment"]
    [note] = [message_from_bytes(row.raw) for row in rows
              if row.kind == "staff_notification" and row.recipient == "alice@example.com"]
    return ack, note


def test_every_staff_reply_ends_with_an_outcome(services: Services) -> None:
    _, notification = _case(services)
    envelope = Envelope(door="smtp", mailbox="support@example.com", sender="alice@example.com",
                        recipients=(str(notification["Reply-To"]),))
    _every_mail_ends_with_an_outcome(services, staff_reply(notification), envelope)
    with services.sessions() as session:     # the replies reached the staff path: commands applied, some refused
        assert session.query(Event).filter_by(actor="alice@example.com").count() > 0
        assert session.query(OutboxMail).filter_by(kind="command_error").count() > 0


def test_every_customer_reply_ends_with_an_outcome(services: Services) -> None:
    acknowledgment, _ = _case(services)
    _every_mail_ends_with_an_outcome(services, customer_reply(acknowledgment), ENVELOPE)
    with services.sessions() as session:     # replies were recorded on the case, and new cases opened
        assert session.query(Message).filter_by(ticket_id=1, direction=Direction.IN).count() > 1
        assert session.query(Ticket).count() > 1


@pytest.mark.parametrize("strategy", [weird_mail(), mutated_corpus_mail()], ids=["built", "mutated-corpus"])
def test_every_mail_ends_with_an_outcome(services: Services, strategy: st.SearchStrategy[bytes]) -> None:
    _every_mail_ends_with_an_outcome(services, strategy, ENVELOPE)


def _every_mail_ends_with_an_outcome(services: Services, mails: st.SearchStrategy[bytes], envelope: Envelope) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mails)
    def check(raw: bytes) -> None:
        result = ingest(services, raw, envelope)
        assert result.duplicate or result.outcome is not None, result
    check()


# SMTP sessions from a hostile or broken client: commands in any order, arguments too long or 8-bit,
# garbage lines, line ends of any kind, DATA cut off or never ended.
smtp_lines = st.one_of(
    st.sampled_from([b"EHLO x", b"HELO x", b"EHLO", b"MAIL FROM:<ann@acme.example>", b"MAIL FROM:<>",
                     b"MAIL FROM:<j\xc3\xb6rg@acme.example> SMTPUTF8", b"MAIL FROM:<a@b> SIZE=99999999999",
                     b"MAIL FROM:<a@b> BODY=BINARYMIME", b"RCPT TO:<support@example.com>",
                     b"RCPT TO:<support+s0123@example.com>", b"RCPT TO:<nobody@elsewhere.example>",
                     b"RCPT TO:<\xff@example.com>", b"DATA", b"RSET", b"NOOP", b"VRFY ann", b"EXPN x",
                     b"STARTTLS", b"AUTH PLAIN AGFubgBwdw==", b"BDAT 10 LAST", b"HELP", b".", b"",
                     b"MAIL FROM:<" + b"a" * 3000 + b"@acme.example>", b"X" * 120_000]),
    st.binary(max_size=200))
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n"])


ENVELOPE_LINES = [b"EHLO x", b"MAIL FROM:<ann@acme.example>", b"RCPT TO:<support@example.com>", b"DATA"]


@st.composite
def smtp_session(draw: st.DrawFn) -> bytes:
    """Random lines with any line end; or first a valid envelope and a mail of random lines (CRLF, as a
    mail's end needs), ended with "." or cut off."""
    end = draw(line_ends)
    tail = b"".join(line + end for line in draw(st.lists(smtp_lines, max_size=14)))
    if not draw(st.booleans()):
        return tail
    body = draw(st.lists(st.one_of(st.binary(max_size=200), st.sampled_from([b"Subject: [SEV-3] x", b"..", b""])),
                         max_size=10))
    return b"".join(line + b"\r\n" for line in ENVELOPE_LINES + body + draw(st.sampled_from([[b"."], []]))) + tail


def test_every_smtp_session_leaves_the_listener_serving(start_service: Callable[..., RunningService],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    service = start_service()

    @settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(smtp_session())
    @example(b"".join(line + b"\r\n" for line in [*ENVELOPE_LINES, b"Subject: [SEV-3] x", b"", b"body", b"."]))
    def check(stream: bytes) -> None:
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            try:
                sock.sendall(stream)
                sock.shutdown(socket.SHUT_WR)   # the client is done: the session ends at the end of its bytes
                while sock.recv(65536):         # the answers, until the listener closes
                    pass
            except (TimeoutError, ConnectionError):
                pass
        assert service.send(make_mail(subject="[SEV-3] After a broken session"))[0] == 250

    check()
    assert service.processor.wait_idle()
    assert service.cli_json("quarantine", "list") == []
    with service.services.sessions() as session:    # the sessions' own mails were stored (the example's at least)
        subjects = session.scalars(select(InboundMail.subject)).all()
        assert len([s for s in subjects if s != "[SEV-3] After a broken session"]) > 0
    faults = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not faults, [r.getMessage() for r in faults]
