"""Large base64 bodies cut out before the tree is built: the mail parses to exactly what it
parses to whole, whatever the mail, and the cut is taken where it can be."""
from __future__ import annotations

import base64
import functools
import os
import random
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sqlalchemy import delete, func, select

import intake.parse as parse_module
from intake.large_parts import Base64Body, skeleton
from intake.parse import ParsedEmail, UnparseableMail, parse_mail
from intake.pipeline import Services, accept, ingest, process
from models import Attachment, InboundMail, InboundRaw, InboundStatus, blobs
from tests.test_fuzz import ENVELOPE, mutated_corpus_mail, weird_mail
from tests.test_parse import CORPUS_EML, MAILS, STDLIB_MSGS

EXAMPLES = int(os.environ.get("INTAKE_FUZZ_EXAMPLES", "300"))


def parsed(raw: bytes, monkeypatch: pytest.MonkeyPatch, *, cut_from: int | None) -> ParsedEmail | str:
    """parse_mail with bodies cut from `cut_from` bytes on (None: never cut); a refusal as its text."""
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "skeleton",
                      (lambda raw: None) if cut_from is None else functools.partial(skeleton, smallest=cut_from))
        try:
            return parse_mail(raw, max_attachment_bytes=2**30, max_attachments=1000)
        except UnparseableMail as refused:
            return f"{type(refused).__name__}: {refused}"


def tree_was_cut(raw: bytes, monkeypatch: pytest.MonkeyPatch, cut_from: int = 64) -> bool:
    with monkeypatch.context() as patch:
        patch.setattr(parse_module, "skeleton", functools.partial(skeleton, smallest=cut_from))
        return parse_module._parse_tree(raw).cut is not None


def attachment_mail(*, kind: str = "application/pdf", size: int = 3000, forwarded: bool = False,
                    encoding: str = "base64") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "Ann <ann@example.com>", "support@example.com", "[SEV-2] File"
    msg.set_content("See the file.\n")
    payload = random.Random(size).randbytes(size)
    maintype, subtype = kind.split("/")
    msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename="report.bin", cte=encoding)
    if not forwarded:
        return msg.as_bytes()
    outer = EmailMessage()
    outer["From"], outer["Subject"] = "Bob <bob@example.com>", "[SEV-3] Fwd"
    outer.set_content("Forwarded.\n")
    outer.add_attachment(msg)
    return outer.as_bytes()


def test_a_large_attachment_is_cut_out_and_decoded_from_the_raw_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = attachment_mail(size=300_000)
    whole = parsed(raw, monkeypatch, cut_from=None)
    assert tree_was_cut(raw, monkeypatch, cut_from=256 * 1024)
    assert parse_mail(raw, max_attachment_bytes=2**30) == whole
    assert isinstance(whole, ParsedEmail)
    assert whole.attachments[0].payload == random.Random(300_000).randbytes(300_000)


