"""Outgoing message construction: headers, MIME structure and injection safety."""

from __future__ import annotations

import base64
import email
import re
from datetime import UTC
from email import policy
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifications.message import _verify_header_block, build_message, header_text, new_message_id

FROM = "Example Support <support@example.com>"
MSG_ID = "<abc123.1795310278@example.com>"
BASE_HEADERS = {
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "content-transfer-encoding", "auto-submitted", "x-auto-response-suppress",
}  # fmt: skip


def build(**overrides: object) -> bytes:
    kwargs: dict[str, object] = {
        "from_addr": FROM,
        "to": ["Dana Scully <dana@customer.example>"],
        "subject": "[CASE-12] Replication lag",
        "text": "Hello Dana,\n\nWe are on it.\n",
        "message_id": MSG_ID,
    }
    kwargs.update(overrides)
    return build_message(**kwargs)  # type: ignore[arg-type]


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def content(part: MIMEPart) -> str:
    """Decoded content with the wire CRLF turned back into newlines."""
    return str(part.get_content()).replace("\r\n", "\n")


def header_names(message: EmailMessage) -> set[str]:
    return {name.lower() for name in message.keys()}


# -- structure -------------------------------------------------------------------------


def test_plain_message_headers_and_body() -> None:
    message = parse(build())

    assert header_names(message) == BASE_HEADERS
    assert message["From"].addresses[0].addr_spec == "support@example.com"
    assert message["From"].addresses[0].display_name == "Example Support"
    assert message["To"].addresses[0].addr_spec == "dana@customer.example"
    assert message["Subject"] == "[CASE-12] Replication lag"
    assert message["Message-ID"] == MSG_ID
    assert message["MIME-Version"] == "1.0"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["X-Auto-Response-Suppress"] == "All"
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert content(message) == "Hello Dana,\n\nWe are on it.\n"


def test_date_is_aware() -> None:
    date = parse(build())["Date"].datetime

    assert date.tzinfo is not None
    assert date.utcoffset() == UTC.utcoffset(None)


def test_lines_end_with_crlf_only() -> None:
    raw = build(text="one\ntwo\r\nthree\n", html="<p>x</p>\n")

    assert b"\r\n" in raw
    assert re.search(rb"(?<!\r)\n", raw) is None


def test_html_makes_multipart_alternative() -> None:
    message = parse(build(html="<p>Hello <b>Dana</b></p>\n"))

    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert content(parts[1]) == "<p>Hello <b>Dana</b></p>\n"
    assert header_names(message) == BASE_HEADERS - {"content-transfer-encoding"}
    assert all("MIME-Version" not in part for part in parts)


def test_non_ascii_body_is_seven_bit_safe() -> None:
    raw = build(text="Hej Åsa, vi återkommer.\n")

    assert raw.isascii()
    assert content(parse(raw)) == "Hej Åsa, vi återkommer.\n"


def test_non_ascii_subject_and_display_name_are_encoded() -> None:
    raw = build(subject="Ärende: Störning i produktion", to=["Zoë Åström <zoe@customer.example>"])
    message = parse(raw)

    assert raw.split(b"\r\n\r\n", 1)[0].isascii()
    assert b"=?utf-8?" in raw
    assert message["Subject"] == "Ärende: Störning i produktion"
    assert message["To"].addresses[0].display_name == "Zoë Åström"


def test_internationalised_domain_becomes_idna() -> None:
    message = parse(build(to=["kund@bücher.example"]))

    assert message["To"].addresses[0].addr_spec == "kund@xn--bcher-kva.example"


def test_a_local_part_outside_ascii_is_written_as_utf8_and_nothing_else_is() -> None:
    """RFC 6532: such an address stands in the header as UTF-8 (the relay must offer SMTPUTF8);
    the subject and display names stay encoded words, and the domain IDNA."""
    raw = build(subject="Grüße", to=["Jörg Müller <jörg.müller@bücher.example>"], cc=["zoë@customer.example"])
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    message = email.message_from_string(raw.decode("utf-8"), policy=policy.default)

    assert "To: =?utf-8?b?" in head and " <jörg.müller@xn--bcher-kva.example>" in head
    assert "Cc: zoë@customer.example" in head
    assert [line for line in head.split("\r\n") if not line.isascii()] == [
        line for line in head.split("\r\n") if line.startswith(("To:", "Cc:"))]
    assert message["To"].addresses[0].addr_spec == "jörg.müller@xn--bcher-kva.example"
    assert message["Subject"] == "Grüße"


