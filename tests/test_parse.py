"""Stage 2, parse: what ParsedEmail holds for real-world, hand-made and hostile mail."""

from __future__ import annotations

import base64
import dataclasses
import os
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intake.html_text import html_to_text
from intake.header_text import message_ids
from intake.parse import (
    Address,
    Limits,
    ParsedEmail,
    UnparseableMail,
    parse_mail,
    sanitize_filename,
    visible_text,
)

MAILS = Path(__file__).parent / "mails"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "public"
CORPUS_EML = sorted(CORPUS.glob("*.eml"))


def _stdlib_email_data() -> Path:
    import test  # the CPython test package; not installed everywhere

    return Path(os.path.dirname(test.__file__)) / "test_email" / "data"


try:
    STDLIB_MSGS = sorted(_stdlib_email_data().glob("msg_*.txt"))
except ImportError:
    STDLIB_MSGS = []


def mail(name: str) -> ParsedEmail:
    return parse_mail((MAILS / name).read_bytes())


def corpus(name: str) -> ParsedEmail:
    return parse_mail((CORPUS / name).read_bytes())


def build(body: str = "Hello.\n", **headers: str) -> bytes:
    """A message factory for cases that need no file of their own."""
    msg = EmailMessage()
    for name, value in {"From": "Ann <ann@example.com>", "Subject": "Hi", **headers}.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


needs_corpus = pytest.mark.skipif(not CORPUS_EML, reason="shared corpus not present")


# --- the public corpus ---------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("path", CORPUS_EML, ids=lambda p: p.name)
def test_every_corpus_mail_parses(path: Path) -> None:
    parsed = parse_mail(path.read_bytes())
    assert parsed.size == path.stat().st_size
    assert parsed.sender.email and parsed.subject


@needs_corpus
def test_outlook_msg_binary_is_unparseable() -> None:
    with pytest.raises(UnparseableMail, match="Outlook"):
        parse_mail((CORPUS / "outlook-msg-binary-not-mime.bin").read_bytes())


@needs_corpus
def test_gb2312_subject_with_gbk_characters_decodes_completely() -> None:
    parsed = corpus("gb2312-encoded-subject-html-only.eml")
    assert parsed.subject.startswith("我把镜头拉近些，你们看看这个是什么")
    assert "\ufffd" not in parsed.subject
    assert parsed.sender == Address("xwfcpggy", "zyb@sgis.com.cn")
    assert len(parsed.to) == 21


@needs_corpus
def test_gb2312_encoded_from_name_and_utf8_body_mislabelled_gb2312() -> None:
    parsed = corpus("gb2312-plain-encoded-from.eml")
    assert parsed.subject == "代开各地增值税发票"
    assert parsed.sender == Address("张先生", "baoguan@hotmail.com")
    assert parsed.body_text.startswith("你好！我公司可代开各类增值税发票")
    assert parsed.to == (Address("", "danglüe@email.com"),)


@needs_corpus
def test_iso8859_q_display_name_with_comma_stays_one_address() -> None:
    parsed = corpus("iso8859-q-name-with-comma.eml")
    assert parsed.sender == Address("LastßlName, FirstName", "comma.name@example.com")
    assert parsed.to == (Address("", "tony.stark@example.com"),)
    assert parsed.cc == (
        Address("", "simple@example.net"),
        Address('John "Johnny" Doe', "john.doe@example.com"),
    )


@needs_corpus
def test_utf8_base64_subject_and_folded_from() -> None:
    parsed = corpus("utf8-b64-subject-and-from-bank-notice.eml")
    assert parsed.subject == "Transferencia Interbancaria Banca en Línea"
    assert parsed.sender.email == "notificaccion-clientes@bbva.mx"
    assert parsed.reply_to == (Address("", "info@alejandrosalcedo.es"),)
    assert parsed.date == datetime(2022, 10, 10, 20, 11, 32, tzinfo=UTC)
    assert parsed.body_text == "Test"  # the text/plain part is blank, so the HTML is used


@needs_corpus
def test_address_in_display_name_is_not_the_address() -> None:
    parsed = corpus("address-as-display-name.eml")
    assert parsed.sender == Address("alice@example.com", "bob@example.com")
    assert parsed.cc == (Address("eve@example.com", "frank@example.com"),)
    assert parsed.reply_to == (Address("henry@example.com", "ivan@example.com"),)
    assert "AddressHeaderDefect" in parsed.defects


