"""The IMAP door: a poller per configured mailbox feeds new messages to the same `ingest` as the
SMTP listener, and marks a message (moved to `processed_folder`, or flagged \\Seen) only after
`ingest` returned, that is after its inbound row was committed. A crash in between means the
message is fetched again and recognised as a duplicate. Choices are in docs/imap.md.

The only module that imports imapclient (`ImapClientMailbox`); the poller talks to `Mailbox`.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict
from typing import Callable, Iterator, Protocol, Sequence

from imapclient import DELETED, SEEN, IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from sqlalchemy import select

from intake import metrics
from intake.config import ImapConfig, MailboxConfig
from intake.crashpoints import crash_point
from intake.importer import Summary
from intake.logs import log_event
from intake.pipeline import Services, ingest
from intake.reload import ServicesHolder, holding
from intake.store import Envelope, ImapOrigin
from models.db import unit_of_work
from models.mail import ImapFetchFailure

log = logging.getLogger("intake.imap")

IO_TIMEOUT_SECONDS = 60.0
STOP_CHECK_SECONDS = 1.0        # how often an IDLE wait looks at the stop flag


class MailboxError(Exception):
    """The server refused a command; the connection may still be usable."""


class ConnectionLost(MailboxError):
    """No usable connection (refused, dropped, timed out)."""


class LoginRefused(ConnectionLost):
    """The server refused the credentials, or there are none (the password variable is unset)."""


class PollFailed(Exception):
    """`poll_once` gave up; `summary` is what it did before."""

    def __init__(self, summary: Summary, cause: Exception) -> None:
        super().__init__(_text(cause))
        self.summary = summary


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
            raise LoginRefused(_text(exc)) from exc
        except (IMAPClientAbortError, OSError) as exc:
            self._lost = True
            raise ConnectionLost(_text(exc)) from exc
        except IMAPClientError as exc:
            raise MailboxError(_text(exc)) from exc

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
        """IDLE until the server announces mail (True), `seconds` pass or `stopping` is set."""
        deadline = time.monotonic() + seconds
        with self._io():
            self._client.idle()
            try:
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


def _text(exc: BaseException) -> str:
    """The server's words, without the bytes repr imapclient sometimes wraps them in."""
    first = exc.args[0] if exc.args else None
    text = first.decode(errors="replace") if isinstance(first, bytes) else first if isinstance(first, str) else str(exc)
    if text.startswith(("b'", 'b"')) and text[-1:] == text[1]:
        text = text[2:-1]
    return text or type(exc).__name__