@pytest.mark.parametrize(("names", "header", "passes"), [
    (["To"], "To: jörg@acme.example", True),
    (["To"], "To: a@acme.example,\r\n jörg@acme.example", True),      # a continuation of an address field
    (["Subject"], "Subject: Grüße", False),                              # text goes as encoded words
    (["Subject", "To"], "Subject: x\r\n Grüße\r\nTo: a@acme.example", False),
    (["To"], "To: jörg\u2028@acme.example", False),
    (["To"], "To: jörg\x85@acme.example", False),
])
def test_the_header_guard_allows_utf8_in_addresses_only(names: list[str], header: str, passes: bool) -> None:
    if passes:
        _verify_header_block(names, header)
    else:
        with pytest.raises(ValueError):
            _verify_header_block(names, header)


def test_long_subject_is_folded_within_limits() -> None:
    subject = "Replication " * 120 + "x" * 1200
    raw = build(subject=subject)

    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert parse(raw)["Subject"] == subject.strip()


def test_cc_and_reply_to() -> None:
    message = parse(
        build(
            cc=["Fox <fox@customer.example>", "ops@customer.example"],
            reply_to="support+k3j9x@example.com",
        )
    )

    assert [a.addr_spec for a in message["Cc"].addresses] == ["fox@customer.example", "ops@customer.example"]
    assert message["Reply-To"].addresses[0].addr_spec == "support+k3j9x@example.com"
    assert header_names(message) == BASE_HEADERS | {"cc", "reply-to"}


def test_cc_only_is_enough() -> None:
    message = parse(build(to=[], cc=["ops@customer.example"]))

    assert "To" not in message
    assert message["Cc"].addresses[0].addr_spec == "ops@customer.example"


def test_no_recipient_is_refused() -> None:
    with pytest.raises(ValueError, match="recipient"):
        build(to=[])


def test_single_string_recipient_is_refused() -> None:
    with pytest.raises(TypeError):
        build(to="dana@customer.example")


# -- threading ---------------------------------------------------------------------------


def test_threading_headers_are_bracketed_and_in_reply_to_closes_references() -> None:
    message = parse(build(in_reply_to="parent@mail.customer.example", references=["<root@x.example>", "mid@x.example"]))

    assert message["In-Reply-To"] == "<parent@mail.customer.example>"
    assert message["References"] == "<root@x.example> <mid@x.example> <parent@mail.customer.example>"


def test_invalid_reply_ids_are_dropped() -> None:
    message = parse(
        build(
            in_reply_to="has space@x",
            references=[
                "<ok@x>",
                "bad\r\nBcc: evil@x",
                "nul\x00@x",
                "<a<b@x>",
                "<=?utf-8?q?=0D=0A?=@x>",
                "",
                "x" * 300,
            ],
        )
    )

    assert "In-Reply-To" not in message
    assert message["References"] == "<ok@x>"


def test_duplicate_references_are_kept_once() -> None:
    message = parse(build(in_reply_to="<b@x>", references=["<a@x>", "<b@x>", "a@x"]))

    assert message["References"] == "<a@x> <b@x>"


@pytest.mark.parametrize("bad", ["no brackets here", "<a\r\nBcc: x@y>", "", "<>"])
def test_invalid_own_message_id_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="Message-ID"):
        build(message_id=bad)


def test_own_message_id_gets_brackets() -> None:
    assert parse(build(message_id="abc@example.com"))["Message-ID"] == "<abc@example.com>"


# -- auto-submitted and extra headers ----------------------------------------------------------


def test_human_mail_is_not_marked_auto_submitted() -> None:
    message = parse(build(auto_submitted=None))

    assert header_names(message) == BASE_HEADERS - {"auto-submitted", "x-auto-response-suppress"}


def test_auto_submitted_no_does_not_suppress_auto_responses() -> None:
    message = parse(build(auto_submitted="no"))

    assert message["Auto-Submitted"] == "no"
    assert "X-Auto-Response-Suppress" not in message


def test_extra_headers_are_added_and_cleaned() -> None:
    message = parse(build(extra_headers={"X-Case-Ref": "CASE-12\r\nBcc: evil@x"}))

    assert message["X-Case-Ref"] == "CASE-12  Bcc: evil@x"
    assert header_names(message) == BASE_HEADERS | {"x-case-ref"}


