"""Outgoing messages with headers that data cannot break.

Subjects and display names come from customers, so every header value taken from data
is made single-line before it is set: encoded words are decoded first (the policy would
decode ``=?utf-8?q?=0D=0A?=`` into a real line break when it parses the value), then
control characters become spaces. Addresses and message ids are validated rather than
repaired. As a last guard, the generated header block is parsed again and must hold
exactly the headers that were set.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email import errors, policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, getaddresses, parseaddr
from types import MappingProxyType

__all__ = ["build_message", "header_text", "new_message_id"]

# 7bit bodies (quoted-printable or base64 when needed) so a relay without 8BITMIME
# still accepts the mail; headers are CRLF-folded at 78 characters as in policy.SMTP.
POLICY = policy.SMTP.clone(cte_type="7bit")

# C0, DEL, C1 and the Unicode separators that str.splitlines() treats as line breaks.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ADDR_SPEC = re.compile(r"[!-~]+\Z")
_MSG_ID_CORE = re.compile(r"[!-;=?-~]+\Z")  # printable ASCII without < and >
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")  # RFC 5322 ftext
_MAX_MSG_ID = 250
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
    can reveal another one that the policy would decode again. Past a few rounds the
    remaining ``=?`` openers are broken up instead, so no input can stop a mail.
    """
    text = _scrub(value)
    for _ in range(8):
        decoded = _scrub(str(POLICY.header_factory("x-text", text)))
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
    msg = EmailMessage(policy=POLICY)
    msg["From"] = _mailbox(from_addr, "From")
    if to:
        msg["To"] = _mailboxes(to, "To")
    if cc:
        msg["Cc"] = _mailboxes(cc, "Cc")
    if reply_to is not None:
        msg["Reply-To"] = _mailbox(reply_to, "Reply-To")
    msg["Subject"] = header_text(subject)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = _own_message_id(message_id)
    _set_threading(msg, in_reply_to, references)
    _set_auto_submitted(msg, auto_submitted)
    for name, value in extra_headers.items():
        msg[_extra_header_name(name)] = header_text(value)
    msg.set_content(_body(text), subtype="plain", charset="utf-8")
    if html is not None:
        msg.add_alternative(_body(html), subtype="html", charset="utf-8")
        for part in msg.iter_parts():
            del part["MIME-Version"]  # add_alternative copies it into the part
    raw = msg.as_bytes()
    _verify_header_names(msg, raw)
    return raw


def _scrub(value: str) -> str:
    """Control characters to spaces; lone surrogates (undecodable input) to U+FFFD."""
    return _CONTROL.sub(" ", _SURROGATE.sub("\ufffd", value))


def _body(value: str) -> str:
    return _SURROGATE.sub("\ufffd", value)


def _mailbox(value: str, field: str) -> Address:
    """One validated address; the display name is cleaned, the address itself is not."""
    if _LINE_BREAK.search(value):
        raise ValueError(f"{field}: line break in address {value!r}")
    if len(getaddresses([value])) != 1:
        raise ValueError(f"{field}: expected exactly one address in {value!r}")
    name, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if not (at and local and domain):
        raise ValueError(f"{field}: not an email address: {value!r}")
    domain = _ascii_domain(domain, field)
    if not _ADDR_SPEC.match(local):
        raise ValueError(f"{field}: unsupported characters in address {value!r}")
    try:
        return Address(display_name=header_text(name), addr_spec=f"{local}@{domain}")
    except (ValueError, errors.HeaderParseError) as exc:
        raise ValueError(f"{field}: not an email address: {value!r} ({exc})") from exc


def _mailboxes(values: Sequence[str], field: str) -> list[Address]:
    if isinstance(values, str):
        raise TypeError(f"{field}: pass a sequence of addresses, not one string")
    return [_mailbox(value, field) for value in values]


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


def _set_threading(msg: EmailMessage, in_reply_to: str | None, references: Sequence[str]) -> None:
    if isinstance(references, str):
        raise TypeError("references: pass a sequence of message ids, not one string")
    parent = _msg_id(in_reply_to) if in_reply_to is not None else None
    chain = [ref for ref in map(_msg_id, references) if ref is not None]
    if parent is not None:
        chain.append(parent)
        msg["In-Reply-To"] = parent
    if chain:
        msg["References"] = " ".join(dict.fromkeys(chain))


def _set_auto_submitted(msg: EmailMessage, auto_submitted: str | None) -> None:
    """RFC 3834 marking; Exchange ignores it, hence X-Auto-Response-Suppress too."""
    if auto_submitted is None:
        return
    value = header_text(auto_submitted)
    if not value:
        raise ValueError("Auto-Submitted must not be empty")
    msg["Auto-Submitted"] = value
    if value.lower() != "no":
        msg["X-Auto-Response-Suppress"] = "All"


def _extra_header_name(name: str) -> str:
    if not _FIELD_NAME.match(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in _MANAGED or name.lower().startswith("content-"):
        raise ValueError(f"header {name!r} is set by build_message, not by extra_headers")
    return name


def _verify_header_names(msg: EmailMessage, raw: bytes) -> None:
    """The generated header block must hold exactly the headers that were set."""
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    expected = Counter(name.lower() for name in msg.keys())
    if Counter(name.lower() for name in parsed.keys()) != expected:
        raise ValueError("generated headers differ from the headers set; refusing to send")
