"""Mail loops: the relay the service sends through is an auto-responder that answers every mail
it gets, for every recipient (customer and staff alike), back to the sender, once with
`Auto-Submitted: auto-replied` and once with no marker at all. However long it runs, the
number of mails exchanged stays within what the rate limits allow, and the exchange stops.

INTAKE_LOOP_SECONDS sets how long the responder runs at least (default 3; a minute by hand); it
must then be silent for QUIET seconds."""
from __future__ import annotations

import os
import queue
import smtplib
import threading
import time
from collections import Counter
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import free_port, make_mail, write_config
from tests.harness import Database, Serve, smtp_send

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("INTAKE_LOOP_SECONDS", "3"))
LIMIT = 3       # limits.auto_replies_per_hour, small so that reaching it shows
QUIET = 1.5     # seconds without a mail that count as silence


class AutoResponder:
    """An SMTP server that answers each mail it receives: one answer per recipient, from that
    recipient, to the envelope sender, threaded to the mail it answers."""

    def __init__(self, marker: bool) -> None:
        self.marker = marker
        self.port = free_port()
        self.service_port = 0
        self.received: list[tuple[str, list[str]]] = []        # (envelope sender, recipients)
        self.sent: Counter[str] = Counter()                     # answers sent, by the address they came from
        self.answers: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.sender = threading.Thread(target=self._send_answers, daemon=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        original = message_from_bytes(envelope.original_content, policy=policy.default)
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos)))
        for recipient in envelope.rcpt_tos:
            answer = EmailMessage()
            answer["From"], answer["To"] = recipient, envelope.mail_from
            answer["Subject"] = f"Automatic reply: {original['Subject']}"
            answer["Message-ID"] = make_msgid(domain=recipient.partition("@")[2])
            answer["In-Reply-To"] = answer["References"] = original["Message-ID"]
            if self.marker:
                answer["Auto-Submitted"] = "auto-replied"
            answer.set_content("I am away until Monday.\n")
            self.answers.put((recipient, answer.as_bytes()))
        return "250 OK"

    def _send_answers(self) -> None:
        while (item := self.answers.get()) is not None:
            recipient, raw = item
            try:
                code = smtp_send(self.service_port, raw, recipient, ("support@example.com",))
            except (smtplib.SMTPException, OSError):    # the service is gone (the end of the test)
                code = 0
            if code == 250:
                self.sent[recipient] += 1

    def start(self, service_port: int) -> None:
        self.service_port = service_port
        self.controller.start()
        self.sender.start()

    def stop(self) -> None:
        self.controller.stop()
        self.answers.put(None)
        self.sender.join(10)

    def exchanged(self) -> int:
        return len(self.received) + sum(self.sent.values())


@pytest.fixture(params=[True, False], ids=["auto-submitted", "no-marker"])
def responder(request: pytest.FixtureRequest) -> Iterator[AutoResponder]:
    server = AutoResponder(marker=request.param)
    yield server
    server.stop()


def test_an_auto_responder_relay_exchanges_a_bounded_number_of_mails_and_falls_silent(
        tmp_path: Path, db_url: str, responder: AutoResponder) -> None:
    port = free_port()
    config = write_config(tmp_path, db_url, port, responder.port,
                          replace={"auto_replies_per_hour = 5": f"auto_replies_per_hour = {LIMIT}"})
    db = Database(db_url)
    serve = Serve(config, port, tmp_path / "serve.log")
    responder.start(port)
    try:
        assert smtp_send(port, make_mail(subject="[SEV-2] Replication lag on prod"), "ann@acme.example",
                         ("support@example.com",)) == 250
        started = quiet_since = time.monotonic()
        seen = 0
        while True:     # at least SECONDS, and then until nothing moved for QUIET seconds
            now = time.monotonic()
            if responder.exchanged() != seen:
                quiet_since, seen = now, responder.exchanged()
            if now - started >= SECONDS and now - quiet_since >= QUIET:
                break
            assert now - started < SECONDS + 20, f"still exchanging after {now - started:.0f} s: {seen} mails"
            time.sleep(0.05)
        assert db.settled() and responder.answers.empty(), db.unsettled()
        flagged = db.scalar("SELECT count(*) FROM events WHERE kind = 'suspected_spoofing'")
        assert serve.alive()
    finally:
        serve.kill()
        db.close()
    to_customer = sum("ann@acme.example" in rcpts for _, rcpts in responder.received)
    to_staff = sum("alice@example.com" in rcpts for _, rcpts in responder.received)
    assert sum(responder.sent.values()) == len(responder.received)         # the responder answered all
    if responder.marker:    # RFC 3834: an automatic answer is never answered, so it ends at once
        assert (to_customer, to_staff) == (1, 1)
    else:                   # to us these answers are people, but what goes back is limited
        assert to_customer <= LIMIT
        assert to_staff <= 1 + LIMIT + LIMIT       # the new case, a notice per customer answer, spoofing notices
        assert flagged > LIMIT, "the staff side of the loop ran into its limit"
    assert responder.exchanged() <= 2 * (1 + 3 * LIMIT)
