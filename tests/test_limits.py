"""Limits on what one mail may hold, enforced on real mail through the real listener: headers
(bytes and fields), MIME depth, parts, attachments (count and size), subject length, total
size on the doors without SMTP's 552; and a mail of very many small parts, or a zip of many
small files, costs a bounded amount of memory."""
from __future__ import annotations

import functools
import io
import mailbox
import re
import tracemalloc
import zipfile
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from intake.pipeline import ingest
from intake.store import Envelope
from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration

SMALL_LIMITS = {"max_header_bytes = 262144": "max_header_bytes = 4096", "max_headers = 1000": "max_headers = 40",
                "max_mime_depth = 30": "max_mime_depth = 3", "max_parts = 1000": "max_parts = 10",
                "max_subject_chars = 998": "max_subject_chars = 60", "max_attachments = 50": "max_attachments = 2",
                "max_attachment_bytes = 10485760": "max_attachment_bytes = 1000",
                "max_message_bytes = 26214400": "max_message_bytes = 20000"}
HEAD = "From: Ann <ann@acme.example>\r\nTo: support@example.com\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"


@pytest.fixture
def limited(start_service) -> RunningService:  # type: ignore[no-untyped-def]
    return start_service(replace=SMALL_LIMITS)


def _nested(levels: int, subject: str) -> bytes:
    """A mail whose text sits `levels` multiparts deep (its MIME depth is `levels`)."""
    body = "Content-Type: text/plain\r\n\r\nThe text, deep down.\r\n"
    for i in reversed(range(levels)):
        body = f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n{body}--n{i}--\r\n'
    return (HEAD.format(subject=subject, mid=make_msgid()) + body).encode()


def _parts(count: int, subject: str) -> bytes:
    parts = "".join(f"--p\r\nContent-Type: text/plain\r\n\r\nPart {i}.\r\n" for i in range(count))
    return (HEAD.format(subject=subject, mid=make_msgid()) + 'Content-Type: multipart/mixed; boundary="p"\r\n\r\n'
            + parts + "--p--\r\n").encode()