@pytest.mark.parametrize("raw, cut", [
    (attachment_mail(), True),
    (attachment_mail(kind="image/png"), True),
    (attachment_mail(kind="text/plain"), False),               # text is read as a body: kept whole
    (attachment_mail(encoding="quoted-printable"), False),     # only base64 is cut
    (attachment_mail(forwarded=True), False),                  # inside an attached message: kept whole
], ids=["pdf", "png", "text", "quoted-printable", "forwarded"])
def test_what_is_cut_and_what_is_kept_whole_parse_to_the_same(raw: bytes, cut: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert tree_was_cut(raw, monkeypatch) is cut
    assert parsed(raw, monkeypatch, cut_from=64) == parsed(raw, monkeypatch, cut_from=None)


def test_a_delimiter_of_a_boundary_that_does_not_enclose_the_part_leaves_the_mail_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The part runs on past a delimiter line of a boundary declared elsewhere: the marker is no
    longer the whole body, so the skeleton is not taken."""
    body = base64.encodebytes(bytes(range(256)) * 8).replace(b"\n", b"\r\n")
    raw = (b"From: a@example.com\r\nSubject: x\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
           b"--outer\r\nContent-Type: text/plain; boundary=other\r\n\r\nhello\r\n"
           b"--outer\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + body + b"--other\r\n" + body + b"--outer--\r\n")
    assert not tree_was_cut(raw, monkeypatch)
    assert parsed(raw, monkeypatch, cut_from=64) == parsed(raw, monkeypatch, cut_from=None)


CASES = [*CORPUS_EML, *sorted(MAILS.glob("*.eml")), *STDLIB_MSGS]


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_every_sample_mail_parses_the_same_with_every_body_cut(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = path.read_bytes()
    assert parsed(raw, monkeypatch, cut_from=1) == parsed(raw, monkeypatch, cut_from=None)


@st.composite
def base64_part(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["application/pdf", "image/png", "text/plain", "message/rfc822", "multipart/mixed"]))
    encoding = draw(st.sampled_from(["base64", "Base64", "base64 ", "7bit"]))
    data = base64.encodebytes(draw(st.binary(max_size=300)))
    data = draw(st.sampled_from([data, data.replace(b"\n", b"\r\n"), data.rstrip(b"=\n") + b"\n", data + b"\n\n",
                                 data[:-2] + b"!\n"]))
    return f"Content-Type: {kind}; name=a.bin\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n".encode() + data


@st.composite
def tree(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.sampled_from(["b1", "b2", "=_x", "b1--"]))
        children = draw(st.lists(tree(depth + 1), max_size=4))
        closing = draw(st.sampled_from([b"--\r\n", b"\r\n", b"", b"--\r\ntrailer\r\n--b1\r\n" + children[0]
                                        if children else b"--\r\n"]))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + child + b"\r\n" for child in children)
        return (f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n').encode() + body + \
            b"--" + boundary.encode() + closing
    return draw(base64_part())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(tree().map(lambda part: b"From: a@example.com\r\nSubject: [SEV-2] x\r\n" + part),
                 weird_mail(), mutated_corpus_mail()))
def test_any_mail_parses_the_same_with_every_body_cut(raw: bytes) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert parsed(raw, monkeypatch, cut_from=1) == parsed(raw, monkeypatch, cut_from=None)


@pytest.mark.integration
def test_a_large_mail_and_its_attachment_are_stored_and_read_back_byte_for_byte(services: Services) -> None:
    """Over models/blobs.py's LARGE, SQLite writes and reads the values in pieces; both databases
    keep exactly the bytes (a piece boundary lost or doubled would show)."""
    size = blobs.PIECE * 2 + 12_345            # the attachment and the mail span several pieces
    raw = attachment_mail(size=size).replace(b"\n", b"\r\n")
    result = ingest(services, raw, ENVELOPE)
    assert result.outcome == "ticket"
    with services.sessions() as session:
        assert blobs.stored_raw(session, result.inbound_id) == raw
        stored = session.scalars(select(Attachment)).one()
        assert stored.size == size and stored.data == random.Random(size).randbytes(size)
        assert blobs.stored_raw(session, result.inbound_id + 1) is None


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=3000), st.integers(4, 120), st.integers(1, 500), st.sampled_from([b"\r\n", b"\n"]))
def test_a_cut_body_decodes_to_the_same_bytes_whole_and_in_pieces(data: bytes, line: int, piece: int,
                                                                   newline: bytes) -> None:
    text = base64.b64encode(data)
    body = b"".join(text[i:i + line] + newline for i in range(0, len(text), line))
    raw = b"head\r\n" + body + b"--tail"
    cut = Base64Body(raw, 6, 6 + len(body))
    assert len(cut) == len(data) and bytes(cut) == data and cut == data
    assert b"".join(cut.pieces(piece)) == data


@pytest.mark.integration
def test_a_postgresql_connection_that_carried_a_large_mail_is_not_kept_in_the_pool(services: Services,
                                                                                 db_url: str) -> None:
    """libpq keeps its buffers at the largest size they carried; such a connection is closed on its
    way back to the pool, one that carried small values is kept."""
    if db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's client buffers")
    small = ingest(services, attachment_mail(size=1000).replace(b"\n", b"\r\n"), ENVELOPE)
    large = ingest(services, attachment_mail(size=blobs.LARGE).replace(b"\n", b"\r\n"), ENVELOPE)

    def backend_after_reading(inbound_id: int) -> tuple[int, int]:
        with services.sessions() as session:
            blobs.stored_raw(session, inbound_id)
            before = session.scalar(select(func.pg_backend_pid()))
        with services.sessions() as session:
            return before, session.scalar(select(func.pg_backend_pid()))

    kept, again = backend_after_reading(small.inbound_id)
    assert kept == again
    swollen, fresh = backend_after_reading(large.inbound_id)
    assert swollen != fresh


@pytest.mark.integration
def test_a_received_mail_whose_bytes_are_missing_is_quarantined_not_rejected_as_empty(services: Services) -> None:
    """Only a damaged database loses a mail's bytes (they are stored with its row): the mail then
    says so in quarantine, where an administrator looks, instead of passing for an empty mail."""
    stored = accept(services, attachment_mail().replace(b"\n", b"\r\n"), ENVELOPE)
    with services.sessions() as session, session.begin():
        session.execute(delete(InboundRaw).where(InboundRaw.inbound_id == stored.inbound_id))
    assert process(services, stored.inbound_id).metric_outcome == "quarantined"
    with services.sessions() as session:
        inbound = session.get(InboundMail, stored.inbound_id)
        assert inbound is not None and inbound.status is InboundStatus.QUARANTINED
        assert "missing from inbound_raw" in (inbound.error or "")