@needs_corpus
def test_subject_split_over_encoded_words_and_threading_ids() -> None:
    parsed = corpus("helpdesk-utf-nondecodable.eml")
    assert parsed.subject == "Fwd: Cyklozaměstnavatel - změna vyhodnocení"
    msgid = "CAK0Q_=uQY=3V5iUSgEN16GLtYoJ-6oQu-vYjsgQ=jv6DwOkuLQ@mail.gmail.com"
    assert parsed.in_reply_to == (msgid,) and parsed.references == (msgid,)
    assert parsed.message_id == "00d73ce5-774a-5ea1-6742-af73ef58c01c@example.cz"


@needs_corpus
def test_quoted_printable_body_and_utf8_subject() -> None:
    parsed = corpus("helpdesk-quoted_printable.eml")
    assert parsed.subject == "Český test"
    assert parsed.body_text == "Tohle je test českých písmen odeslaných z gmailu."
    assert parsed.body_html is not None and "<div" in parsed.body_html


@needs_corpus
def test_html_only_gb2312_mail_becomes_text() -> None:
    parsed = corpus("gb2312-encoded-subject-html-only.eml")
    assert parsed.body_html is not None
    assert "<" not in parsed.body_text and "http://go2buy.com.cn/" in parsed.body_text
    assert "\ufffd" not in parsed.body_text


@needs_corpus
def test_inline_image_without_name_is_an_attachment_and_plain_text_wins() -> None:
    parsed = corpus("html-image-text-parts.eml")
    assert parsed.body_text == "Plaintext here."
    assert [(a.filename, a.content_type, a.payload) for a in parsed.attachments] == [
        ("attachment.png", "image/png", b"PNG here")
    ]


@needs_corpus
def test_attachment_without_body() -> None:
    parsed = corpus("helpdesk-blank-body-with-attachment.eml")
    assert parsed.body_text == ""
    assert [(a.filename, a.payload) for a in parsed.attachments] == [("baf", b"You shouldn't see this.\n")]


@needs_corpus
def test_dsn_is_detected_with_the_original_message_id() -> None:
    parsed = corpus("dsn-bounce-multipart-report.eml")
    assert parsed.is_dsn
    assert parsed.dsn_original_message_id == "004801d1fc84$01c934ac$b247f0b7$@infospacemail.com"
    assert parsed.sender.email == "postmaster@netpar.com.br"
    assert "mailbox quota exceeded" in parsed.body_text


@needs_corpus
@pytest.mark.parametrize(
    ("name", "defect"),
    [
        ("malformed-boundary-mismatch-8bit.eml", "StartBoundaryNotFoundDefect"),
        ("malformed-boundary-mismatch-8bit.eml", "MultipartInvariantViolationDefect"),
        ("malformed-nested-multipart-italian.eml", "StartBoundaryNotFoundDefect"),
        ("dsn-bounce-multipart-report.eml", "StartBoundaryNotFoundDefect"),
        ("utf8-b64-subject-and-from-bank-notice.eml", "CloseBoundaryNotFoundDefect"),
    ],
)
def test_malformed_mail_records_its_defects(name: str, defect: str) -> None:
    assert defect in corpus(name).defects


@needs_corpus
def test_part_after_a_reused_boundary_is_recovered() -> None:
    parsed = corpus("malformed-nested-multipart-italian.eml")
    assert parsed.body_text == "--Sent from my iPhone"
    assert [a.filename for a in parsed.attachments] == ["20160523_916527.jpg_.zip"]
    assert parsed.attachments[0].payload.startswith(b"PK")


@needs_corpus
def test_well_formed_mail_has_no_defects() -> None:
    assert corpus("gtube-spam-test.eml").defects == ()


# --- hand-made mails -----------------------------------------------------------------------


def test_html_only_mail_becomes_readable_text() -> None:
    parsed = mail("html-only.eml")
    assert parsed.body_text == (
        "Hello support,\n\nThe portal returns 500 & login fails.\n\n- Since 08:00\n- All users\n\n"
        "See the status page <https://status.example.se/incident/42>.\n\nRegards,\nAnna\n\n"
        "> Old quoted text"
    )
    assert visible_text(parsed.body_text).endswith("Regards,\nAnna")


def test_latin1_body_and_raw_8bit_subject_without_charset() -> None:
    parsed = mail("latin1-no-charset.eml")
    assert parsed.subject == "Grüße aus Köln"
    assert parsed.sender == Address("Hans Müller", "hans@example.de")
    assert "statt Ä, Ö und Ü." in parsed.body_text and parsed.body_text.endswith("Hans Müller")