def _long_header(size: int, subject: str) -> bytes:
    return make_mail(subject=subject, message_id=make_msgid()).replace(
        b"\nSubject:", b"\nX-Long: " + b"word " * (size // 5) + b"\nSubject:", 1)


CASES = {   # name: (mail, outcome, reason, what the detail names)
    "header bytes over": (lambda: _long_header(5000, "[SEV-3] long header"), "rejected", "too_complex",
                          "max_header_bytes"),
    "header bytes under": (lambda: _long_header(2000, "[SEV-3] long header, fits"), "ticket", None, None),
    "header fields over": (lambda: make_mail(subject="[SEV-3] many fields",
                                             headers={f"X-Field-{i}": "v" for i in range(40)}),
                           "rejected", "too_complex", "max_headers"),
    "header fields under": (lambda: make_mail(subject="[SEV-3] some fields",
                                              headers={f"X-Field-{i}": "v" for i in range(20)}), "ticket", None, None),
    "depth over": (lambda: _nested(4, "[SEV-3] four deep"), "rejected", "too_complex", "max_mime_depth"),
    "depth at the limit": (lambda: _nested(3, "[SEV-3] three deep"), "ticket", None, None),
    "parts over": (lambda: _parts(11, "[SEV-3] eleven parts"), "rejected", "too_complex", "max_parts"),
    "parts at the limit": (lambda: _parts(10, "[SEV-3] ten parts"), "ticket", None, None),
}


def test_each_structure_limit_rejects_above_it_and_accepts_at_it_without_answering(
        limited: RunningService, capture: CaptureServer) -> None:
    sent = {}
    for name, (build, *_) in CASES.items():
        raw = build()
        sent[name] = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()  # type: ignore[union-attr]
        assert limited.send(raw)[0] == 250, name      # stored first: the raw mail is kept
    rejected = {r["message_id"]: r for r in limited.cli_json("rejected", "list")}
    tickets = {t["subject"] for t in limited.cli_json("tickets", "list")}
    for name, (_, outcome, reason, limit) in CASES.items():
        if outcome == "rejected":
            record = rejected[sent[name]]
            assert record["reason"] == reason and limit in record["detail"], (name, record)
        else:
            assert sent[name] not in rejected, name
    assert len(tickets) == sum(outcome == "ticket" for _, outcome, *_ in CASES.values())
    assert len(capture.wait_for(len(tickets))) == len(tickets)     # acknowledgments only for the cases
    assert all(m.message["Subject"].startswith("[CASE-") for m in capture.mails)


def test_a_long_subject_is_cut_and_attachments_beyond_count_or_size_are_left_out(
        limited: RunningService, capture: CaptureServer) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Message-ID"] = "ann@acme.example", "support@example.com", make_msgid()
    msg["Subject"] = "[SEV-3] " + " ".join(f"word{i}" for i in range(40))
    msg.set_content("Files attached.")
    msg.add_attachment(b"B" * 2000, maintype="application", subtype="octet-stream", filename="big.bin")
    for i in range(3):
        msg.add_attachment(b"s" * 500, maintype="application", subtype="octet-stream", filename=f"small{i}.bin")
    assert limited.send(msg.as_bytes())[0] == 250
    [ticket] = limited.cli_json("tickets", "list")
    assert len(ticket["subject"]) <= 60 and ticket["subject"].startswith("[SEV-3] word0 word1")
    [message] = limited.cli_json("tickets", "show", ticket["ref"])["messages"][:1]
    assert [(a["filename"], a["size"]) for a in message["attachments"]] == [("small0.bin", 500), ("small1.bin", 500)]
    [ack] = capture.wait_for(1)
    assert len(ack.message["Subject"]) < 100


def test_mail_over_the_size_limit_through_import_is_rejected_as_too_large(
        limited: RunningService, tmp_path: Path) -> None:
    box = mailbox.mbox(str(tmp_path / "old.mbox"))
    box.add(make_mail(subject="[SEV-3] huge log", body="line of a log file\n" * 2000))   # 38 kB, limit 20 kB
    box.add(make_mail(subject="[SEV-3] small"))
    box.flush()
    code, out = limited.cli("import", str(tmp_path / "old.mbox"))
    assert code == 0, out
    [record] = limited.cli_json("rejected", "list")
    assert record["reason"] == "too_large" and "20000" in record["detail"]
    assert len(limited.cli_json("tickets", "list")) == 1


def _peak_while(fn) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_mail_of_very_many_small_parts_is_refused_before_it_is_parsed(service: RunningService) -> None:
    """200,000 parts in 2.6 MB: parsed, that is 200,000 objects (hundreds of MB, many seconds)."""
    raw = (HEAD.format(subject="[SEV-3] parts bomb", mid=make_msgid()) + 'Content-Type: multipart/mixed; boundary="z"'
           "\r\n\r\n" + "--z\r\n\r\nx\r\n" * 200_000 + "--z--\r\n").encode()
    envelope = Envelope("smtp", "support@example.com", "ann@acme.example", ("support@example.com",))
    result, peak = _peak_while(lambda: ingest(service.services, raw, envelope))
    assert (result.outcome.value, result.reason) == ("rejected", "too_complex")  # type: ignore[attr-defined]
    assert peak < 8 * len(raw), f"peak {peak / 1e6:.0f} MB for a {len(raw) / 1e6:.1f} MB mail"


UNPACKED = 160 * 1024 * 1024     # 10,240 files of 16 kB, about 1.5 MB packed


@functools.cache
def _zip_of_many_files() -> bytes:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(UNPACKED // 16384):
            archive.writestr(f"logs/{i}.txt", b"0" * 16384)
    return packed.getvalue()


def test_a_zip_of_many_small_files_is_kept_as_one_attachment_and_never_unpacked(service: RunningService) -> None:
    packed = _zip_of_many_files()
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = ("ann@acme.example", "support@example.com",
                                                                 "[SEV-3] logs attached", make_msgid())
    msg.set_content("All the logs.")
    msg.add_attachment(packed, maintype="application", subtype="zip", filename="logs.zip")
    raw = msg.as_bytes()
    envelope = Envelope("smtp", "support@example.com", "ann@acme.example", ("support@example.com",))
    result, peak = _peak_while(lambda: ingest(service.services, raw, envelope))
    assert result.outcome is not None and result.outcome.value == "ticket"  # type: ignore[attr-defined]
    [message] = service.cli_json("tickets", "show", "CASE-1")["messages"][:1]
    assert message["attachments"] == [{"filename": "logs.zip", "content_type": "application/zip",
                                       "size": len(packed)}]
    assert peak < UNPACKED / 4, f"peak {peak / 1e6:.0f} MB for a {len(raw) / 1e6:.1f} MB mail"