class Backoff:
    """Capped exponential delays: low, 2*low, ... up to high; back to low after a success."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self._next = low

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.high)
        return delay

    def reset(self) -> None:
        self._next = self.low


Connect = Callable[[ImapConfig], Mailbox]


class ImapPoller:
    """Watches one mailbox: drains what is waiting, then IDLEs (or sleeps `poll_seconds` when the
    server has no IDLE); every failure is logged once per state change and retried with backoff."""

    def __init__(self, services: Services | ServicesHolder, mailbox: MailboxConfig,
                 connect: Connect = ImapClientMailbox) -> None:
        if mailbox.imap is None:
            raise ValueError(f"{mailbox.address} has no imap settings")
        self.holder, self.address, self.settings = holding(services), mailbox.address, mailbox.imap
        self._connect = connect
        self._mailbox: Mailbox | None = None
        self._uidvalidity: int | None = None
        self._state = "starting"
        self._suspects: set[int] = set()    # a batch whose FETCH broke the connection: fetched one by one

    @property
    def services(self) -> Services:
        """Read per use: after a reload the next message is processed under the new config."""
        return self.holder.current

    @property
    def state(self) -> str:
        """`starting`, `connected`, or what the last failure was (`unreachable`, `login_refused`, ...)."""
        return self._state

    def run(self, stopping: threading.Event) -> None:
        """Until `stopping` is set; never raises, so one mailbox's trouble leaves the others alone."""
        backoff = Backoff(self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds)
        while not stopping.is_set():
            try:
                summary = self.drain(stopping=stopping)
                if summary.fetched or summary.failed:
                    log_event(log, "imap.pass", mailbox=self.address, **asdict(summary))
                backoff.reset()
                self._wait(stopping)
            except Exception as exc:     # the door stays open: log the state, back off, reconnect
                delay = backoff.next()
                self._failed(exc, delay)
                stopping.wait(delay)
        self._disconnect()
        self._set_state("stopped", logging.INFO)

    def poll_once(self) -> Summary:
        """One pass (`intake poll --once`). A dropped connection is retried a few times: a message
        that breaks the connection takes max_fetch_failures of them to reach the error folder."""
        summary = Summary()
        backoff = Backoff(self.settings.reconnect_min_seconds, self.settings.reconnect_max_seconds)
        attempts_left = self.settings.max_fetch_failures + 2
        try:
            while True:
                try:
                    return self.drain(summary)
                except Exception as exc:     # retried, then reported with what was done
                    attempts_left -= 1
                    if attempts_left == 0 or isinstance(exc, LoginRefused):   # credentials do not heal in seconds
                        raise PollFailed(summary, exc) from exc
                    delay = backoff.next()
                    self._failed(exc, delay)
                    time.sleep(delay)
        finally:
            self._disconnect()

    def drain(self, summary: Summary | None = None, stopping: threading.Event | None = None) -> Summary:
        """Fetch, ingest and mark everything waiting, until a search finds nothing not yet tried."""
        summary = summary if summary is not None else Summary()
        box = self._box()
        tried: set[int] = set()
        while uids := [uid for uid in box.search(unseen_only=self.settings.processed_folder is None)
                       if uid not in tried]:
            for batch in self._batches(uids):
                if stopping is not None and stopping.is_set():
                    return summary
                tried.update(batch)
                self._take(box, batch, summary)
        return summary

    def _batches(self, uids: list[int]) -> Iterator[list[int]]:
        """Batches of batch_size; one message at a time where a batch's FETCH broke the connection,
        so that only the message at fault is counted as a failure."""
        size = self.settings.batch_size
        for start in range(0, len(uids), size):
            batch = uids[start:start + size]
            if self._suspects.intersection(batch):
                yield from ([uid] for uid in batch)
            else:
                yield batch

    def _take(self, box: Mailbox, batch: list[int], summary: Summary) -> None:
        batch = self._set_aside_broken(box, batch)
        fetched = self._fetch(box, batch, summary)
        done: list[int] = []
        try:
            for uid in batch:
                if uid not in fetched:
                    continue
                raw = fetched[uid]
                origin = ImapOrigin(self.settings.folder, box.uidvalidity, uid)
                envelope = Envelope.from_headers(raw, "imap", self.address, imap=origin)
                result = ingest(self.services, raw, envelope)
                summary.add(result)
                done.append(uid)
                log_event(log, "imap.stored", mailbox=self.address, uidvalidity=box.uidvalidity, uid=uid,
                          inbound=result.inbound_id, duplicate=result.duplicate)
        finally:        # what was committed is marked, even when a later message of the batch failed
            if done:
                crash_point("imap_after_commit")
                self._mark(box, done)

    def _mark(self, box: Mailbox, uids: list[int]) -> None:
        if self.settings.processed_folder:
            box.move(uids, self.settings.processed_folder)
        else:
            box.flag_seen(uids)

    def _fetch(self, box: Mailbox, batch: list[int], summary: Summary) -> dict[int, bytes]:
        """The whole messages of a batch. What the server will not give is asked for alone, and
        only a single message's failure is counted (see `_batches` for a broken connection)."""
        try:
            fetched = box.fetch(batch)
        except ConnectionLost as exc:
            if len(batch) == 1:
                self._fetch_failed(box, batch[0], str(exc), summary)
            self._suspects.update(batch)
            raise
        except MailboxError as exc:
            if len(batch) == 1:
                self._fetch_failed(box, batch[0], str(exc), summary)
                return {}
            fetched = {}
        missing = [uid for uid in batch if uid not in fetched]
        if len(batch) == 1 and missing:
            self._fetch_failed(box, batch[0], "the server returned no message body", summary)
        elif missing:
            for uid in missing:
                fetched.update(self._fetch(box, [uid], summary))
        self._suspects.difference_update(fetched)
        return fetched

    def _fetch_failed(self, box: Mailbox, uid: int, error: str, summary: Summary) -> None:
        summary.failed += 1
        origin = ImapOrigin(self.settings.folder, box.uidvalidity, uid)
        failures = record_fetch_failure(self.services, self.address, origin, error)
        log_event(log, "imap.fetch_failed", logging.WARNING, mailbox=self.address, uidvalidity=box.uidvalidity,
                  uid=uid, failures=f"{failures}/{self.settings.max_fetch_failures}", error=error)

    def _set_aside_broken(self, box: Mailbox, batch: list[int]) -> list[int]:
        """Move messages that failed max_fetch_failures times to the error folder; return the rest."""
        broken = fetch_failures(self.services, self.address, self.settings.folder, box.uidvalidity, batch,
                                self.settings.max_fetch_failures)
        if not broken:
            return batch
        box.move(sorted(broken), self.settings.error_folder)
        for uid, (failures, error) in sorted(broken.items()):
            log_event(log, "imap.moved_to_error_folder", logging.ERROR, mailbox=self.address,
                      folder=self.settings.error_folder, uidvalidity=box.uidvalidity, uid=uid, failures=failures,
                      error=error)
        self._suspects.difference_update(broken)
        return [uid for uid in batch if uid not in broken]

    def _box(self) -> Mailbox:
        if self._mailbox is None:
            box = self._connect(self.settings)
            if self._uidvalidity is not None and box.uidvalidity != self._uidvalidity:
                log_event(log, "imap.uidvalidity_changed", logging.WARNING, mailbox=self.address,
                          folder=self.settings.folder, old=self._uidvalidity, new=box.uidvalidity)
                self._suspects.clear()
            self._mailbox, self._uidvalidity = box, box.uidvalidity
            self._set_state("connected", logging.INFO, host=self.settings.host, folder=self.settings.folder,
                            idle=box.can_idle, uidvalidity=box.uidvalidity)
        return self._mailbox

    def _wait(self, stopping: threading.Event) -> None:
        box = self._box()
        if box.can_idle:
            box.wait(self.settings.idle_seconds, stopping)
        else:
            stopping.wait(self.settings.poll_seconds)

    def _failed(self, exc: Exception, delay: float) -> None:
        self._disconnect()
        state = ("login_refused" if isinstance(exc, LoginRefused) else "unreachable" if isinstance(exc, ConnectionLost)
                 else "refused" if isinstance(exc, MailboxError) else "error")
        self._set_state(state, logging.WARNING, exc_info=state == "error", error=_text(exc), retry_in=f"{delay:g}s")

    def _set_state(self, state: str, level: int, exc_info: bool = False, **facts: object) -> None:
        """One log line per change of state; repeats of the same state only at debug level."""
        changed, self._state = state != self._state, state
        metrics.imap_state(self.address, state)
        log_event(log, "imap.state", level if changed else logging.DEBUG, exc_info=exc_info and changed,
                  state=state, mailbox=self.address, **facts)

    def _disconnect(self) -> None:
        if self._mailbox is not None:
            self._mailbox.close()
            self._mailbox = None


