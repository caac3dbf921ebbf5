"""The parts of a parsed mail: body texts, attachments (decoded, named safely) and DSN facts.

One walk over the MIME tree, because mail-parser's own view loses inline parts without a filename
and appends forwarded and returned messages to the body.
"""
from __future__ import annotations

import binascii
import functools
import mimetypes
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_string
from email.message import Message

from intake.header_text import FOLD, decode_bytes, decode_words, message_ids
from intake.html_text import html_to_text
from intake.large_parts import Base64Body, Skeleton

_MAX_DEPTH = 64
_MSGID_LINE = re.compile(r"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_UNSAFE_NAME = re.compile(r'[<>:"|?*]')
_SPACES = re.compile(r"\s+")
_SAFE_CHAR = {"Cc": " ", "Zl": " ", "Zp": " ", "Cf": ""}  # controls break lines; format chars (RTL override) hide
_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*(?:=[\r\n]*){0,2}")
_DSN_HEADER_TYPES = frozenset({
    "message/rfc822", "message/global", "message/rfc822-headers",
    "message/global-headers", "text/rfc822-headers",
})


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    payload: bytes | Base64Body     # a large base64 body cut out of the tree: decoded when stored

    @property
    def size(self) -> int:
        return len(self.payload)


class Walk:
    """One pass over the MIME tree: body texts, attachment parts and DSN facts."""

    def __init__(self, message: Message, defects: list[str]) -> None:
        self.defects = defects
        self.plain: list[str] = []
        self.html: list[str] = []
        self.files: list[Message] = []
        self.is_dsn = message.get_content_type() == "multipart/report" and (
            str(message.get_param("report-type", "")).lower() == "delivery-status"
        )
        self.dsn_original_id: str | None = None
        for part in leaves(message, defects):
            self._take(part)

    def _take(self, part: Message) -> None:
        ctype = part.get_content_type()
        if self.is_dsn and ctype in _DSN_HEADER_TYPES and self.dsn_original_id is None:
            self.dsn_original_id = _original_message_id(part)
        broken = part.get_content_maintype() == "multipart"  # boundary never found: keep what is there
        if broken or (ctype in ("text/plain", "text/html") and _is_inline_body(part)):
            text = _part_text(part)
            if "\x00" not in text:
                (self.html if ctype == "text/html" else self.plain).append(text)
                return
            self.defects.append("BinaryTextPart")  # NUL is never text: keep it as a file instead
        self.files.append(part)

    def body_text(self) -> str:
        plain = "\n\n".join(text.strip("\n") for text in self.plain if text.strip())
        if plain:
            return plain.strip("\n")
        return "\n\n".join(html_to_text(html) for html in self.html if html.strip())


def leaves(message: Message, defects: list[str]) -> Iterator[Message]:
    """Non-multipart parts in order; message/* parts are leaves (never read as our body)."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        defects.extend(type(defect).__name__ for defect in part.defects)
        if not part.is_multipart() or part.get_content_maintype() == "message":
            yield part
        elif depth >= _MAX_DEPTH:
            defects.append("NestingTooDeep")
        else:
            children = [*subparts(part), *_epilogue_parts(part)]
            stack.extend((child, depth + 1) for child in reversed(children))


def subparts(part: Message) -> list[Message]:
    """A multipart's parts. A leaf's payload is not asked for: for 8-bit text the stdlib decodes it
    with the part's charset, and a charset name holding NUL raises ValueError there."""
    if not part.is_multipart():
        return []
    return [child for child in part.get_payload() if isinstance(child, Message)]


def _epilogue_parts(part: Message) -> list[Message]:
    """Parts after the close delimiter (a broken mailer reused the boundary), as mail-parser recovers them."""
    boundary, epilogue = part.get_boundary(), part.epilogue
    if not boundary or not epilogue or f"--{boundary}" not in epilogue:
        return []
    delimiter = re.compile(rf"^--{re.escape(boundary)}(?:--)?[ \t]*\r?\n?", re.M)
    try:
        return [message_from_string(chunk) for chunk in delimiter.split(epilogue)[1:] if chunk.strip()]
    except RecursionError:
        return []