def test_raw_utf8_headers_decode_and_addresses_are_lower_cased() -> None:
    parsed = mail("utf8-raw-headers-8bit.eml")
    assert parsed.subject == "Fråga om fakturan för mars"
    assert parsed.sender == Address("Åsa Öberg", "asa.oberg@example.se")


def test_bogus_charset_label_still_decodes() -> None:
    parsed = mail("bogus-charset-x-unknown.eml")
    assert parsed.subject == "Café order"
    assert parsed.body_text == "Price: 10 €."


def test_a_charset_name_holding_nul_on_an_8bit_part_is_no_parser_fault() -> None:
    """The stdlib decodes a leaf's 8-bit payload with its charset when the payload is asked for,
    and a NUL in the name raises ValueError there: the MIME walk asks only multiparts."""
    for content_type in (b'text/plain; charset="utf\x00-8"',
                         b'multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset="utf\x00-8"'):
        raw = (b"From: ann@acme.example\r\nSubject: [SEV-3] x\r\nContent-Type: " + content_type
               + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\nCaf\xc3\xa9\r\n--b--\r\n")
        assert "Caf" in parse_mail(raw, limits=Limits(max_mime_depth=5)).body_text


def test_a_name_with_an_encoded_word_that_does_not_decode_keeps_its_address() -> None:
    raw = (b"From: =?utf-8?b?QQQQQ?= <ann@acme.example>\r\nTo: =?utf-8?b?Q?= <bob@acme.example>, carl@acme.example\r\n"
           b"Subject: [SEV-3] x\r\n\r\nhi\r\n")
    parsed = parse_mail(raw)
    assert parsed.sender == Address("=?utf-8?b?QQQQQ?=", "ann@acme.example")
    assert [a.email for a in parsed.to] == ["bob@acme.example", "carl@acme.example"]


def test_message_ids_holding_control_characters_are_dropped() -> None:
    """No reply carries such an id back, and PostgreSQL cannot compare text holding NUL (a bounce's
    attached original is read as it is; the top-level header fields lose their NULs first)."""
    assert message_ids(("<a\x00b@acme.example> <ok@acme.example>", "<c\x7fd@acme.example>")) == ("ok@acme.example",)
    raw = (b"From: ann@acme.example\r\nSubject: x\r\nMessage-ID: <a\x01b@acme.example>\r\n"
           b"In-Reply-To: <c\x1bd@acme.example> <ok@acme.example>\r\n\r\nhi\r\n")
    parsed = parse_mail(raw)
    assert (parsed.message_id, parsed.in_reply_to) == (None, ("ok@acme.example",))


def test_threading_headers_subject_folding_and_all_header_values() -> None:
    parsed = mail("reply-threading-headers.eml")
    assert parsed.message_id == "reply-1@example.com"
    assert parsed.in_reply_to == ("ack-1042@support.example.com",)
    assert parsed.references == ("orig-1@example.com", "ack-1042@support.example.com")
    assert parsed.subject == "Re: [CASE-1042] Printer jams"
    assert parsed.to == (
        Address("Support", "support+tok123@example.com"),
        Address("Dana, Ops", "dana@example.com"),
    )
    assert parsed.cc == (Address("Eve Ö", "eve@example.com"),)
    assert parsed.reply_to == (Address("", "carl.private@example.com"),)
    assert parsed.headers["x-custom"] == ("one", "två")
    assert parsed.date is not None and parsed.date.utcoffset() is not None
    assert parsed.date == datetime(2024, 1, 4, 21, 30, tzinfo=UTC)


def test_attachment_names_are_sanitised() -> None:
    parsed = mail("nested-attachment-path-name.eml")
    assert parsed.body_text == "Please see the attached files."
    assert parsed.body_html == "<p>Please see the attached <i>files</i>.</p>"
    assert [(a.filename, a.content_type) for a in parsed.attachments] == [
        ("passwd", "text/plain"),
        ("x.exe", "application/x-msdownload"),
        ("report Bcc_ victim@example.com.txt", "text/plain"),
        ("Résumé 2024.pdf", "application/pdf"),
        ("attachment.pdf", "application/pdf"),
        ("htaccess", "text/plain"),
        ("attachment.eml", "message/rfc822"),
    ]
    assert parsed.attachments[1].payload.startswith(b"MZ")
    assert parsed.attachments[1].size == len(parsed.attachments[1].payload)


def test_forwarded_message_attachment_is_kept_whole_and_not_read_as_body() -> None:
    parsed = mail("nested-attachment-path-name.eml")
    forwarded = parsed.attachments[-1].payload
    assert b"Message-ID: <forwarded-original@example.net>" in forwarded
    assert "forwarded original" not in parsed.body_text


def test_dsn_with_text_rfc822_headers_names_the_original() -> None:
    parsed = mail("dsn-text-rfc822-headers.eml")
    assert parsed.is_dsn
    assert parsed.dsn_original_message_id == "ack-1042@support.example.com"
    assert parsed.headers["auto-submitted"] == ("auto-replied",)


def test_read_receipt_report_is_not_a_dsn() -> None:
    parsed = mail("read-receipt-not-dsn.eml")
    assert not parsed.is_dsn and parsed.dsn_original_message_id is None


def test_encoded_word_hiding_an_address_is_no_sender_so_return_path_is_used() -> None:
    parsed = mail("encoded-word-hides-from-address.eml")
    assert parsed.sender == Address("", "bounce-123@mailer.example.net")
    assert "InvalidFromAddress" in parsed.defects


@pytest.mark.parametrize(
    ("headers", "envelope", "expected"),
    [
        ({"Sender": "Desk <desk@example.org>"}, None, Address("Desk", "desk@example.org")),
        ({"Return_Path": "<rp@example.org>"}, None, Address("", "rp@example.org")),
        ({}, "Env@Example.org", Address("", "env@example.org")),
        ({}, None, Address("", "")),
    ],
)
def test_sender_falls_back_when_from_is_missing(
    headers: dict[str, str], envelope: str | None, expected: Address
) -> None:
    raw = build(**headers).replace(b"From: Ann <ann@example.com>\n", b"")
    assert parse_mail(raw, envelope_sender=envelope).sender == expected


def test_missing_optional_headers_give_empty_values() -> None:
    parsed = parse_mail(b"Subject: only\n\nbody\n")
    assert (parsed.message_id, parsed.date, parsed.to, parsed.in_reply_to) == (None, None, (), ())
    assert parsed.body_html is None and parsed.body_text == "body"


def test_blank_message_id_is_none_and_unparseable_date_is_none() -> None:
    parsed = parse_mail(b"From: a@example.com\nMessage-ID: <>\nDate: tomorrow at noon\n\nbody\n")
    assert parsed.message_id is None and parsed.date is None


def test_parsed_email_is_frozen_and_headers_read_only() -> None:
    parsed = parse_mail(build())
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.subject = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        parsed.headers["subject"] = ("changed",)  # type: ignore[index]


def test_named_inline_text_is_body_and_named_undeclared_text_is_a_file() -> None:
    raw = b"""From: a@example.com
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain; name=note.txt
Content-Disposition: inline; filename=note.txt

inline words
--b
Content-Type: text/plain; name=log.txt

log line
--b--
"""
    parsed = parse_mail(raw)
    assert parsed.body_text == "inline words"
    assert [a.filename for a in parsed.attachments] == ["log.txt"]


def test_seven_bit_iso_2022_jp_is_not_mistaken_for_utf8() -> None:
    body = "お世話になっております。".encode("iso-2022-jp")
    raw = b"From: a@example.com\nContent-Type: text/plain; charset=ISO-2022-JP\n\n" + body + b"\n"
    assert parse_mail(raw).body_text == "お世話になっております。"


def test_utf16_body_is_decoded_by_its_label() -> None:
    raw = b"From: a@example.com\nContent-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: base64\n\n"
    raw += base64.b64encode("Hej då".encode("utf-16")) + b"\n"
    assert parse_mail(raw).body_text == "Hej då"


def test_gbk_display_name_labelled_gb2312_is_decoded() -> None:
    encoded = "=?gb2312?B?" + base64.b64encode("镕基".encode("gbk")).decode() + "?="
    raw = f"From: {encoded} <zhu@example.cn>\nSubject: {encoded}\n\nx\n".encode()
    parsed = parse_mail(raw)
    assert parsed.sender == Address("镕基", "zhu@example.cn") and parsed.subject == "镕基"


def test_mail_parser_failure_falls_back_to_the_stdlib_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(message: object) -> None:
        raise ValueError("boom")

    monkeypatch.setattr("intake.parse.MailParser", fail)
    parsed = mail("reply-threading-headers.eml")
    assert parsed.defects == ("MailParserError:ValueError",)
    assert parsed.sender == Address("Carl", "carl@example.com")
    assert parsed.to[1] == Address("Dana, Ops", "dana@example.com")
    assert parsed.date == datetime(2024, 1, 4, 21, 30, tzinfo=UTC)


def test_thousands_of_encoded_words_skip_mail_parser_and_still_decode() -> None:
    raw = b"From: a@example.com\nSubject: " + b"=?utf-8?q?ab?= " * 20_000 + b"\n\nbody\n"
    parsed = parse_mail(raw)
    assert parsed.defects == ("TooManyEncodedWords",)
    assert parsed.subject == "ab" * 20_000


def test_oversized_header_section_skips_mail_parser_and_still_parses() -> None:
    raw = b"From: Ann <ann@example.com>\nTo: " + b"x@example.com, " * 10_000 + b"\n\nbody\n"
    parsed = parse_mail(raw)
    assert "OversizedHeaders" in parsed.defects
    assert parsed.sender == Address("Ann", "ann@example.com") and parsed.to[0] == Address("", "x@example.com")


# --- limits --------------------------------------------------------------------------------


def _with_attachments(count: int, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@example.com"
    msg.set_content("see files")
    for i in range(count):
        msg.add_attachment(b"x" * size, maintype="application", subtype="octet-stream", filename=f"f{i}.bin")
    return msg.as_bytes()


def test_attachment_over_the_size_limit_is_dropped_with_a_defect() -> None:
    parsed = parse_mail(_with_attachments(2, 100), max_attachment_bytes=99)
    assert parsed.attachments == ()
    assert parsed.defects == ("AttachmentTooLarge:f0.bin", "AttachmentTooLarge:f1.bin")


def test_attachments_beyond_the_count_limit_are_dropped_with_a_defect() -> None:
    parsed = parse_mail(_with_attachments(5, 10), max_attachments=3)
    assert [a.filename for a in parsed.attachments] == ["f0.bin", "f1.bin", "f2.bin"]
    assert parsed.defects == ("TooManyAttachments",)


def _nested(depth: int) -> bytes:
    head = "".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n" for i in range(depth))
    tail = "".join(f"--b{i}--\n" for i in reversed(range(depth + 1)))
    top = "From: a@example.com\nContent-Type: multipart/mixed; boundary=b0\n\n"
    return f"{top}{head}--b{depth}\n\ndeep\n{tail}".encode()


def test_deep_nesting_is_cut_with_a_defect() -> None:
    parsed = parse_mail(_nested(80))
    assert "NestingTooDeep" in parsed.defects and parsed.body_text == ""


def test_nesting_beyond_the_parser_recursion_limit_parses_headers_only() -> None:
    parsed = parse_mail(_nested(1200))
    assert parsed.sender.email == "a@example.com"
    assert "NestingTooDeep" in parsed.defects


def test_deep_nesting_on_the_stdlib_path_parses_headers_only() -> None:
    raw = _nested(1200).replace(b"From: a@example.com\n", b"From: a@example.com\nX-Words: " + b"=?" * 2001 + b"\n")
    parsed = parse_mail(raw)
    assert parsed.defects == ("TooManyEncodedWords", "NestingTooDeep")
    assert parsed.sender.email == "a@example.com"


# --- sanitising names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\evil\\x.exe", "x.exe"),
        ("a\r\nb.txt", "a b.txt"),
        ("..", "attachment.pdf"),
        (".", "attachment.pdf"),
        ("", "attachment.pdf"),
        ("dir/", "attachment.pdf"),
        ("invoice\u202etxt.exe", "invoicetxt.exe"),
        ("Re\u0301sume\u0301.pdf", "Résumé.pdf"),
        ("a<b>c:d|e?f*g.pdf", "a_b_c_d_e_f_g.pdf"),
        ("\x00\x07.bashrc", "bashrc"),
    ],
)
def test_sanitize_filename(name: str, expected: str) -> None:
    assert sanitize_filename(name, "application/pdf") == expected


