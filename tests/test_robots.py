"""Robots, loops and bounces: no automatic answer to a machine, rate limits for people."""
from __future__ import annotations

import pytest

from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("headers", "sender", "reason"), [
    ({"Auto-Submitted": "auto-replied"}, "ann@acme.example", "auto_submitted"),
    ({"Precedence": "bulk"}, "ann@acme.example", "bulk"),
    ({"Precedence": "junk"}, "ann@acme.example", "bulk"),
    ({"X-Autoreply": "yes"}, "ann@acme.example", "auto_reply"),
    ({"List-Id": "<ops.acme.example>"}, "ann@acme.example", "auto_reply"),
    ({}, "MAILER-DAEMON@acme.example", "mailer_daemon"),
    ({}, "postmaster@acme.example", "mailer_daemon"),
    ({}, "support@example.com", "own_address"),
])
def test_automatic_mail_gets_no_answer(service: RunningService, capture: CaptureServer,
                                       headers: dict[str, str], sender: str, reason: str) -> None:
    raw = make_mail(subject="Out of office", sender=sender, headers=headers)
    assert service.send(raw)[0] == 250
    [record] = service.cli_json("rejected", "list")
    assert record["reason"] == reason
    capture.wait_for(1, timeout=1)
    assert capture.mails == []


def test_auto_submitted_no_is_a_person(service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(headers={"Auto-Submitted": "no"}))[0] == 250
    assert len(service.cli_json("tickets", "list")) == 1
    assert len(capture.wait_for(1)) == 1


def test_automatic_answers_to_one_sender_are_rate_limited(service: RunningService,
                                                          capture: CaptureServer) -> None:
    limit = service.config.auto_replies_per_hour
    for n in range(limit + 3):
        assert service.send(make_mail(subject=f"no tag {n}"))[0] == 250
    assert len(service.cli_json("rejected", "list")) == limit + 3
    capture.wait_for(limit + 1, timeout=2)
    assert len(capture.mails) == limit


def test_bounce_for_an_acknowledgment_is_recorded_on_the_case(service: RunningService,
                                                             capture: CaptureServer) -> None:
    assert service.send(make_mail())[0] == 250
    [ack] = capture.wait_for(1)
    original = ack.message["Message-ID"]
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.acme.example>\r\n"
        "To: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.acme.example>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.acme.example\r\n\r\n"
        "Final-Recipient: rfc822; ann@acme.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {original}\r\n"
        "From: support@example.com\r\nSubject: [CASE-1] x\r\n\r\n--B--\r\n").encode()
    assert service.send(dsn, sender="")[0] == 250
    show = service.cli_json("tickets", "show", "CASE-1")
    [bounce] = [e for e in show["events"] if e["kind"] == "bounce"]
    assert bounce["data"]["original_message_id"] == original.strip("<>")
    assert show["messages"][-1]["kind"] == "bounce"
    capture.wait_for(2, timeout=1)
    assert len(capture.mails) == 1
