"""The SMTP session: aiosmtpd's, with DATA read in blocks instead of line by line.

aiosmtpd reads DATA one line at a time (an await, a search and a join per line: some 350,000
event-loop rounds for a 20 MB attachment) and keeps each line as its own ``bytearray`` until the
end, joining them once more: ~4x the mail's size in memory at the end of DATA. Here the
reader is asked for everything up to the next ``.<CRLF>`` (one search over what has arrived);
a match that does not start a line is ordinary content and the read goes on. The mail is
collected in one buffer that becomes the handler's ``bytes`` without a copy, unstuffed (RFC 5321
section 4.5.2: a leading dot is removed from every line) with one replace where a line needs it:
~1x its size (~2x for a mail with a line to unstuff).

What is kept from aiosmtpd's DATA: the checks before ``354``, the size limit (answered ``552``
once the client has sent the whole mail, whose bytes are dropped as they arrive), and a line is
a CRLF-terminated line (a lone ``.`` after a bare LF does not end the mail). What differs: no
line length limit inside DATA (RFC 5321 caps lines at 1000 octets, but real senders exceed it
and a long line is no reason to refuse a mail); the content is always bytes (the listener runs
with ``decode_data=False``). The override uses aiosmtpd 1.4's session internals (the reader and
writer, the handler hook, the post-DATA reset); pyproject.toml pins 1.4 for that reason.
"""
from __future__ import annotations

import asyncio
import io
import logging

from aiosmtpd.smtp import MISSING, SMTP, Session, syntax

from intake.logs import log_event

log = logging.getLogger("intake.smtp")

_DOT_LINE = b".\r\n"
_LINE_START_DOT = b"\r\n."
TOO_MUCH = "552 5.3.4 Message too big for this system"


class IntakeSMTP(SMTP):
    """aiosmtpd's SMTP session with block-wise DATA and command lines up to 100,000 octets."""
    line_length_limit = 100_000     # also the reader's buffer size: DATA arrives in blocks of up to this

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:      # the connection went away during DATA (aiosmtpd cancels the session)
            log_event(log, "smtp.data_interrupted", peer=peer_of(self.session))
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the same, seen by the reader first
            log_event(log, "smtp.data_interrupted", peer=peer_of(self.session))
            self._writer.close()
            return
        if content is None:
            await self.push(TOO_MUCH)
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytes | None:
    """The mail up to the line ``.``, unstuffed; None if it exceeded `limit` bytes (read to its end all the same).

    The blocks are written to one growing buffer whose bytes become the mail without a copy
    (``BytesIO.getvalue``); only a mail with a line to unstuff past its first is copied once more."""
    data = io.BytesIO()
    tail = b""      # the last five bytes read: whether a ".\r\n" starts a line
    size = 0
    while True:
        try:
            block = await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as error:     # no ".\r\n" in a full buffer: take what is safe to take
            block = await reader.read(error.consumed)
        first = size == 0
        size += len(block)
        tail = (tail + block[-5:])[-5:]
        end = tail.endswith(_DOT_LINE) and (size == 3 or tail[:2] == b"\r\n")
        if not limit or size <= limit + 3:     # over the limit, the bytes are dropped as they arrive
            data.write(memoryview(block)[1 if first and block.startswith(b".") else 0:len(block) - 3 if end else None])
        if end:
            break
    if limit and size - 3 > limit:
        return None
    content = data.getvalue()
    return content.replace(_LINE_START_DOT, b"\r\n") if _LINE_START_DOT in content else content


def peer_of(session: Session | None) -> str:
    """`host:port` of the client, for log lines."""
    peer = session.peer if session is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