def test_long_filename_is_cut_to_200_keeping_the_extension() -> None:
    cut = sanitize_filename("x" * 300 + ".pdf", "application/pdf")
    assert len(cut) == 200 and cut.endswith("x.pdf")


def test_empty_name_of_unknown_type_has_no_extension() -> None:
    assert sanitize_filename("", "application/octet-stream") == "attachment"


# --- what is not a mail --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b" \r\n\r\n", "empty"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "OLE"),
        (b"just some text\nwithout headers\n", "no header"),
        (b"\x00\x01\x02binary", "no header"),
        (b"\r\nSubject: after a blank line\n\nbody", "no header"),
    ],
)
def test_not_a_mail_is_unparseable(raw: bytes, reason: str) -> None:
    with pytest.raises(UnparseableMail, match=reason):
        parse_mail(raw)


def test_mbox_from_line_before_the_headers_is_accepted() -> None:
    raw = b"From ann@example.com Mon Jan  1 00:00:00 2024\n" + build()
    assert parse_mail(raw).sender.email == "ann@example.com"


def test_nul_bytes_and_8bit_in_headers_do_not_break_parsing() -> None:
    raw = b"From: a\x00b <x@example.com>\nSubject: \xff\xfe\x00 odd\nTo: \x80@\x81\n\nbo\x00dy\n"
    parsed = parse_mail(raw)
    assert parsed.sender.email == "x@example.com"
    assert "odd" in parsed.subject


