"""Large base64 bodies, cut out of a mail before its MIME tree is built and decoded from the raw bytes.

The stdlib parser keeps every part's body as text: for a 20 MB attachment the lines of the body,
then their join, then mail-parser's own copy (~2.7x the mail's size at the peak, on top of the raw
bytes). Here every large body that is plain base64 is replaced, in a copy of the mail (the
skeleton), by a marker of 32 base64 characters; the tree is built from the skeleton and each cut
body is decoded straight from the raw bytes when its attachment is stored, in pieces on SQLite
(``Base64Body``; models/blobs.py).

A cut cannot change what the mail parses to, by construction and then by check. Cut is a body
that follows a delimiter line of a boundary the mail declares, runs up to the next such line and
holds nothing but base64 characters and line breaks (so no delimiter or header hides in it). The
tree built from the skeleton must then hold every marker as the whole body of a leaf the walk
reaches (not inside an attached message, which is kept whole), of a part that is not text (the
walk reads text as a body), base64-encoded as ``mime_parts`` decodes it, which mail-parser took as
an attachment (it keeps those encoded; a body it decodes as text, and the marker would not decode
as the body did). Anything else (the parser ended the part elsewhere, read the headers otherwise):
the mail is parsed whole. The marker is random per mail.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser

LARGE_BODY = 256 * 1024     # a body at least this long (on the wire) is cut
_BOUNDARY_PARAM = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))', re.I)
_DASH_LINE = re.compile(rb"^--([^\r\n]*)", re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BASE64_BODY = re.compile(rb"[A-Za-z0-9+/\r\n]*(?:=[\r\n]*){0,2}")
_HEADERS = BytesHeaderParser()
_KEPT_WHOLE = ("text", "multipart", "message")


def declared_boundaries(raw: bytes) -> set[bytes]:
    """Every boundary a Content-Type in the mail declares, wherever it stands."""
    return {m.group(1) or m.group(2) for m in _BOUNDARY_PARAM.finditer(raw)}


def delimiter_lines(raw: bytes, boundaries: set[bytes]) -> Iterable[re.Match[bytes]]:
    """Delimiter lines (``--boundary``) of the given boundaries, closing ones (``--boundary--``) too;
    ``group(1)`` is the boundary, with ``--`` for a closing one."""
    for line in _DASH_LINE.finditer(raw) if boundaries else ():
        name = line.group(1).rstrip(b" \t")
        if name in boundaries or (name.endswith(b"--") and name[:-2] in boundaries):
            yield line


class Base64Body:
    """A cut body's content: its size known at once, its bytes decoded from the raw mail only when
    read, whole (``bytes()``) or in pieces (``pieces``: an attachment written to SQLite in pieces
    never exists decoded whole). Equal to the bytes it decodes to."""

    def __init__(self, raw: bytes, start: int, end: int) -> None:
        self._raw, self._start, self._end = raw, start, end
        self._size = _characters(raw, start, end) // 4 * 3 - raw.count(b"=", start, end)   # "=" only pads the end

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return binascii.a2b_base64(memoryview(self._raw)[self._start:self._end])

    def pieces(self, size: int) -> Iterator[bytes]:
        """The decoded bytes in pieces of about `size` (each decodes whole groups of four characters)."""
        carry = b""
        for offset in range(self._start, self._end, size):
            text = carry + self._raw[offset:min(offset + size, self._end)].translate(None, b"\r\n")
            whole = len(text) - len(text) % 4
            carry = text[whole:]
            if whole:
                yield binascii.a2b_base64(text[:whole])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (bytes, Base64Body)):
            return bytes(self) == bytes(other)
        return NotImplemented

    # Equal to bytes, which hash by value: not hashable rather than hashed otherwise.
    __hash__ = None     # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Base64Body({self._size} bytes)"


@dataclass(frozen=True)
class Skeleton:
    """The mail with its large base64 bodies replaced by markers, and where each body lies in the raw bytes."""

    mail: bytes
    raw: bytes
    bodies: Mapping[str, tuple[int, int]]

    def holds(self, leaves: Iterable[Message], files: Iterable[object]) -> bool:
        """Whether the tree built from the skeleton has every marker as a whole cut part's body, and
        mail-parser read each as a file (``files``: the payloads of its attachments); a part it reads
        as text, it decodes, and the marker would not decode as the body did."""
        found = [marker for part in leaves if (marker := self._marker_of(part)) is not None]
        return sorted(found) == sorted(self.bodies) and set(self.bodies) <= set(files)

    def body_of(self, part: Message) -> Base64Body | None:
        """The body of a part that stands for a cut one, decoded when read; None for any other part."""
        marker = self._marker_of(part)
        if marker is None:
            return None
        start, end = self.bodies[marker]
        return Base64Body(self.raw, start, end)

    def _marker_of(self, part: Message) -> str | None:
        payload = part.get_payload()
        if not isinstance(payload, str) or payload not in self.bodies or not _cuttable(part):
            return None
        return payload


def skeleton(raw: bytes, smallest: int = LARGE_BODY) -> Skeleton | None:
    """The mail with each large, clean base64 body replaced by a marker; None if there is none to cut."""
    if len(raw) < smallest:
        return None
    delimiters = list(delimiter_lines(raw, declared_boundaries(raw)))
    pieces: list[bytes] = []
    bodies: dict[str, tuple[int, int]] = {}
    kept_from = 0
    for line, following in zip(delimiters, delimiters[1:]):
        body = _cuttable_body(raw, line.end(), following.start(), smallest)
        if body is None:
            continue
        marker = base64.b64encode(os.urandom(24)).decode("ascii")
        pieces += [raw[kept_from:body[0]], marker.encode("ascii"), b"\r\n"]
        bodies[marker] = body
        kept_from = body[1]
    if not bodies:
        return None
    pieces.append(raw[kept_from:])
    return Skeleton(b"".join(pieces), raw, bodies)


def _cuttable_body(raw: bytes, part_start: int, part_end: int, smallest: int) -> tuple[int, int] | None:
    """Where the part between two delimiter lines has its body, if that body is large, clean base64
    of a part that is not kept whole; the body's end includes the line break before the delimiter."""
    if part_end - part_start < smallest:
        return None
    header_end = _HEADER_END.search(raw, part_start, min(part_end, part_start + 64 * 1024))
    if header_end is None:
        return None
    start = header_end.end()
    if part_end - start < smallest or not _BASE64_BODY.fullmatch(raw, start, part_end):
        return None
    if _characters(raw, start, part_end) % 4:
        return None
    headers = _HEADERS.parsebytes(raw[part_start:header_end.start()].lstrip(b"\r\n") + b"\r\n\r\n")
    return (start, part_end) if _cuttable(headers) else None


def _cuttable(part: Message) -> bool:
    """A part that is neither kept whole nor other than base64 (compared as mime_parts decodes)."""
    return (part.get_content_maintype() not in _KEPT_WHOLE
            and str(part.get("content-transfer-encoding", "")).lower() == "base64")


def _characters(raw: bytes, start: int, end: int) -> int:
    """base64 characters between `start` and `end` (clean base64: all but the line breaks)."""
    return end - start - raw.count(b"\r", start, end) - raw.count(b"\n", start, end)
