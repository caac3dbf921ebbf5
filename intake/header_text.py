"""Header values and text: RFC 2047 encoded words, charsets, raw 8-bit bytes, Message-IDs.

mail-parser drops or garbles undecodable bytes (a gb2312 label on GBK text), policy.default
replaces them; here the GB family is read as gb18030, valid UTF-8 is preferred over a wrong 8-bit
label, and errors="replace" is the last resort. Nothing here raises on any input.
"""
from __future__ import annotations

import binascii
import codecs
import functools
import itertools
import re
from collections.abc import Iterator

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_MSGID = re.compile(r"<([^<>]+)>")
_NO_BRACKETS = str.maketrans("<>", "  ")
_CHARSET_NAMES = {"x-gbk": "gbk", "x-sjis": "shift_jis", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874"}
_CHARSET_SUPERSETS = {  # labels mailers use for text in the wider Windows/WHATWG set
    "gb2312": "gb18030", "gbk": "gb18030", "euc_kr": "cp949", "shift_jis": "cp932",
    "iso8859-1": "cp1252", "ascii": "cp1252",
}
FOLD = re.compile(r"\r?\n(?=[ \t])")     # a line break that continues a header field


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (any charset) and raw 8-bit bytes in a header value."""
    value = undo_surrogates(value)
    if "=?" not in value:
        return value
    segments: list[tuple[str, bytes | str]] = []  # (charset, bytes) or ("", text)
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap, word = value[pos : match.start()], _encoded_word_bytes(match)
        if gap and not (gap.isspace() and word is not None and segments and segments[-1][0]):
            segments.append(("", gap))  # white space between two encoded words is dropped
        segments.append(("", match.group(0)) if word is None else (match.group(1).lower(), word))
        pos = match.end()
    segments.append(("", value[pos:]))
    return "".join(_decode_runs(segments)).replace("\x00", "")  # "=00" is no text, and no database stores it


def _decode_runs(segments: list[tuple[str, bytes | str]]) -> Iterator[str]:
    """Adjacent words in one charset are decoded together: a character may span two words."""
    for charset, run in itertools.groupby(segments, key=lambda segment: segment[0]):
        parts = [data for _, data in run]
        if charset:
            yield decode_bytes(b"".join(p for p in parts if isinstance(p, bytes)), charset)
        else:
            yield "".join(p for p in parts if isinstance(p, str))


def _encoded_word_bytes(match: re.Match[str]) -> bytes | None:
    text = match.group(3).encode("utf-8", "surrogateescape")
    try:
        if match.group(2) in "qQ":
            return binascii.a2b_qp(text, header=True)
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def undo_surrogates(value: str) -> str:
    """compat32 keeps undecodable header bytes as surrogates; decode them as text."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return decode_bytes(value.encode("utf-8", "surrogateescape"), None)


@functools.lru_cache(maxsize=256)
def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower().split("*", 1)[0]  # RFC 2231 "utf-8*en"
    try:
        codec = codecs.lookup(_CHARSET_NAMES.get(name, name)).name
    except (LookupError, ValueError):
        return None
    return _CHARSET_SUPERSETS.get(codec, codec)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode text; valid UTF-8 beats an 8-bit label (often wrong), never raises."""
    codec = _codec(charset)
    if not data.isascii() and not (codec or "").startswith(("utf-16", "utf-32")):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode(codec or "cp1252", "replace")
    except (LookupError, UnicodeError, ValueError):  # non-text codecs, codecs without "replace"
        return data.decode("cp1252", "replace")


MAX_MESSAGE_ID = 255


def message_ids(values: tuple[str, ...]) -> tuple[str, ...]:
    """The ids in Message-ID, In-Reply-To or References values: bracketed ones, else the bare words;
    white space removed, capped, each once, in order. An id holding a control character is dropped:
    no reply carries it back, and PostgreSQL cannot compare text holding NUL."""
    ids: list[str] = []
    for value in values:
        ids.extend(_MSGID.findall(value) or value.translate(_NO_BRACKETS).split())
    # capped like the store's dedupe key, so one id compares equal wherever it is kept
    cleaned = ("".join(found.split())[:MAX_MESSAGE_ID] for found in ids)
    return tuple(dict.fromkeys(found for found in cleaned if found and found.isprintable()))