def test_nul_never_reaches_text_fields() -> None:
    raw = b"From: a@example.com\nSubject: =?utf-8?q?a=00b?=\nX-Raw: c\x00d\n\ntext\n"
    parsed = parse_mail(raw)
    assert parsed.subject == "ab" and parsed.headers["x-raw"] == ("cd",)


def test_binary_after_a_header_line_is_a_file_not_body_text() -> None:
    blob = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64
    parsed = parse_mail(b"Subject: [SEV-3] no subject\r\n" + blob)
    assert parsed.body_text == ""
    assert [(a.filename, a.size) for a in parsed.attachments] == [("attachment.txt", len(blob))]
    assert "BinaryTextPart" in parsed.defects


def test_malformed_content_type_of_a_file_becomes_octet_stream() -> None:
    raw = b"From: a@example.com\nContent-Type: image/p\x00ng\nContent-Disposition: attachment\n\nxx\n"
    assert parse_mail(raw).attachments[0].content_type == "application/octet-stream"


@pytest.mark.skipif(not STDLIB_MSGS, reason="CPython test/test_email/data is not installed")
@pytest.mark.parametrize("path", STDLIB_MSGS, ids=lambda p: p.name)
def test_stdlib_test_messages_parse_or_are_unparseable(path: Path) -> None:
    try:
        parse_mail(path.read_bytes())
    except UnparseableMail as exc:
        assert not str(exc).startswith("internal error")


