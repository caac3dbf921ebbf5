"""Outgoing messages with headers that data cannot break.

Subjects and display names come from customers, so every header value taken from data
is made single-line before it is used: encoded words are decoded first (a reader would
decode ``=?utf-8?q?=0D=0A?=`` into a real line break), then control characters become
spaces. Addresses and message ids are validated rather than repaired.

The wire format is written directly rather than through ``EmailMessage`` and the header
registry, which cost milliseconds per mail on the acknowledgment path. Text that is not
plain ASCII, or that holds ``=?``, goes out as RFC 2047 encoded words, so a reader's
decoding gives back exactly the cleaned text. An address whose local part is outside
ASCII (RFC 6531) is written as UTF-8, as RFC 6532 allows, and such a mail needs a relay
that offers SMTPUTF8 (notifications/sender.py). As a last guard, the header block is
checked line by line: it must hold exactly the headers that were set, printable, in
ASCII but for such addresses, with every other line a continuation.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email import errors
from email.headerregistry import Address, HeaderRegistry
from email.utils import format_datetime, getaddresses
from types import MappingProxyType

__all__ = ["build_message", "can_address", "header_text", "new_message_id"]

# C0, DEL, C1 and the Unicode separators that str.splitlines() treats as line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ADDR_SPEC = re.compile(r"[!-~]+\Z")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
_ATOMS = re.compile(rf"{_ATEXT}(?: {_ATEXT})*\Z")  # a phrase that needs no quoting
_UTF8_ATEXT = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f])+"  # RFC 6532 3.2: atext =/ UTF8-non-ascii
_UTF8_DOT_ATOM = re.compile(rf"{_UTF8_ATEXT}(?:\.{_UTF8_ATEXT})*\Z")
_ADDRESS_FIELDS = frozenset({"From", "To", "Cc", "Reply-To"})   # the only fields that may hold UTF-8
_MSG_ID_CORE = re.compile(r"[!-;=?-~]+\Z")  # printable ASCII without < and >
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext
_WORD = re.compile(r" +[^ ]+")  # a word with the white space before it
_HEADER_LINE = re.compile(r"([!-9;-~]+):.*\Z")     # and printable (_verify_header_block)
_CONTINUATION = re.compile(r" +[^ ].*\Z")
_NOT_7BIT = re.compile(rb"[^\t\r\n -~]")
_MAX_MSG_ID = 250
_FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD stay within 78 characters ...
_MAX_LINE = 998  # ... and MUST stay within 998
_ENCODED_WORD_BYTES = 36  # 48 base64 characters: "Subject: =?utf-8?b?...?=" fits in 78
_DECODER = HeaderRegistry()
_MANAGED = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "sender", "subject", "date", "message-id",
        "in-reply-to", "references", "auto-submitted", "x-auto-response-suppress",
        "mime-version", "content-type", "content-transfer-encoding",
    }
)  # fmt: skip


def new_message_id(domain: str) -> str:
    """A fresh ``<random.timestamp@domain>``; 128 random bits make clashes impossible."""
    return f"<{secrets.token_hex(16)}.{int(time.time())}@{_clean_domain(domain)}>"


def header_text(value: str) -> str:
    """Decoded single-line header text.

    Decoding is repeated until the text is stable, because decoding an encoded word
    can reveal another one that a reader would decode again. Past a few rounds the
    remaining ``=?`` openers are broken up instead, so no input can stop a mail. Text
    without ``=?`` holds no encoded word, so it needs no decoding at all.
    """
    text = _scrub(value)
    if "=?" not in text:
        return text.strip()
    for _ in range(8):
        decoded = _scrub(str(_DECODER("x-text", text)))
        if decoded == text:
            return text.strip()
        text = decoded
    return text.replace("=?", "= ?").strip()


def build_message(
    *,
    from_addr: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    subject: str,
    text: str,
    html: str | None = None,
    message_id: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    reply_to: str | None = None,
    auto_submitted: str | None = "auto-replied",
    extra_headers: Mapping[str, str] = MappingProxyType({}),
) -> bytes:
    """The complete message as CRLF bytes, ready for SMTP.

    ``references`` gets ``in_reply_to`` appended when missing (RFC 5322 3.6.4), so a
    reply threads even in clients that read only References. Invalid reply ids are
    dropped (a broken id from a customer must not stop the answer); an invalid own
    ``message_id`` or address raises ValueError.
    """
    if not to and not cc:
        raise ValueError("a message needs at least one recipient")
    fields = [_field("From", _mailbox(from_addr, "From"))]
    if to:
        fields.append(_field("To", _mailboxes(to, "To")))
    if cc:
        fields.append(_field("Cc", _mailboxes(cc, "Cc")))
    if reply_to is not None:
        fields.append(_field("Reply-To", _mailbox(reply_to, "Reply-To")))
    fields.append(_text_field("Subject", header_text(subject)))
    fields.append(_field("Date", [" " + format_datetime(datetime.now(UTC))]))
    fields.append(_field("Message-ID", [" " + _own_message_id(message_id)]))
    fields += _threading(in_reply_to, references)
    fields += _auto_submitted(auto_submitted)
    for name, value in extra_headers.items():
        fields.append(_text_field(_extra_header_name(name), header_text(value)))
    fields.append(("MIME-Version", "MIME-Version: 1.0"))
    plain_fields, plain = _text_part("plain", text)
    if html is None:
        return _assemble(fields + plain_fields, plain)
    parts = [_assemble(plain_fields, plain), _assemble(*_text_part("html", html))]
    boundary = _boundary(parts)
    fields.append(_field("Content-Type", [" multipart/alternative;", f' boundary="{boundary}"']))
    delimiter = b"--" + boundary.encode()
    body = b"\r\n".join([delimiter, parts[0], delimiter, parts[1], delimiter + b"--\r\n"])
    return _assemble(fields, body)


def _scrub(value: str) -> str:
    """Control characters to spaces; lone surrogates (undecodable input) to U+FFFD."""
    return _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", value))


# -- addresses -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _mailbox(value: str, field: str) -> tuple[str, ...]:
    """One validated address as header words; the display name is cleaned, the address is not.

    Cached because parsing dominates and the same addresses recur: the service's own in
    every mail, a customer's in each mail about their case.
    """
    if _LINE_BREAK.search(value):
        raise ValueError(f"{field}: line break in address {value!r}")
    pairs = getaddresses([value])
    if len(pairs) != 1:
        raise ValueError(f"{field}: expected exactly one address in {value!r}")
    name, addr = pairs[0]
    local, at, domain = addr.rpartition("@")
    if not (at and local and domain):
        raise ValueError(f"{field}: not an email address: {value!r}")
    domain = _ascii_domain(domain, field)
    if local.isascii():
        if not _ADDR_SPEC.match(local):
            raise ValueError(f"{field}: unsupported characters in address {value!r}")
        spec = _addr_spec(local, domain, value, field)
    elif local.isprintable() and _UTF8_DOT_ATOM.match(local):
        spec = f"{local}@{domain}"
    else:
        raise ValueError(f"{field}: unsupported characters in address {value!r}")
    display_name = header_text(name)
    if not display_name:
        return (" " + spec,)
    return (*_phrase(display_name), f" <{spec}>")


def can_address(value: str) -> bool:
    """Whether ``value`` can stand in To or Cc of a mail built here. One that cannot (control
    characters; a local part outside ASCII that is not a plain dot-atom) is left out of the mail
    rather than stopping it."""
    try:
        _mailbox(value, "To")
    except ValueError:
        return False
    return True


def _mailboxes(values: Sequence[str], field: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{field}: pass a sequence of addresses, not one string")
    words: list[str] = []
    for value in values:
        if words:
            words[-1] += ","
        words += _mailbox(value, field)
    return words


def _addr_spec(local: str, domain: str, value: str, field: str) -> str:
    """``local@domain``; forms other than plain dot-atoms go through the stdlib parser,
    which refuses what a reader could misparse and quotes the local part when needed."""
    if _DOT_ATOM.match(local) and _DOT_ATOM.match(domain) and "=?" not in local + domain:
        return f"{local}@{domain}"
    try:
        return Address(addr_spec=f"{local}@{domain}").addr_spec
    except (ValueError, errors.HeaderParseError) as exc:
        raise ValueError(f"{field}: not an email address: {value!r} ({exc})") from exc


def _phrase(name: str) -> list[str]:
    """A display name as atoms, one quoted string or encoded words (RFC 5322 3.2.5).

    ``=?`` is always encoded, so no reader finds an encoded word that was not meant.
    """
    if name.isascii() and "=?" not in name:
        if _ATOMS.match(name):
            words = name.split(" ")
        else:
            words = ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
        if all(len(word) < _FOLD_AT for word in words):
            return [" " + word for word in words]
    return _encoded_words(name)


def _ascii_domain(domain: str, field: str) -> str:
    """IDNA form of an internationalised domain (headers must stay ASCII)."""
    if domain.isascii():
        candidate = domain
    else:
        try:
            candidate = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{field}: invalid domain {domain!r}") from exc
    if not _ADDR_SPEC.match(candidate):
        raise ValueError(f"{field}: invalid domain {domain!r}")
    return candidate


def _clean_domain(domain: str) -> str:
    """The first token of ``domain`` as a lower-case ASCII host name."""
    token = (domain.split() or [""])[0]
    token = _CONTROL.split(token)[0].strip(".").lower()
    with contextlib.suppress(UnicodeError):  # left as is; the filter below cleans it
        token = token.encode("idna").decode("ascii")
    host = re.sub(r"\.{2,}", ".", re.sub(r"[^a-z0-9.-]", "", token)).strip(".-")
    if not host:
        raise ValueError(f"no usable host name in message id domain {domain!r}")
    return host


# -- message ids and other headers -------------------------------------------------------------


def _msg_id(value: str) -> str | None:
    """``<id>`` for a usable message id (brackets added), None for an unusable one."""
    core = value.strip()
    if core.startswith("<") and core.endswith(">"):
        core = core[1:-1]
    if len(core) > _MAX_MSG_ID or "=?" in core or not _MSG_ID_CORE.match(core):
        return None
    return f"<{core}>"


def _own_message_id(value: str) -> str:
    msg_id = _msg_id(value)
    if msg_id is None:
        raise ValueError(f"invalid Message-ID {value!r}")
    return msg_id


def _threading(in_reply_to: str | None, references: Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(references, str):
        raise TypeError("references: pass a sequence of message ids, not one string")
    parent = _msg_id(in_reply_to) if in_reply_to is not None else None
    chain = [ref for ref in map(_msg_id, references) if ref is not None]
    fields: list[tuple[str, str]] = []
    if parent is not None:
        chain.append(parent)
        fields.append(_field("In-Reply-To", [" " + parent]))
    if chain:
        fields.append(_field("References", [" " + ref for ref in dict.fromkeys(chain)]))
    return fields


def _auto_submitted(auto_submitted: str | None) -> list[tuple[str, str]]:
    """RFC 3834 marking; Exchange ignores it, hence X-Auto-Response-Suppress too."""
    if auto_submitted is None:
        return []
    value = header_text(auto_submitted)
    if not value:
        raise ValueError("Auto-Submitted must not be empty")
    fields = [_text_field("Auto-Submitted", value)]
    if value.lower() != "no":
        fields.append(("X-Auto-Response-Suppress", "X-Auto-Response-Suppress: All"))
    return fields


def _extra_header_name(name: str) -> str:
    if not _FIELD_NAME.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in _MANAGED or name.lower().startswith("content-"):
        raise ValueError(f"header {name!r} is set by build_message, not by extra_headers")
    return name


# -- header encoding and folding ---------------------------------------------------------------


def _text_field(name: str, value: str) -> tuple[str, str]:
    """Unstructured text as is when it folds within 78 characters, else as encoded words."""
    if value.isascii() and "=?" not in value:
        field = _field(name, _WORD.findall(" " + value))
        if max(map(len, field[1].split("\r\n"))) <= _FOLD_AT:
            return field
    return _field(name, _encoded_words(value))


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 'B' words, each cut between characters, with a space before each.

    A reader joins adjacent encoded words without the space between them, so the
    decoded text is exactly ``text``.
    """
    data = text.encode()
    words = []
    start = 0
    while start < len(data):
        end = start + _ENCODED_WORD_BYTES
        while end < len(data) and 0x80 <= data[end] < 0xC0:  # a UTF-8 continuation byte
            end -= 1
        words.append(f" =?utf-8?b?{binascii.b2a_base64(data[start:end], newline=False).decode()}?=")
        start = end
    return words


