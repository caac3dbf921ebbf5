"""The IMAP door: a poller per configured mailbox feeds new messages to the same `ingest` as the
SMTP listener, and marks a message (moved to `processed_folder`, or flagged \\Seen) only after
`ingest` returned, that is after its inbound row was committed. A crash in between means the
message is fetched again and recognised as a duplicate. Choices are in docs/imap.md.

The poller talks to `Mailbox` (intake/imap_mailbox.py, the only module that imports imapclient).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Callable, Iterator

from sqlalchemy import select

from intake import metrics
from intake.config import ImapConfig, MailboxConfig
from intake.crashpoints import crash_point
from intake.imap_mailbox import ConnectionLost, ImapClientMailbox, LoginRefused, Mailbox, MailboxError, error_text
from intake.importer import Summary
from intake.logs import log_event
from intake.pipeline import Services, ingest
from intake.reload import ServicesHolder, holding
from intake.store import Envelope, ImapOrigin
from models.db import unit_of_work
from models.mail import ImapFetchFailure

log = logging.getLogger("intake.imap")


class PollFailed(Exception):
    """`poll_once` gave up; `summary` is what it did before."""

    def __init__(self, summary: Summary, cause: Exception) -> None:
        super().__init__(error_text(cause))
        self.summary = summary


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
        self._set_state(state, logging.WARNING, exc_info=state == "error", error=error_text(exc), retry_in=f"{delay:g}s")

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