# --- visible_text --------------------------------------------------------------------------

VISIBLE_CASES = {
    "english-gmail": (
        "Thanks, that fixed it.\n\nOn Mon, Jan 1, 2024 at 10:00 AM Support <support@example.com> wrote:\n"
        "> Please restart the service.\n>\n> Regards\n",
        "Thanks, that fixed it.",
    ),
    "english-wrapped-attribution": (
        "Works now.\n\nOn Mon, 1 Jan 2024 at 10:00, Support Team of Example Incorporated <\n"
        "support@example.com> wrote:\n\n> Did it work?\n",
        "Works now.",
    ),
    "swedish": (
        "Hej,\n\nDet fungerar inte.\n\nMvh\nAnna\n\nDen mån 1 jan. 2024 kl 10:00 skrev Support <support@example.com>:\n"
        "> Hej Anna,\n> prova igen.\n",
        "Hej,\n\nDet fungerar inte.\n\nMvh\nAnna",
    ),
    "german": (
        "Hallo,\n\nes geht wieder.\n\nAm 01.01.2024 um 10:00 schrieb Support <support@example.com>:\n"
        "> Bitte neu starten.\n",
        "Hallo,\n\nes geht wieder.",
    ),
    "outlook-original-message": (
        "Please see below.\n\n-----Original Message-----\nFrom: Support\nSent: Monday, January 1, 2024 10:00 AM\n"
        "To: Carl\nSubject: RE: printer\n\nOld text\n",
        "Please see below.",
    ),
    "outlook-from-sent-block": (
        "Still broken.\n\nCarl Svensson\nIT\n\n________________________________\nFrom: Support <support@example.com>\n"
        "Sent: den 1 januari 2024 10:00\nTo: Carl\nSubject: printer\n\nOld text, not quoted\n",
        "Still broken.\n\nCarl Svensson\nIT",
    ),
    "outlook-swedish-block": (
        "Tack!\n\nFrån: Support <support@example.com>\nSkickat: den 1 januari 2024 10:00\nTill: Carl\n"
        "Ämne: Re: skrivare\n\nGammal text\n",
        "Tack!",
    ),
    "trailing-quote-keeps-signature": (
        "Yes, please close it.\n\n-- \nCarl Svensson\nExample AB\n\n> Can we close the case?\n> Support\n",
        "Yes, please close it.\n\n-- \nCarl Svensson\nExample AB",
    ),
    "inline-answers-keep-the-questions-they-answer": (
        "On Mon, Jan 1, 2024 Support wrote:\n> Which version?\n4.2\n> Which OS?\nLinux\n\n> Thanks\n",
        "On Mon, Jan 1, 2024 Support wrote:\n> Which version?\n4.2\n> Which OS?\nLinux",
    ),
    "forwarded-message-is-content": (
        "FYI\n\n---------- Forwarded message ---------\nFrom: Boss <boss@example.com>\nDate: Mon, 1 Jan 2024\n"
        "Subject: outage\n\nEverything is down.\n",
        "FYI\n\n---------- Forwarded message ---------\nFrom: Boss <boss@example.com>\nDate: Mon, 1 Jan 2024\n"
        "Subject: outage\n\nEverything is down.",
    ),
    "crlf-line-ends": ("Fine.\r\n\r\nOn Mon, Jan 1, 2024 Bo wrote:\r\n> ok?\r\n", "Fine."),
    "no-history": ("Just a question.\n", "Just a question."),
}