def _field(name: str, words: Sequence[str]) -> tuple[str, str]:
    """``(name, folded header)``; every word starts with white space, where a line may fold."""
    lines = []
    line = head = name + ":"
    for word in words:
        if len(line) + len(word) > _FOLD_AT and line != head:
            lines.append(line)
            line = word
        else:
            line += word
    lines.append(line)
    return name, "\r\n".join(lines)


def _assemble(fields: list[tuple[str, str]], body: bytes) -> bytes:
    header = "\r\n".join(text for _, text in fields)
    _verify_header_block([name for name, _ in fields], header)
    return header.encode("utf-8") + b"\r\n\r\n" + body


def _verify_header_block(names: list[str], header: str) -> None:
    """The header block must hold exactly the headers that were set, and nothing a reader
    could take for another header or for the end of the block: every line printable (no
    control character, no U+0085 or U+2028), in ASCII but in an address field."""
    found: list[str] = []
    for line in header.split("\r\n"):
        if len(line) > _MAX_LINE:
            raise ValueError("generated header line is too long; refusing to send")
        if found and _CONTINUATION.match(line):
            field = found[-1]
        elif (match := _HEADER_LINE.match(line)) is not None:
            field = match[1]
            found.append(field)
        else:
            raise ValueError("generated header block is malformed; refusing to send")
        if not line.isprintable() or not (line.isascii() or field in _ADDRESS_FIELDS):
            raise ValueError("generated header block is malformed; refusing to send")
    if found != names:
        raise ValueError("generated headers differ from the headers set; refusing to send")


