"""Stage 2, parse: raw bytes -> ParsedEmail.

The only module that imports mail-parser. What comes from where, and why:

- mail-parser reads the stdlib compat32 tree that ``parse_from_bytes`` would build
  (``MailParser(tree)``; the tree is fed to the parser in blocks, which peaks at
  ~3x the mail's size instead of ~8x); the tree is reused for everything else,
  so the raw bytes are parsed once (twice only on the fallback path below).
- Addresses: mail-parser's structural address parser (``get_addresses``), also
  for Sender/Return-Path and on the fallback path. It is more correct than
  stdlib ``policy.default``, which reads ``alice@x <bob@y>`` as alice@x, and
  than ``email.utils.getaddresses``, which recurses on nested comments; it never
  takes an address out of an encoded word (RFC 2047 section 5). Display names
  it leaves encoded (undecodable charset, quoted encoded words) are decoded here.
- Date: mail-parser's ``parse_mail_date`` (aware, UTC). Defects: mail-parser's
  categories (the stdlib MIME defects of every part plus its own header
  checks), with the stdlib part defects and our own notes added by the walk.
- Subject, header values and leftover encoded display names: decoded by
  intake/header_text.py (mail-parser drops or garbles undecodable bytes).
- Bodies, attachments and DSN parts: one walk over the tree, intake/mime_parts.py.
- Large base64 attachments: cut out of the mail before the tree is built and decoded from the
  raw bytes when stored (intake/large_parts.py); the tree is then built from the rest, checked
  to hold each cut where it was, else built from the whole mail.

If mail-parser raises (nesting too deep, or anything else), or the input would
make it pathologically slow (over 2,000 encoded words: CPython 3.11's
``decode_header`` is quadratic; a header section over 128 KiB), the stdlib
compat32 parser is the fallback (headers only when nesting is too deep),
recorded as a defect. compat32 rather than policy.default: the same tree type
on both paths, and policy.default's header parser is several times slower.

Unparseable (``UnparseableMail``), by rule: empty or blank input; an OLE
compound file (``D0 CF 11 E0``: Outlook .msg); or the first line (after an
optional mbox ``From `` line) is not a header field ``name:``. Anything else
parses, however malformed; the malformations are listed in ``defects``.

Limits (``Limits``, from ``[limits]``): over the size, the top-level header section's bytes or
fields, or the number of MIME parts, the mail is refused before mail-parser builds a tree
(``MailTooLarge``, ``MailTooComplex``; counted on the bytes, so a mail of a million tiny parts
costs a scan, not a million objects); nesting deeper than ``max_mime_depth`` is refused after
the parse; a longer subject is cut (``SubjectTruncated``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesParser
from types import MappingProxyType

from mailparser import MailParser
from mailparser.dates import parse_mail_date
from mailparser.utils import get_addresses

from intake.header_text import FOLD, decode_words, message_ids, undo_surrogates
from intake.html_text import visible_text
from intake.logs import log_event
from intake.large_parts import Skeleton, declared_boundaries, delimiter_lines, skeleton
from intake.mime_parts import Attachment, Walk, attachments_of, leaves, sanitize_filename, subparts

__all__ = [
    "Address", "Attachment", "Limits", "MailTooComplex", "MailTooLarge", "ParsedEmail", "UnparseableMail", "parse_mail",
    "sanitize_filename", "visible_text",
]

log = logging.getLogger(__name__)

_OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER_START = re.compile(rb"(?:From [^\r\n]*\r?\n)?[\x21-\x39\x3b-\x7e]+[ \t]*:")
_SPACES = re.compile(r"\s+")
_PARSE_BLOCK = 64 * 1024
_MAX_ENCODED_WORDS = 2000
_MAX_HEADER_BYTES = 128 * 1024
_FIELD_START = re.compile(rb"^[^ \t\r\n]", re.M)   # a header line that is no continuation
_MAX_ADDRESS_FIELD = 64 * 1024  # about 2,000 addresses; the parser costs ~5 us per character


class UnparseableMail(Exception):
    """Raised when the bytes are not a mail at all; ``str(exc)`` is a short reason."""

    reason = "unparseable"      # the rejection reason recorded on the inbound mail


class MailTooComplex(UnparseableMail):
    """Over a structural limit (headers, parts, nesting): refused before it costs time and memory."""

    reason = "too_complex"


class MailTooLarge(UnparseableMail):
    """Over the size limit (reached through a door without one, IMAP or import)."""

    reason = "too_large"


@dataclass(frozen=True)
class Limits:
    """What one mail may hold (`[limits]`, docs/configuration.md); None: not limited. Over a size
    or structure limit the mail is refused (MailTooLarge, MailTooComplex; its raw bytes are kept
    by the store), a longer subject is cut."""

    max_message_bytes: int | None = None
    max_header_bytes: int | None = None     # the top-level header section
    max_headers: int | None = None          # fields in the top-level header section
    max_mime_depth: int | None = None       # nesting below the top (multiparts and attached messages)
    max_parts: int | None = None            # MIME parts, counted by their delimiter lines
    max_subject_chars: int | None = None


@dataclass(frozen=True)
class Address:
    name: str
    email: str


@dataclass(frozen=True)
class ParsedEmail:
    message_id: str | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    sender: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    date: datetime | None
    headers: Mapping[str, tuple[str, ...]]
    body_text: str
    body_html: str | None
    attachments: tuple[Attachment, ...]
    is_dsn: bool
    dsn_original_message_id: str | None
    defects: tuple[str, ...]
    size: int


def parse_mail(
    raw: bytes,
    *,
    envelope_sender: str | None = None,
    max_attachment_bytes: int = 10 * 1024 * 1024,
    max_attachments: int = 50,
    limits: Limits = Limits(),
) -> ParsedEmail:
    """Parse raw mail bytes; raises only UnparseableMail (or a subclass), whatever the input."""
    _reject_non_mail(raw)
    try:
        _check_limits(raw, limits)
        return _build(raw, envelope_sender, max_attachment_bytes, max_attachments, limits)
    except UnparseableMail:
        raise
    except Exception as exc:  # the contract: no other exception escapes, for any bytes
        log_event(log, "parse.failed", logging.ERROR, exc_info=True, error=f"{type(exc).__name__}: {exc}")
        raise UnparseableMail(f"internal error: {type(exc).__name__}") from exc


def _reject_non_mail(raw: bytes) -> None:
    if not raw or raw.isspace():    # not raw.strip(), which copies the mail
        raise UnparseableMail("empty")
    if raw.startswith(_OLE_SIGNATURE):
        raise UnparseableMail("OLE compound file (Outlook .msg), not MIME")
    if not _HEADER_START.match(raw):
        raise UnparseableMail("no header field at the start")


def _check_limits(raw: bytes, limits: Limits) -> None:
    """The limits that can be read off the bytes, checked before any tree is built: a mail of
    many small parts or headers costs far more memory and time parsed than stored."""
    if limits.max_message_bytes is not None and len(raw) > limits.max_message_bytes:
        raise MailTooLarge(f"{len(raw)} bytes, over the limit of {limits.max_message_bytes}")
    head = raw[:_header_end(raw)]
    if limits.max_header_bytes is not None and len(head) > limits.max_header_bytes:
        raise MailTooComplex(f"a header section of {len(head)} bytes, over limits.max_header_bytes "
                             f"({limits.max_header_bytes})")
    if limits.max_headers is not None and (fields := len(_FIELD_START.findall(head))) > limits.max_headers:
        raise MailTooComplex(f"{fields} header fields, over limits.max_headers ({limits.max_headers})")
    if limits.max_parts is not None and _count_parts(raw, limits.max_parts + 1) > limits.max_parts:
        raise MailTooComplex(f"more than {limits.max_parts} MIME parts (limits.max_parts)")


def _header_end(raw: bytes) -> int:
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    return min(ends, default=len(raw))


def _count_parts(raw: bytes, stop: int) -> int:
    """Delimiter lines (`--boundary`) of every boundary the mail declares: what a parser would
    split into parts, counted without parsing (up to `stop`)."""
    boundaries = declared_boundaries(raw)
    count = 0
    for line in delimiter_lines(raw, boundaries):
        count += line.group(1).rstrip(b" \t") in boundaries    # not the closing ones
        if count >= stop:
            break
    return count


def _mime_depth(message: Message) -> int:
    """How deep parts nest below the top: 0 for a single part, 1 for a multipart of single parts."""
    deepest, stack = 0, [(message, 0)]
    while stack:
        part, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in subparts(part))
    return deepest


def _build(raw: bytes, envelope_sender: str | None, max_bytes: int, max_count: int,
           limits: Limits = Limits()) -> ParsedEmail:
    tree = _parse_tree(raw)
    message, parsed, defects = tree.message, tree.parsed, tree.defects
    if limits.max_mime_depth is not None:   # past the parser's recursion limit the tree is headers only
        depth = None if "NestingTooDeep" in defects else _mime_depth(message)
        if depth is None or depth > limits.max_mime_depth:
            raise MailTooComplex(f"parts nested {'deeper than the parser follows' if depth is None else depth} "
                                 f"levels, over limits.max_mime_depth ({limits.max_mime_depth})")
    raw_headers = _raw_headers(message)
    headers = {name: tuple(decode_words(v).strip() for v in vs) for name, vs in raw_headers.items()}
    to, cc, reply_to = (
        _addresses(_first(raw_headers, name), _parsed_pairs(parsed, name)) for name in ("to", "cc", "reply-to")
    )
    sender = _sender(raw_headers, _parsed_pairs(parsed, "from"), envelope_sender, defects)
    walk = Walk(message, defects)
    attachments = attachments_of(walk.files, max_bytes, max_count, defects, tree.cut)
    return ParsedEmail(
        message_id=next(iter(message_ids(headers.get("message-id", ())[:1])), None),
        in_reply_to=message_ids(headers.get("in-reply-to", ())),
        references=message_ids(headers.get("references", ())),
        subject=_subject(headers, limits.max_subject_chars, defects),
        sender=sender,
        to=to,
        cc=cc,
        reply_to=reply_to,
        date=parse_mail_date(_first(raw_headers, "date") or "").value,  # aware (UTC) or None
        headers=MappingProxyType(headers),
        body_text=walk.body_text(),
        body_html="\n".join(walk.html) or None,
        attachments=attachments,
        is_dsn=walk.is_dsn,
        dsn_original_message_id=walk.dsn_original_id,
        defects=tuple(dict.fromkeys(defects)),
        size=len(raw),
    )


@dataclass(frozen=True)
class _Tree:
    message: Message
    parsed: MailParser | None       # mail-parser's view, if it ran
    defects: list[str]
    cut: Skeleton | None = None     # the skeleton the tree was built from, if large bodies were cut out


def _parse_tree(raw: bytes) -> _Tree:
    """The MIME tree, from the skeleton where large bodies could be cut out, else from the whole
    mail; the raw bytes are parsed at most twice (three times for a skeleton that did not hold)."""
    if costly := _costly_for_mailparser(raw):
        return _stdlib_tree(raw, costly)
    cut = skeleton(raw)
    if cut is not None:
        try:
            parsed = MailParser(_message_tree(cut.mail))
        except Exception:   # RecursionError too: the whole mail is parsed below, with its fallbacks
            parsed = None
        if parsed is not None and cut.holds(leaves(parsed.message, []), (a["payload"] for a in parsed.attachments)):
            return _Tree(parsed.message, parsed, sorted(parsed.defects_categories), cut)
    try:
        parsed = MailParser(_message_tree(raw))
    except RecursionError:  # the stdlib parser and mail-parser's walk recurse once per multipart level
        return _Tree(BytesParser().parsebytes(raw, headersonly=True), None, ["NestingTooDeep"])
    except Exception as exc:  # mail-parser is tolerant by design; anything it cannot take falls back
        return _stdlib_tree(raw, f"MailParserError:{type(exc).__name__}")
    return _Tree(parsed.message, parsed, sorted(parsed.defects_categories))


def _stdlib_tree(raw: bytes, reason: str) -> _Tree:
    try:
        return _Tree(_message_tree(raw), None, [reason])
    except RecursionError:
        return _Tree(BytesParser().parsebytes(raw, headersonly=True), None, [reason, "NestingTooDeep"])


def _message_tree(raw: bytes) -> Message:
    """The compat32 tree of ``message_from_bytes`` (which mail-parser's ``parse_from_bytes`` calls),
    fed to the parser in blocks: ``message_from_bytes`` decodes the whole mail to one string and
    reads it through a ``StringIO``, which stores 4 bytes per character, so a mail peaked at ~8x
    its size while parsed; in blocks, ~3x (the lines of the largest part, then their join)."""
    parser = BytesFeedParser()
    view = memoryview(raw)
    for start in range(0, len(raw), _PARSE_BLOCK):
        parser.feed(bytes(view[start:start + _PARSE_BLOCK]))
    return parser.close()


def _subject(headers: Mapping[str, tuple[str, ...]], limit: int | None, defects: list[str]) -> str:
    subject = _SPACES.sub(" ", headers.get("subject", ("",))[0]).strip()
    if limit is not None and len(subject) > limit:
        defects.append("SubjectTruncated")
        subject = subject[:limit].rstrip()
    return subject


def _costly_for_mailparser(raw: bytes) -> str | None:
    """Input on which mail-parser's time explodes (quadratic stdlib decode_header, slow headers)."""
    if raw.count(b"=?") > _MAX_ENCODED_WORDS:
        return "TooManyEncodedWords"
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if i >= 0]
    if min(ends, default=len(raw)) > _MAX_HEADER_BYTES:
        return "OversizedHeaders"
    return None