@pytest.mark.parametrize(("body", "expected"), VISIBLE_CASES.values(), ids=VISIBLE_CASES.keys())
def test_visible_text_trims_quoted_history(body: str, expected: str) -> None:
    assert visible_text(body) == expected


def test_visible_text_never_empties_a_body_that_starts_with_history() -> None:
    body = "-----Original Message-----\nFrom: x\nSent: y\n\nforwarded words\n"
    assert visible_text(body) == body.strip("\n")


def test_visible_text_on_the_corpus_outlook_layout() -> None:
    if not CORPUS_EML:
        pytest.skip("shared corpus not present")
    assert visible_text(corpus("helpdesk-forwarded-message.eml").body_text) == "This is email body"


# --- only UnparseableMail escapes, whatever the bytes ----------------------------------------


def _parses_or_unparseable(raw: bytes) -> None:
    try:
        parsed = parse_mail(raw)
    except UnparseableMail as exc:
        assert not str(exc).startswith("internal error"), exc.__cause__
        return
    assert parsed.size == len(raw)
    texts = [parsed.subject, parsed.body_text, parsed.body_html or ""]
    texts += [value for values in parsed.headers.values() for value in values]
    texts += [a.name + a.email for a in (parsed.sender, *parsed.to, *parsed.cc, *parsed.reply_to)]
    assert not any("\x00" in text for text in texts)
    for attachment in parsed.attachments:
        assert not set(attachment.filename) & set("/\\\r\n\x00") and attachment.filename[:1] not in ("", ".")
    assert parsed.date is None or parsed.date.tzinfo is not None
    visible_text(parsed.body_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    _parses_or_unparseable(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_after_a_header_never_raise(tail: bytes) -> None:
    _parses_or_unparseable(b"From: a@example.com\n" + tail)


CHARSETS = st.sampled_from(["utf-8", "gb2312", "iso-8859-1", "x-unknown", "utf-16", "base64", "", "us-ascii\x00"])
TYPES = st.sampled_from(["text/plain", "text/html", "application/pdf", "message/rfc822", "image/png",
                         "message/delivery-status", "text/rfc822-headers", "multipart/mixed", "bogus"])
CTES = st.sampled_from(["", "base64", "quoted-printable", "8bit", "x-uuencode", "bogus"])
NAMES = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["../../x", "=?utf-8?B?//79?=", "a\r\nb"]))
HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["=?gb2312?B?ztKw0b61?=", "=?x-bad?Q?=FF=FE?=", "=?utf-8?B?bad!!?=", "<a@b> <c@d>",
                     "\"q, r\" <q@r>", "a@b <c@d>", "=?utf-8?q?x?= <@>", "<>", ":;", "(((((", "=?"]),
)