def record_fetch_failure(services: Services, mailbox: str, origin: ImapOrigin, error: str) -> int:
    """Count one more failed fetch of a message; returns its count so far."""
    key = (ImapFetchFailure.mailbox == mailbox, ImapFetchFailure.folder == origin.folder,
           ImapFetchFailure.uidvalidity == origin.uidvalidity, ImapFetchFailure.uid == origin.uid)
    with unit_of_work(services.sessions) as session:
        row = session.scalar(select(ImapFetchFailure).where(*key).with_for_update())
        if row is None:
            row = ImapFetchFailure(mailbox=mailbox, folder=origin.folder, uidvalidity=origin.uidvalidity,
                                   uid=origin.uid, failures=0)
            session.add(row)
        row.failures += 1
        row.last_error, row.last_failed_at = error[:2000], services.clock()
        return row.failures


def fetch_failures(services: Services, mailbox: str, folder: str, uidvalidity: int, uids: list[int],
                   at_least: int) -> dict[int, tuple[int, str]]:
    """Messages of `uids` that failed `at_least` times: uid -> (failures, last error)."""
    with services.sessions() as session:
        rows = session.execute(select(ImapFetchFailure.uid, ImapFetchFailure.failures, ImapFetchFailure.last_error)
                               .where(ImapFetchFailure.mailbox == mailbox, ImapFetchFailure.folder == folder,
                                      ImapFetchFailure.uidvalidity == uidvalidity, ImapFetchFailure.uid.in_(uids),
                                      ImapFetchFailure.failures >= at_least))
        return {uid: (failures, error) for uid, failures, error in rows}


class PollerThread(threading.Thread):
    """A mailbox's poller in its own thread; the health check reads `poller.state`."""

    def __init__(self, poller: ImapPoller, stopping: threading.Event) -> None:
        super().__init__(target=poller.run, args=(stopping,), name=f"imap-{poller.address}", daemon=True)
        self.poller = poller


def start_pollers(services: Services | ServicesHolder, stopping: threading.Event) -> list[PollerThread]:
    """A thread per mailbox with an `imap` table, each ending when `stopping` is set. Connection
    settings are read once (a change needs a restart); each mail is processed under the config
    current when it is fetched, so a SIGHUP reload reaches this door too."""
    threads = []
    for mailbox in holding(services).current.config.mailboxes:
        if mailbox.imap is not None:
            thread = PollerThread(ImapPoller(services, mailbox), stopping)
            thread.start()
            threads.append(thread)
    return threads
