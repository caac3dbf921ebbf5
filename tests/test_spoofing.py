"""Forged staff mail beyond tests/test_staff.py's table: Authentication-Results headers that look
trusted but are not (a forged verdict above the trusted host's, the trusted name as a prefix, a
pass in a comment, look-alike and unaligned domains, a header inside an attachment). None may
change the case; each is flagged; and a genuinely trusted one still works afterwards."""
from __future__ import annotations

import pytest

from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration

TRUSTED = "mx.example.com; dkim=pass header.d=example.com header.s=s1"
REAL_FAIL = "mx.example.com; dkim=none; spf=softfail smtp.mailfrom=alice@example.com"
FORGED = {   # name: Authentication-Results headers, topmost first
    "forged pass above the trusted host's verdict": ["evil.example; dkim=pass header.d=example.com", REAL_FAIL],
    "trusted name as a prefix": ["mx.example.com.evil.example; dkim=pass header.d=example.com"],
    "pass only inside a comment": ["mx.example.com; dkim=fail (dkim=pass header.d=example.com) header.d=example.com"],
    "look-alike signing domain": ["mx.example.com; dkim=pass header.d=evil-example.com"],
    "our domain as a prefix": ["mx.example.com; dkim=pass header.d=example.com.evil.example"],
    "identity in another domain": ["mx.example.com; dkim=pass header.i=@evil.example"],
    "spf pass for another domain": ["mx.example.com; spf=pass smtp.mailfrom=alice@evil.example"],
    "spf pass for the helo only": ["mx.example.com; spf=pass smtp.helo=example.com"],
    "verdict other than pass": ["mx.example.com; dkim=passed header.d=example.com; spf=neutral"],
}


def _staff_mail(ack_id: str, results: list[str], body: str, n: int) -> bytes:
    raw = make_mail(subject="Re: your case", sender="Alice <alice@example.com>", body=body,
                    message_id=f"<forged-{n}@example.com>", headers={"In-Reply-To": ack_id})
    head = "".join(f"Authentication-Results: {value}\r\n" for value in results).encode()
    return head + raw


def test_forged_authentication_results_change_nothing_and_a_trusted_one_still_works(
        service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(subject="[SEV-2] Replication lag on prod"))[0] == 250
    [ack] = capture.wait_for(1)
    ack_id = ack.message["Message-ID"]
    for n, results in enumerate(FORGED.values()):
        raw = _staff_mail(ack_id, results, "#status closed\n#severity 4\nClosing this.", n)
        assert service.send(raw, sender="alice@example.com")[0] == 250
    inner = make_mail(subject="inner", sender="alice@example.com", headers={"Authentication-Results": TRUSTED})
    attached = (b"Authentication-Results: " + REAL_FAIL.encode() + b"\r\nFrom: alice@example.com\r\n"
                b"To: support@example.com\r\nSubject: Re: your case\r\nIn-Reply-To: " + ack_id.encode()
                + b"\r\nMessage-ID: <forged-attached@example.com>\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n"
                b"--m\r\nContent-Type: text/plain\r\n\r\n#status closed\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n"
                + inner + b"\r\n--m--\r\n")
    assert service.send(attached, sender="alice@example.com")[0] == 250

    show = service.cli_json("tickets", "show", "CASE-1")
    assert (show["status"], show["severity"]) == ("open", 2)
    flagged = [e for e in show["events"] if e["kind"] == "suspected_spoofing"]
    assert len(flagged) == len(FORGED) + 1
    assert {e["data"]["why"] for e in flagged} == {"unauthenticated_staff_sender"}
    limit = service.config.auto_replies_per_hour
    assert sum(e["data"].get("notified", True) for e in flagged) == limit       # notices are limited too
    notices = [m for m in capture.wait_for(1 + limit, staff=True) if "SUSPECTED SPOOFING" in m.message["Subject"]]
    assert len(notices) == limit

    trusted = _staff_mail(ack_id, [TRUSTED, "evil.example; dkim=fail"], "#status resolved\nAll good now.", 99)
    assert service.send(trusted, sender="alice@example.com")[0] == 250
    assert service.cli_json("tickets", "show", "CASE-1")["status"] == "resolved"