@st.composite
def mime_parts(draw: st.DrawFn, depth: int = 0) -> str:
    ctype = draw(TYPES)
    params = f'; charset="{draw(CHARSETS)}"'
    name = draw(NAMES)
    disposition = draw(st.sampled_from(["", "inline", "attachment"]))
    lines = [f"Content-Type: {ctype}{params}"]
    if name is not None:
        lines.append(f'Content-Disposition: {disposition or "attachment"}; filename="{name}"')
    elif disposition:
        lines.append(f"Content-Disposition: {disposition}")
    if cte := draw(CTES):
        lines.append(f"Content-Transfer-Encoding: {cte}")
    if ctype == "multipart/mixed" and depth < 3:
        boundary = draw(st.sampled_from(["b1", "b2", "=_x", ""]))
        subtype = draw(st.sampled_from(["mixed", "alternative", "report"]))
        lines[0] = f'Content-Type: multipart/{subtype}; boundary="{boundary}"'
        children = draw(st.lists(mime_parts(depth + 1), max_size=3))
        close = draw(st.sampled_from([f"--{boundary}--", "", "--other--"]))
        body = "".join(f"--{draw(st.sampled_from([boundary, 'b1', 'zz']))}\n{child}\n" for child in children) + close
    else:
        body = draw(st.text(max_size=120))
    return "\n".join(lines) + "\n\n" + body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(st.sampled_from(["From", "To", "Cc", "Subject", "Message-ID", "References",
                                                "Date", "Reply-To", "Sender", "X-Any"]), HEADER_VALUES),
                     max_size=8),
    top=mime_parts(),
    encoding=st.sampled_from(["utf-8", "latin-1", "gb18030"]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_random_mime_structures_never_raise(
    headers: list[tuple[str, str]], top: str, encoding: str, newline: str
) -> None:
    text = "".join(f"{name}: {value}\n" for name, value in [("From", "x@example.com"), *headers]) + top
    _parses_or_unparseable(text.replace("\n", newline).encode(encoding, "replace"))


HTML_TOKENS = st.sampled_from([
    "<p>", "</p>", "<pre>", "</pre>", "<blockquote>", "</blockquote>", "<![if x]>", "<![foo[", "]]>", "<!--", "-->",
    "<a href='https://x'>", "</a>", "<br/>", "<script>", "</script>", "&amp;", "&#xffffffff;", "&#0;", "<", ">",
    "text", "\n", "<!DOCTYPE", "<?php", "<li>", "<td>", "<style>", "</style>",
])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(HTML_TOKENS, max_size=40).map("".join)))
def test_html_to_text_never_raises_on_broken_markup(html: str) -> None:
    assert isinstance(html_to_text(html), str)


def test_unknown_marked_section_does_not_break_html_conversion() -> None:
    assert html_to_text("<p>before</p><![foo[ x ]]><p>after</p>") == "before\n\nafter"


def _with_attachment(body: bytes) -> bytes:
    return (b"From: a@example.com\r\nSubject: [SEV-3] file\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n'
            b'--b\r\nContent-Type: application/octet-stream; name="f.bin"\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="f.bin"\r\n\r\n' + body + b"\r\n--b--\r\n")


def _stdlib_attachment(raw: bytes) -> bytes:
    from email import message_from_bytes
    return message_from_bytes(raw).get_payload()[1].get_payload(decode=True)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), width=st.sampled_from([4, 60, 76]), newline=st.sampled_from([b"\n", b"\r\n"]),
       damage=st.lists(st.tuples(st.integers(min_value=0), st.sampled_from([b"=", b" ", b"*", b"\t", b"==", b"A"])),
                       max_size=2),
       cut=st.integers(min_value=0, max_value=3))
def test_base64_attachments_decode_as_the_stdlib_decodes_them(data: bytes, width: int, newline: bytes,
                                                              damage: list[tuple[int, bytes]], cut: int) -> None:
    text = base64.b64encode(data)
    body = newline.join(text[i:i + width] for i in range(0, len(text), width))
    for position, junk in damage:
        position %= len(body) + 1
        body = body[:position] + junk + body[position:]
    body = body[:len(body) - cut] if cut < len(body) else body
    raw = _with_attachment(body)
    attachments = parse_mail(raw).attachments
    assert [a.payload for a in attachments] == [_stdlib_attachment(raw)]


def test_an_attachment_with_8bit_bytes_and_a_bogus_charset_is_decoded_the_stdlib_way() -> None:
    raw = (b'From: x@example.com\nContent-Type: text/plain; charset="us-ascii\x00"\nContent-Disposition: attachment\n'
           b"Content-Transfer-Encoding: base64\n\n\xc2\x80QUJD\n")
    [attachment] = parse_mail(raw).attachments
    assert attachment.payload == message_from_bytes(raw).get_payload(decode=True)


def test_a_large_attachment_is_parsed_in_about_three_times_its_size() -> None:
    """The tree is fed to the parser in blocks and base64 decoded in one step: at 5 MB the peak was
    ~8x the mail with message_from_bytes and get_payload(decode=True)."""
    import tracemalloc

    raw = _with_attachment(base64.encodebytes(os.urandom(2_000_000)).replace(b"\n", b"\r\n"))
    tracemalloc.start()
    try:
        parsed = parse_mail(raw, max_attachment_bytes=10_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parsed.attachments[0].payload == _stdlib_attachment(raw)
    assert peak < 3.5 * len(raw), f"{peak / len(raw):.1f}x"
