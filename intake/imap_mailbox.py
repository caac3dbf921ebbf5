"""The IMAP connection the poller talks to: `Mailbox`, and `ImapClientMailbox` over imapclient.

The only module that imports imapclient. Its errors become three kinds the poller acts on:
`MailboxError` (a command refused, the connection still usable), `ConnectionLost` and
`LoginRefused` (no usable connection; reconnect with backoff).
"""
from __future__ import annotations

import io
import socket
import ssl
import threading
import time
from contextlib import contextmanager, suppress
from typing import Iterator, Protocol, Sequence

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from intake.config import ImapConfig

IO_TIMEOUT_SECONDS = 60.0
STOP_CHECK_SECONDS = 1.0        # how often an IDLE wait looks at the stop flag


class MailboxError(Exception):
    """The server refused a command; the connection may still be usable."""


class ConnectionLost(MailboxError):
    """No usable connection (refused, dropped, timed out)."""


class LoginRefused(ConnectionLost):
    """The server refused the credentials, or there are none (the password variable is unset)."""


class Mailbox(Protocol):
    """What a poller needs from one selected IMAP folder; messages are named by UID."""
    uidvalidity: int
    can_idle: bool

    def search(self, unseen_only: bool) -> list[int]: ...
    def fetch(self, uids: Sequence[int]) -> dict[int, bytes]: ...
    def move(self, uids: Sequence[int], folder: str) -> None: ...
    def flag_seen(self, uids: Sequence[int]) -> None: ...
    def wait(self, seconds: float, stopping: threading.Event) -> bool: ...
    def close(self) -> None: ...


def read_ahead(sock: socket.socket, reader: io.BufferedReader) -> bool:
    """Whether `reader` (the socket's buffered reader) holds or can read bytes at once, without
    waiting. On TLS an empty socket says so with SSLWantReadError, not as a plain socket does."""
    sock.setblocking(False)     # an empty buffer is not filled by waiting
    try:
        return bool(reader.peek(1))
    except ssl.SSLWantReadError:
        return False
    finally:
        sock.settimeout(IO_TIMEOUT_SECONDS)


class ImapClientMailbox:
    """`Mailbox` over imapclient: logged in and the folder selected on construction; MOVE where the
    server has it, else COPY + \\Deleted + EXPUNGE (UID EXPUNGE with UIDPLUS)."""

    def __init__(self, settings: ImapConfig) -> None:
        self._lost = False
        password = settings.password()
        if password is None:
            raise LoginRefused(f"environment variable {settings.password_env} is not set")
        with self._io():
            context = ssl.create_default_context() if settings.tls else None
            self._client = IMAPClient(settings.host, settings.port, ssl=settings.tls, ssl_context=context,
                                      timeout=IO_TIMEOUT_SECONDS)
        try:
            with self._io():
                self._client.login(settings.user, password)
                capabilities = set(self._client.capabilities())
                selected = self._client.select_folder(settings.folder)
        except MailboxError:
            self.close()
            raise
        self.can_idle = b"IDLE" in capabilities
        self._can_move, self._uidplus = b"MOVE" in capabilities, b"UIDPLUS" in capabilities
        self.uidvalidity = int(selected[b"UIDVALIDITY"])
        self._folders = {settings.folder}

    @contextmanager
    def _io(self) -> Iterator[None]:
        try:
            yield
        except LoginError as exc:
            raise LoginRefused(error_text(exc)) from exc
        except (IMAPClientAbortError, OSError) as exc:
            self._lost = True
            raise ConnectionLost(error_text(exc)) from exc
        except IMAPClientError as exc:
            raise MailboxError(error_text(exc)) from exc

    def search(self, unseen_only: bool) -> list[int]:
        with self._io():
            return sorted(self._client.search(["UNSEEN", "UNDELETED"] if unseen_only else ["UNDELETED"]))

    def fetch(self, uids: Sequence[int]) -> dict[int, bytes]:
        """BODY.PEEK, so fetching never sets \\Seen; a message missing from the answer was not fetched."""
        with self._io():
            response = self._client.fetch(list(uids), [b"BODY.PEEK[]"])
        wanted = set(uids)
        return {uid: bytes(data[b"BODY[]"]) for uid, data in response.items()
                if uid in wanted and data.get(b"BODY[]")}

    def move(self, uids: Sequence[int], folder: str) -> None:
        with self._io():
            if folder not in self._folders:
                if not self._client.folder_exists(folder):
                    self._client.create_folder(folder)
                self._folders.add(folder)
            if self._can_move:
                self._client.move(list(uids), folder)
                return
            self._client.copy(list(uids), folder)
            self._client.add_flags(list(uids), [DELETED], silent=True)
            if self._uidplus:
                self._client.uid_expunge(list(uids))
            else:
                self._client.expunge()

    def flag_seen(self, uids: Sequence[int]) -> None:
        with self._io():
            self._client.add_flags(list(uids), [SEEN], silent=True)

    def wait(self, seconds: float, stopping: threading.Event) -> bool:
        """IDLE until the server announces mail (True), `seconds` pass or `stopping` is set.

        Mail that arrived while an earlier command ran (the last SEARCH, say) was announced in that
        command's answer, which imaplib keeps aside, and IDLE does not announce it again: such an
        announcement ends the wait at once (so does SELECT's count: one more search, no harm)."""
        if self._client._imap.untagged_responses.pop("EXISTS", None):
            return True
        deadline = time.monotonic() + seconds
        with self._io():
            self._client.idle()
            try:
                if self._read_ahead():
                    return True
                while not stopping.is_set() and (left := deadline - time.monotonic()) > 0:
                    timeout = min(STOP_CHECK_SECONDS, left)
                    started = time.monotonic()
                    responses = self._client.idle_check(timeout)
                    if any(_says(r, b"BYE") for r in responses) or (
                            not responses and time.monotonic() - started < timeout / 2):
                        # imapclient swallows end-of-file here: nothing read, early, means the server is gone
                        self._lost = True
                        raise ConnectionLost("connection closed during IDLE")
                    if any(_says(r, b"EXISTS") for r in responses):
                        return True
                return False
            finally:
                if not self._lost:
                    self._client.idle_done()

    def _read_ahead(self) -> bool:
        """Whether the server said more right behind IDLE's go-ahead. Mail delivered just before IDLE
        began is announced there, in the same packet, and imaplib reads it into its buffer with the
        go-ahead; idle_check watches the socket, not that buffer, so the mail would wait for the
        server's next word (minutes). Anything found ends the wait (one more search, no harm)."""
        return read_ahead(self._client.socket(), self._client._imap.file)

    def close(self) -> None:
        """LOGOUT while the connection works; otherwise just drop the socket."""
        client = getattr(self, "_client", None)
        if client is None:
            return
        with suppress(IMAPClientError, OSError):
            if self._lost:
                client.shutdown()
            else:
                client.logout()


def _says(response: object, word: bytes) -> bool:
    return isinstance(response, tuple) and word in response[:2]


def error_text(exc: BaseException) -> str:
    """The server's words, without the bytes repr imapclient sometimes wraps them in."""
    first = exc.args[0] if exc.args else None
    text = first.decode(errors="replace") if isinstance(first, bytes) else first if isinstance(first, str) else str(exc)
    if text.startswith(("b'", 'b"')) and text[-1:] == text[1]:
        text = text[2:-1]
    return text or type(exc).__name__
