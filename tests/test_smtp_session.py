"""DATA read in blocks (intake/smtp_session.py): the bytes stored are the bytes the client meant.

`read_data` is checked against the line-by-line reading of RFC 5321 section 4.5.2 on arbitrary
streams and reader sizes; the session over real SMTP (smtplib and a raw socket) for dot-stuffing,
blocks split anywhere, pipelined commands, the size limit and lines longer than the reader's buffer.
"""
from __future__ import annotations

import asyncio
import re
import smtplib
import socket
from collections.abc import Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from hypothesis import given, settings, strategies as st

from intake.smtp_session import IntakeSMTP, read_data
from tests.conftest import free_port

LIMIT = 200_000


def line_by_line(stream: bytes) -> bytes:
    """The reference: CRLF lines up to the line ".", each without one leading dot."""
    kept = []
    for line in re.split(rb"(?<=\r\n)", stream):
        if line == b".\r\n":
            break
        kept.append(line[1:] if line.startswith(b".") else line)
    return b"".join(kept)


def read_from(stream: bytes, buffer: int, limit: int | None = None) -> tuple[bytes | None, bytes]:
    """What read_data returns for `stream`, and what it left in the reader."""
    async def run() -> tuple[bytes | None, bytes]:
        reader = asyncio.StreamReader(limit=buffer)
        reader.feed_data(stream)
        reader.feed_eof()
        return await read_data(reader, limit), await reader.read()
    return asyncio.run(run())


PIECES = st.sampled_from([b".", b"..", b"a", b"xyz", b"\n", b"\r", b"\r\n", b".\r\n", b"a.\r\n", b"\r\n.."])


@settings(max_examples=500, deadline=None)
@given(body=st.lists(PIECES, max_size=40).map(b"".join), buffer=st.integers(min_value=3, max_value=40))
def test_block_reading_matches_line_by_line_reading(body: bytes, buffer: int) -> None:
    stream = body + (b"" if not body or body.endswith(b"\r\n") else b"\r\n") + b".\r\n" + b"QUIT\r\n"
    content, rest = read_from(stream, buffer)
    assert content == line_by_line(stream)
    assert rest == stream[len(stream) - len(rest):] and rest.endswith(b"QUIT\r\n")


def test_the_size_limit_counts_what_arrived_and_reads_to_the_end() -> None:
    stream = b"x" * 100 + b"\r\n.\r\nNOOP\r\n"
    assert read_from(stream, 16, limit=102) == (b"x" * 100 + b"\r\n", b"NOOP\r\n")
    assert read_from(stream, 16, limit=101) == (None, b"NOOP\r\n")


class Recorder:
    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.contents.append(envelope.original_content)
        return "250 2.0.0 Ok"


class _Controller(Controller):
    def factory(self) -> SMTP:
        return IntakeSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def listener() -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()
    controller = _Controller(recorder, hostname="127.0.0.1", port=free_port(), data_size_limit=LIMIT,
                             decode_data=False)
    controller.start()
    try:
        yield controller.port, recorder
    finally:
        controller.stop()


def smtp_send(port: int, raw: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@acme.example")
        client.rcpt("support@example.com")
        return client.data(raw)


def test_dot_stuffed_lines_arrive_as_written(listener: tuple[int, Recorder]) -> None:
    port, recorder = listener
    raw = (b"Subject: dots\r\n\r\n.\r\n..\r\n...leading\r\nends with a dot.\r\n . not at the start\r\n"
           b".\r\n\r\n.")
    assert smtp_send(port, raw)[0] == 250
    assert recorder.contents == [raw + b"\r\n"]      # smtplib ends the last line


def read_reply(sock: socket.socket, buffered: list[bytes]) -> bytes:
    """One complete SMTP reply (all its lines) from the socket."""
    while True:
        data = b"".join(buffered)
        match = re.search(rb"^\d{3} [^\r\n]*\r\n", data, re.M)
        if match:
            buffered[:] = [data[match.end():]]
            return data[:match.end()]
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        buffered.append(chunk)


def test_blocks_split_anywhere_and_pipelined_commands(listener: tuple[int, Recorder]) -> None:
    port, recorder = listener
    content = b"Subject: split\r\n\r\nline one\r\n..stuffed\r\ntail.\r\nbare\n.\r\nend\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffered: list[bytes] = []
        assert read_reply(sock, buffered).startswith(b"220")
        for command in (b"EHLO x\r\n", b"MAIL FROM:<a@acme.example>\r\n", b"RCPT TO:<support@example.com>\r\n",
                        b"DATA\r\n"):
            sock.sendall(command)
            read_reply(sock, buffered)
        stream = content + b".\r\nRSET\r\nNOOP\r\n"
        for start in range(0, len(stream), 3):     # the terminator and the next commands cut across sends
            sock.sendall(stream[start:start + 3])
        replies = [read_reply(sock, buffered)[:3] for _ in range(3)]
    assert replies == [b"250", b"250", b"250"]
    assert recorder.contents == [b"Subject: split\r\n\r\nline one\r\n.stuffed\r\ntail.\r\nbare\n.\r\nend\r\n"]


def test_an_oversized_mail_is_refused_and_the_session_goes_on(listener: tuple[int, Recorder]) -> None:
    port, recorder = listener
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@acme.example")
        client.rcpt("support@example.com")
        code, reply = client.data(b"Subject: big\r\n\r\n" + b"y" * 76 * 4000)
        assert code == 552, reply
        client.mail("a@acme.example")
        client.rcpt("support@example.com")
        assert client.data(b"Subject: small\r\n\r\nfits\r\n")[0] == 250
    assert recorder.contents == [b"Subject: small\r\n\r\nfits\r\n"]


def test_lines_longer_than_the_reader_buffer_arrive_whole(listener: tuple[int, Recorder]) -> None:
    port, recorder = listener
    raw = b"Subject: long\r\n\r\n" + b"z" * 150_000 + b".\r\n." + b"w" * 30_000 + b"\r\n"
    assert smtp_send(port, raw)[0] == 250
    assert recorder.contents == [raw]


def test_a_client_gone_during_data_stores_nothing_and_the_listener_goes_on(listener: tuple[int, Recorder]) -> None:
    port, recorder = listener
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        buffered: list[bytes] = []
        read_reply(sock, buffered)
        for command in (b"HELO x\r\n", b"MAIL FROM:<a@acme.example>\r\n", b"RCPT TO:<support@example.com>\r\n",
                        b"DATA\r\n"):
            sock.sendall(command)
            read_reply(sock, buffered)
        sock.sendall(b"Subject: cut\r\n\r\nhalf a mail")
    assert smtp_send(port, b"Subject: next\r\n\r\nwhole\r\n")[0] == 250
    assert recorder.contents == [b"Subject: next\r\n\r\nwhole\r\n"]
