"""Header injection and path tricks from hostile mail: CR/LF, raw or encoded, in subjects,
display names and addresses never reach a header of the mail the service sends; attachment
names never hold a path that could leave the folder they would be saved in."""
from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import pytest

from tests.conftest import Captured, CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration

EVIL = "evil@attacker.example"


def _b64(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def _raw(n: int, subject: bytes, sender: bytes = b"", cc: bytes = b"") -> bytes:
    sender = sender or f"Customer {n} <customer{n}@acme.example>".encode()
    return (b"From: " + sender + b"\r\nTo: support@example.com\r\n" + (b"Cc: " + cc + b"\r\n" if cc else b"")
            + b"Subject: " + subject + f"\r\nMessage-ID: <injection-{n}@acme.example>\r\n".encode()
            + b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nPlease help.\r\n")


HOSTILE = [   # (subject, From, Cc), as raw header bytes
    (b"=?utf-8?q?=5BSEV-3=5D_q_encoded=0D=0ABcc:_" + EVIL.encode() + b"?=", b"", b""),
    (_b64(f"[SEV-3] b encoded\r\nX-Injected: yes\r\nBcc: {EVIL}").encode(), b"", b""),
    (b"[SEV-3] bare CR\rX-Injected: yes", b"", b""),
    (_b64("[SEV-3] unicode breaks\u2028X-Injected: a\u0085X-Injected: b\x0bX-Injected: c").encode(), b"", b""),
    (b"=?utf-8?q?=3D=3Futf-8=3Fq=3F=5BSEV-3=5D_nested=3D0D=3D0AX-Injected=3A_yes=3F=3D?=", b"", b""),
    (b"[SEV-3] name", b"=?utf-8?q?Ann=0D=0ABcc:_" + EVIL.encode() + b"?= <customer5@acme.example>", b""),
    (b"[SEV-3] name b", _b64("Ann\r\nX-Injected: yes\r\n").encode() + b" <customer6@acme.example>", b""),
    (b"[SEV-3] folded address", b"<customer7@acme.example\r\n Bcc: " + EVIL.encode() + b">", b""),
    (b"[SEV-3] cc names", b"", b"=?utf-8?q?Carl=0D=0ABcc=3A_x=40y=2Eexample?= <carl@acme.example>, "
                              b"\"Dana\r\n X-Injected: yes\" <dana@acme.example>"),
]


def _header_block(mail: Captured) -> list[str]:
    head = mail.raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.split("\r\n")


def _field_names(mail: Captured) -> list[str]:
    return [line.split(":", 1)[0].lower() for line in _header_block(mail) if not line[:1].isspace()]


def test_crlf_in_subjects_names_and_addresses_never_reaches_an_outgoing_header(
        service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(subject="[SEV-3] A plain request", sender="Bea <bea@acme.example>"),
                        sender="bea@acme.example")[0] == 250
    [plain_ack] = capture.wait_for(1)
    [plain_note] = capture.wait_for(1, staff=True)
    for n, (subject, sender, cc) in enumerate(HOSTILE):
        assert service.send(_raw(n, subject, sender, cc), sender=f"customer{n}@acme.example")[0] == 250
    acks = capture.wait_for(1 + len(HOSTILE))
    notes = capture.wait_for(1 + len(HOSTILE), staff=True)
    assert len(acks) == len(notes) == 1 + len(HOSTILE)          # every mail became a case
    for mail in [*acks, *notes]:
        for line in _header_block(mail):
            assert re.fullmatch(r"[!-9;-~]+:[ -~]*|[ \t][ -~]*", line), line     # printable, one line each
        assert "bcc" not in _field_names(mail) and "x-injected" not in _field_names(mail)
        assert EVIL not in mail.recipients and "x@y.example" not in mail.recipients
        # exactly the fields of a plain mail's answer (and Cc where the case has participants)
        expected = _field_names(plain_ack if mail in acks else plain_note) + (["cc"] if len(mail.recipients) > 1 else [])
        assert sorted(_field_names(mail)) == sorted(expected), mail.raw[:2000]
        for value in (mail.message["Subject"], mail.message["To"], mail.message.get("Cc", "")):
            assert "\r" not in str(value) and "\n" not in str(value)      # decoded, still one line
    assert {r for m in acks for r in m.recipients} == {"bea@acme.example", "carl@acme.example", "dana@acme.example",
                                                      *(f"customer{n}@acme.example" for n in range(len(HOSTILE)))}


ATTACHMENT_NAMES = [
    b'name="../../etc/passwd"', b'name="..\\\\..\\\\windows\\\\system32\\\\evil.dll"', b'name="/var/spool/abs.txt"',
    b'name="=?utf-8?q?..=2F..=2Fsecret.txt?="', b"name*=utf-8''..%2F..%2Fevil.sh", b'name="C:evil.txt"',
    b'name="..\r\n /dotdot.txt"', b'name="a/../../b/../../c.txt"', b'name=".."', b'name="\xe2\x80\xae/txt.exe"',
]


def test_attachment_names_with_path_separators_never_leave_their_folder(
        service: RunningService, tmp_path: Path) -> None:
    parts = b"".join(b"--b\r\nContent-Type: application/octet-stream; " + name
                     + b"\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                     + base64.b64encode(b"payload %d" % i) + b"\r\n" for i, name in enumerate(ATTACHMENT_NAMES))
    raw = (b"From: ann@acme.example\r\nTo: support@example.com\r\nSubject: [SEV-3] files\r\n"
           b"Message-ID: <files@acme.example>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nFiles.\r\n" + parts + b"--b--\r\n")
    assert service.send(raw)[0] == 250
    [message] = service.cli_json("tickets", "show", "CASE-1")["messages"][:1]
    names = [a["filename"] for a in message["attachments"]]
    assert len(names) == len(ATTACHMENT_NAMES)
    folder = tmp_path / "attachments"
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".") and name.isprintable(), name
        assert (folder / name).resolve().parent == folder.resolve(), name


def test_an_address_outside_ascii_is_answered_and_one_no_mail_can_carry_is_left_out(
        service: RunningService, capture: CaptureServer, caplog: pytest.LogCaptureFixture) -> None:
    """A local part outside ASCII (RFC 6531) is written as UTF-8 and sent over SMTPUTF8; one that
    no mail can carry (a quoted one outside ASCII) does not stop its mail: the case opens or the
    rejection is recorded, and only the mail to that address is left out."""
    jorg, quoted = "Jörg <jörg@acme.example>".encode(), 'Q <"jö rg"@acme.example>'.encode()
    assert service.send(_raw(1, b"[SEV-3] Disk full", sender=jorg), sender="j@acme.example")[0] == 250
    assert service.send(_raw(2, b"[SEV-3] Quoted", sender=quoted), sender="q@acme.example")[0] == 250
    assert service.send(_raw(3, b"No tag here", sender=quoted), sender="q@acme.example")[0] == 250
    assert service.send(_raw(4, b"[SEV-3] Colleagues copied", cc=quoted + b", " + jorg),
                        sender="customer4@acme.example")[0] == 250
    capture.wait_for(3, staff=True)
    acks = capture.wait_for(2)
    time.sleep(0.5)                                      # nothing else on its way
    assert len(capture.mails) == 2 and len(capture.staff_mails) == 3
    assert [m.recipients for m in acks] == [["jörg@acme.example"], ["customer4@acme.example", "jörg@acme.example"]]
    assert "To: jörg@acme.example" in acks[0].raw.decode("utf-8")
    assert service.cli_json("quarantine", "list") == []
    case = service.cli_json("tickets", "show", "CASE-2")
    assert case["requester"] == '"jö rg"@acme.example'
    assert {"kind": "acknowledgment_suppressed", "reason": "address_not_writable"} in [
        {"kind": e["kind"], "reason": (e["data"] or {}).get("reason")} for e in case["events"]]
    [rejection] = service.cli_json("rejected", "list")
    assert rejection["detail"].endswith("not answered (an address outgoing mail cannot carry)")
    left_out = [r for r in caplog.records if r.getMessage() == "outbox.not_addressable"]
    assert [r.fields["left_out"] for r in left_out] == [['"jö rg"@acme.example']]     # type: ignore[attr-defined]