# -- bodies ------------------------------------------------------------------------------------


def _text_part(subtype: str, text: str) -> tuple[list[tuple[str, str]], bytes]:
    """Content headers and body of a UTF-8 text part; the body ends in CRLF.

    Line ends become CRLF and a final one is added. The body is 7bit when it is
    short-lined printable ASCII, else quoted-printable or base64, whichever is shorter,
    so a relay without 8BITMIME still accepts it.
    """
    lines = _utf8(text).splitlines()
    data = b"\r\n".join(lines) + b"\r\n"
    if max(map(len, lines), default=0) <= _FOLD_AT and not _NOT_7BIT.search(data):
        cte, body = "7bit", data
    else:
        cte, body = "quoted-printable", binascii.b2a_qp(data, istext=True)
        if len(body) > (len(data) + 2) // 3 * 4:
            cte, body = "base64", base64.encodebytes(data).replace(b"\n", b"\r\n")
    fields = [
        ("Content-Type", f'Content-Type: text/{subtype}; charset="utf-8"'),
        ("Content-Transfer-Encoding", f"Content-Transfer-Encoding: {cte}"),
    ]
    return fields, body


def _utf8(text: str) -> bytes:
    """UTF-8 with lone surrogates (undecodable input) as U+FFFD; the scan only when needed."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode()


def _boundary(parts: Sequence[bytes]) -> str:
    """A random multipart boundary that no part contains (RFC 2046 5.1.1)."""
    while True:
        boundary = "=_" + secrets.token_hex(16)
        if not any(boundary.encode() in part for part in parts):
            return boundary