@pytest.mark.parametrize("name", ["Bcc", "subject", "Content-Disposition", "X Bad", "X-Bad:", "X-\r\nBcc", ""])
def test_extra_headers_cannot_replace_managed_or_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        build(extra_headers={name: "value"})


# -- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "dana@customer.example\r\nBcc: evil@x.example",
        "Dana\r\n <dana@customer.example>",
        "Dana\n<dana@customer.example>",
        "dana\u2028@customer.example",
        "no-at-sign",
        "Dana <>",
        "",
        "a@x.example, b@x.example",
        "dana smith@customer.example",
        '"zo ë"@customer.example',          # outside ASCII, only as a plain dot-atom
        "zoë\x85@customer.example",
        "zoë\u00a0x@customer.example",
    ],
)
@pytest.mark.parametrize("field", ["from_addr", "to", "cc", "reply_to"])
def test_bad_addresses_raise(field: str, bad: str) -> None:
    value: object = [bad] if field in ("to", "cc") else bad

    with pytest.raises(ValueError):
        build(**{field: value})


# -- header injection --------------------------------------------------------------------------

INJECTIONS = [
    "x\r\nBcc: evil@attacker.example",
    "x\nBcc: evil@attacker.example",
    "x\rBcc: evil@attacker.example",
    "x\r\n\r\nInjected body",
    "x\x00Bcc: evil@attacker.example",
    "x\x0bBcc: evil@attacker.example",
    "x\x85Bcc: evil@attacker.example",
    "x\u2028Bcc: evil@attacker.example",
    "=?utf-8?q?x=0D=0ABcc:_evil@attacker.example?=",
    "=?utf-8?b?eA0KQmNjOiBldmlsQGF0dGFja2VyLmV4YW1wbGU=?=",
    "=?utf-8?q?=0D=0A=0D=0AInjected_body?=",
    "=?utf-8?q?x=00Bcc:_evil@attacker.example?=",
    # decoding once reveals another encoded word
    "=?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3D0D=3D0ABcc:=5Fevil@attacker.example=3F=3D?=",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_subject_cannot_inject_headers(payload: str) -> None:
    message = parse(build(subject=payload))

    assert header_names(message) == BASE_HEADERS
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert content(message) == "Hello Dana,\n\nWe are on it.\n"


RAW_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["to", "from_addr", "reply_to", "cc"])
def test_display_names_cannot_inject_headers(field: str, payload: str) -> None:
    """A raw line break in an address is refused; anything else is cleaned."""
    quoted = '"' + payload.replace("\\", "\\\\").replace('"', '\\"') + '" <named@customer.example>'
    value: object = [quoted] if field in ("to", "cc") else quoted
    expected = BASE_HEADERS | ({field.removesuffix("_addr").replace("_", "-")} - {"from"})

    if RAW_LINE_BREAK.search(payload):
        with pytest.raises(ValueError, match="line break"):
            build(**{field: value})
        return
    message = parse(build(**{field: value}))

    assert header_names(message) == expected
    for name in ("From", "To", "Cc", "Reply-To"):
        if name in message:
            assert all("\n" not in a.display_name for a in message[name].addresses)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_auto_submitted_cannot_inject_headers(payload: str) -> None:
    assert header_names(parse(build(auto_submitted="auto-replied" + payload))) == BASE_HEADERS


def test_header_text_decodes_and_flattens() -> None:
    assert header_text("=?utf-8?q?x=0D=0ABcc:_evil@x?=") == "x  Bcc: evil@x"
    assert header_text(" =?utf-8?q?caf=C3=A9?= \r\n") == "café"
    assert header_text("lone \udcff surrogate") == "lone \ufffd surrogate"


def test_header_text_stops_decoding_deeply_nested_words() -> None:
    value = "=?utf-8?q?x=0D=0ABcc:_evil@x?="
    for _ in range(12):
        value = "=?utf-8?b?" + base64.b64encode(value.encode()).decode() + "?="

    cleaned = header_text(value)

    assert "=?" not in cleaned
    assert header_names(parse(build(subject=value))) == BASE_HEADERS


# -- message ids -------------------------------------------------------------------------------


def test_new_message_id_form_and_uniqueness() -> None:
    ids = {new_message_id("example.com") for _ in range(2000)}

    assert len(ids) == 2000
    for msg_id in list(ids)[:20]:
        assert re.fullmatch(r"<[0-9a-f]{32}\.\d{10,}@example\.com>", msg_id)