def _is_inline_body(part: Message) -> bool:
    """Explicitly inline text is body even when named; undeclared text is body unless named."""
    disposition = part.get_content_disposition()
    return disposition == "inline" or (disposition is None and not part.get_filename())


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    text = decode_bytes(payload, part.get_content_charset())
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _original_message_id(part: Message) -> str | None:
    if part.is_multipart():
        values = tuple(str(v) for m in subparts(part)[:1] for k, v in m.raw_items() if k.lower() == "message-id")
    else:
        values = tuple(_MSGID_LINE.findall(_part_text(part)))
    ids = message_ids(tuple(decode_words(FOLD.sub("", v)) for v in values[:1]))
    return ids[0] if ids else None


def attachments_of(parts: list[Message], max_bytes: int, max_count: int, defects: list[str],
                   cut: Skeleton | None = None) -> tuple[Attachment, ...]:
    """The files of a mail, decoded (a body cut out of the tree from the raw bytes), within the limits."""
    kept: list[Attachment] = []
    for part in parts:
        ctype = part.get_content_type()
        ctype = ctype if _CONTENT_TYPE.fullmatch(ctype) else "application/octet-stream"
        name = sanitize_filename(decode_words(part.get_filename() or ""), ctype)
        body = cut.body_of(part) if cut is not None else None
        payload: bytes | Base64Body = _part_bytes(part) if body is None else body
        if len(payload) > max_bytes:
            defects.append(f"AttachmentTooLarge:{name}")
        elif len(kept) >= max_count:
            defects.append("TooManyAttachments")
            break
        else:
            kept.append(Attachment(name, ctype, payload))
    return tuple(kept)


def _part_bytes(part: Message) -> bytes:
    if not part.is_multipart():
        payload = _clean_base64(part)
        if payload is None:
            payload = part.get_payload(decode=True)
        return payload if isinstance(payload, bytes) else b""
    try:  # message/*: re-serialise the embedded message(s)
        return b"".join(inner.as_bytes() for inner in subparts(part))
    except Exception:  # the generator can fail on what the parser tolerated; the raw mail is kept
        return b""


def _clean_base64(part: Message) -> bytes | None:
    """A well-formed base64 body decoded in one step, else None. ``get_payload(decode=True)`` returns
    the same bytes, but encodes the text, splits it into lines and joins them first: ~4x the body's
    size at its peak, against the decoded bytes alone here. Anything unusual (other characters,
    padding inside, a length that is no multiple of four) goes the stdlib's way, defects and all."""
    if str(part.get("content-transfer-encoding", "")).lower() != "base64":     # as get_payload compares it
        return None
    try:    # undecoded; a payload with 8-bit bytes is run through its charset, which may be bogus
        text = part.get_payload()
    except (LookupError, UnicodeError, ValueError):     # a NUL in the charset name raises ValueError
        return None
    if not isinstance(text, str) or not _CLEAN_BASE64.fullmatch(text):
        return None
    if (len(text) - text.count("\r") - text.count("\n")) % 4:
        return None
    return binascii.a2b_base64(text)


def sanitize_filename(name: str, content_type: str = "application/octet-stream") -> str:
    """A safe base name: no path, control or format characters, no leading dots, <= 200 chars."""
    name = unicodedata.normalize("NFC", name)
    name = "".join(_SAFE_CHAR.get(unicodedata.category(c), c) for c in name)
    name = re.split(r"[/\\]", _UNSAFE_NAME.sub("_", name))[-1]
    name = _SPACES.sub(" ", name).strip(" .")
    if not name:
        return "attachment" + _extension(content_type)
    if len(name) <= 200:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext) > 16:
        return name[:200].rstrip(" .")
    return f"{stem[: 199 - len(ext)].rstrip(' .')}.{ext}"


@functools.lru_cache(maxsize=128)
def _extension(content_type: str) -> str:
    if content_type == "application/octet-stream":
        return ""
    return _mime_types().guess_extension(content_type, strict=False) or ""


@functools.cache
def _mime_types() -> mimetypes.MimeTypes:
    return mimetypes.MimeTypes()  # built-in table only: same names on every host