# --- headers -------------------------------------------------------------------------------


def _raw_headers(message: Message) -> dict[str, list[str]]:
    """Header values by lower-cased name, unfolded, 8-bit bytes decoded, encoded words kept."""
    values: dict[str, list[str]] = {}
    for name, value in message.raw_items():
        value = undo_surrogates(FOLD.sub("", str(value))).replace("\x00", "")
        values.setdefault(name.lower(), []).append(value)
    return values


# --- addresses -----------------------------------------------------------------------------


def _first(raw_headers: dict[str, list[str]], name: str) -> str | None:
    return raw_headers.get(name, [None])[0]


def _parsed_pairs(parsed: MailParser | None, name: str) -> list[tuple[str, str]] | None:
    """mail-parser's own parse of From/To/Cc/Reply-To (first occurrence), when it ran."""
    return None if parsed is None else getattr(parsed, name.replace("-", "_"))


def _addresses(value: str | None, pairs: list[tuple[str, str]] | None = None) -> tuple[Address, ...]:
    """Structure first, names decoded after: a comma or address inside an encoded word stays a name."""
    if not value:
        return ()
    if pairs is None:  # the same parser mail-parser uses (~0.1 ms per field, so not run twice)
        pairs = _address_pairs(value[:_MAX_ADDRESS_FIELD])
    return tuple(Address("" if n == e else decode_words(n).strip(), e.lower()) for n, e in pairs if e)


def _address_pairs(value: str) -> list[tuple[str, str]]:
    """mail-parser's parse with the names decoded; a name whose encoded word it cannot decode (bad
    base64) fails the whole field there (and mail-parser itself: the stdlib tree is then used), so
    the field is parsed again with the names left to `decode_words`, which keeps such a word as is."""
    try:
        return get_addresses(value, decode_names=True)
    except HeaderParseError:
        return get_addresses(value, decode_names=False)


def _sender(
    raw_headers: dict[str, list[str]], pairs: list[tuple[str, str]] | None, envelope: str | None, defects: list[str]
) -> Address:
    found = _addresses(_first(raw_headers, "from"), pairs)
    if not found and "from" in raw_headers:
        defects.append("InvalidFromAddress")
    for fallback in (_first(raw_headers, "sender"), _first(raw_headers, "return-path"), envelope):
        found = found or _addresses(fallback)
    return found[0] if found else Address("", "")