@pytest.mark.parametrize(
    ("domain", "host"),
    [
        ("Example.COM", "example.com"),
        (" mail.example.com.\r\nBcc: evil@x", "mail.example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("ex<am>ple..com", "example.com"),
    ],
)
def test_new_message_id_sanitises_domain(domain: str, host: str) -> None:
    assert new_message_id(domain).endswith(f"@{host}>")


@pytest.mark.parametrize("domain", ["", "   ", "\r\n", "<>"])
def test_new_message_id_needs_a_domain(domain: str) -> None:
    with pytest.raises(ValueError):
        new_message_id(domain)


def test_new_message_id_is_accepted_by_build_message() -> None:
    msg_id = new_message_id("example.com")

    assert parse(build(message_id=msg_id))["Message-ID"] == msg_id


# -- properties ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=400))
def test_any_subject_gives_exactly_one_subject_and_no_bcc(subject: str) -> None:
    raw = build(subject=subject)
    message = parse(raw)

    assert len(message.get_all("Subject") or []) == 1
    assert "Bcc" not in message
    assert header_names(message) == BASE_HEADERS
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    # the stdlib folder may drop white space between adjacent encoded words (RFC 2047 §6.2 readers
    # ignore it), so compare the text without white space
    assert "".join(message["Subject"].split()) == "".join(header_text(subject).split())


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=120))
def test_any_display_name_keeps_one_recipient(name: str) -> None:
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '" <dana@customer.example>'
    try:
        raw = build(to=[quoted])
    except ValueError:
        return
    message = parse(raw)

    assert header_names(message) == BASE_HEADERS
    assert [a.addr_spec for a in message["To"].addresses] == ["dana@customer.example"]


# -- wire format ---------------------------------------------------------------------------------


def read_back(text: str) -> str:
    """A body as a reader gets it: CRLF, CR and LF all end a line, and the last line is ended."""
    return text.replace("\r\n", "\n").replace("\r", "\n").removesuffix("\n") + "\n"


def quoted(name: str, addr: str = "dana@customer.example") -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{addr}>'


@settings(max_examples=200, deadline=None)
@given(subject=st.text(max_size=300))
def test_subject_reads_back_exactly_in_short_lines(subject: str) -> None:
    raw = build(subject=subject)

    assert parse(raw)["Subject"] == header_text(subject)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=120))
def test_any_display_name_reads_back(name: str) -> None:
    try:
        raw = build(to=[quoted(name)])
    except ValueError:
        return
    header = parse(raw)["To"]

    assert not header.defects
    # the stdlib reader puts a space between adjacent encoded words of a display name
    assert "".join(header.addresses[0].display_name.split()) == "".join(header_text(name).split())


@pytest.mark.parametrize(
    "name",
    ['Smith, John "JJ" \\ Jr.', "Dana  Scully", "=?not an encoded word", "Zoë Åström", "(comment) <x@y>"],
)
def test_display_names_read_back_exactly(name: str) -> None:
    assert parse(build(to=[quoted(name)]))["To"].addresses[0].display_name == name


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), html=st.text(max_size=300))
def test_any_body_reads_back_in_short_seven_bit_lines(text: str, html: str) -> None:
    raw = build(text=text, html=html)

    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert [content(part) for part in parse(raw).iter_parts()] == [read_back(text), read_back(html)]


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Hello Dana,\n", "7bit"),
        ("Hej Åsa,\n", "quoted-printable"),
        ("x" * 100 + "\n", "quoted-printable"),
        ("bell\x07\n", "quoted-printable"),
        ("請求書について\n" * 20, "base64"),
    ],
)
def test_body_transfer_encoding(text: str, encoding: str) -> None:
    message = parse(build(text=text))

    assert message["Content-Transfer-Encoding"] == encoding
    assert content(message) == text


def test_many_recipients_are_folded_and_all_read_back() -> None:
    recipients = [f"Customer Number {i} <customer{i}@mail.customer.example>" for i in range(30)]
    raw = build(to=recipients, cc=recipients[:3])
    message = parse(raw)

    assert not message["To"].defects
    assert [a.addr_spec for a in message["To"].addresses] == [f"customer{i}@mail.customer.example" for i in range(30)]
    assert len(message["Cc"].addresses) == 3
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=200))
def test_header_text_is_stable_when_read_again(value: str) -> None:
    cleaned = header_text(value)

    assert str(policy.default.header_factory("subject", cleaned)) == cleaned


def test_header_line_over_998_octets_is_refused() -> None:
    with pytest.raises(ValueError, match="refusing"):
        build(extra_headers={"X-" + "a" * 1000: "value"})
