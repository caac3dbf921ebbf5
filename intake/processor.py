"""Processing off the SMTP answer.

The listener answers `250` once a mail is stored, the durability point (PRODUCT.md §3), and
hands it to the processing process (intake/processing_process.py), where one thread of this
kind runs stages 2-6 on stored mail in the order it arrived, so a sender waits for a commit,
never for parsing, rendering or the write lock held by processing. Under load, the small mails
queued behind a mail share its transaction (`BATCH_MAILS`, `BATCH_MAIL_BYTES`): one commit, and on
SQLite one wait for the write lock and one sync, for all of them (docs/performance.md).

Each mail is processed under the config the processing process had when the mail reached it (a
reload is passed on in order with the mails). A mail the thread did not get to (it stopped or
died first, or the database was away through every retry) stays `received`: `resume_received`
finishes it at the next start, and within minutes from the scheduler.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from sqlalchemy.exc import OperationalError

from intake.logs import log_event
from intake.pipeline import Result, Services, finish_together
from intake.store import Envelope, Stored

log = logging.getLogger("intake.processor")

RETRY_SECONDS = (0.5, 1, 2, 4, 8)      # a database blip; after these, resume_received takes over
RAW_KEPT_BYTES = 64 * 1024 * 1024   # queued mail kept in memory for parsing; past it, read back from the store
BATCH_MAILS = 8                     # queued mails processed in one transaction, at most
BATCH_MAIL_BYTES = 256 * 1024       # a larger mail is processed in a transaction of its own


@dataclass(frozen=True)
class Accepted:
    services: Services
    stored: Stored
    envelope: Envelope
    raw: bytes | None   # None: read back from the store; either way parsed before the transaction opens
    started: float      # time.monotonic() when the mail's DATA ended, for the latency metric
    size: int | None = None     # the bytes' length when they were left to the store (RAW_KEPT_BYTES)


class Processor:
    """A queue of accepted mail and the thread that processes it."""

    def __init__(self, done: Callable[[Accepted, Result | None], None] | None = None) -> None:
        self._done = done       # told of each mail taken: its result, or None when not processed now
        self._queue: queue.Queue[Accepted | None] = queue.Queue()
        self._kept = 0          # bytes of queued mail held in memory (RAW_KEPT_BYTES)
        self._kept_lock = threading.Lock()
        self._stopping = threading.Event()
        self._next: Accepted | None = None     # taken from the queue, not batched with the mails before it
        self._thread = threading.Thread(target=self._run, name="processing", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, accepted: Accepted) -> None:
        """Queue a stored mail. Its bytes stay with it while the queued bytes are under RAW_KEPT_BYTES:
        a burst beyond what processing keeps up with, or a few huge mails, cost no more memory; the
        rest is read back from the store when its turn comes."""
        size = len(accepted.raw or b"")
        with self._kept_lock:
            keep = self._kept + size <= RAW_KEPT_BYTES
            self._kept += size if keep else 0
        self._queue.put(accepted if keep else replace(accepted, raw=None, size=size))

    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout: float = 30) -> bool:
        """Whether every submitted mail was processed within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def stop(self, timeout: float = 10) -> None:
        """Process what is queued, for up to `timeout` seconds; then finish the mails in hand (one
        transaction) and stop. What is still queued stays `received` for the next start."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch, stop = self._take()
            try:
                if batch and not self._stopping.is_set():
                    self._process(batch)
            finally:
                for accepted in batch:
                    if accepted.raw is not None:
                        with self._kept_lock:
                            self._kept -= len(accepted.raw)
                for _ in range(len(batch) + stop):
                    self._queue.task_done()
            if stop or self._stopping.is_set():
                return

    def _take(self) -> tuple[list[Accepted], bool]:
        """The next mail and those queued behind it that share its transaction (up to BATCH_MAILS
        small ones under the same config), and whether the stop came after them."""
        first = self._next if self._next is not None else self._queue.get()
        self._next = None
        if first is None:
            return [], True
        batch = [first]
        while _small(first) and len(batch) < BATCH_MAILS:
            try:
                following = self._queue.get_nowait()
            except queue.Empty:
                break
            if following is None:
                return batch, True
            if not _small(following) or following.services is not first.services:
                self._next = following      # starts the next batch
                break
            batch.append(following)
        return batch, False

    def _process(self, batch: list[Accepted]) -> None:
        for accepted, result in zip(batch, self._finish(batch)):
            if self._done is not None:
                self._done(accepted, result)

    def _finish(self, batch: list[Accepted]) -> list[Result | None]:
        for delay in (*RETRY_SECONDS, None):
            try:
                return list(finish_together(batch[0].services, [
                    (accepted.stored, accepted.envelope, accepted.raw, accepted.started) for accepted in batch]))
            except OperationalError:    # logged by process_together() as mail.deferred; the mail stays `received`
                if delay is None or self._stopping.wait(delay):
                    break
            except Exception:   # the quarantine itself failed: the mail stays `received` for resume_received
                for accepted in batch:
                    log_event(log, "processing.failed", logging.ERROR, exc_info=True, inbound=accepted.stored.inbound_id)
                return [None] * len(batch)
        for accepted in batch:
            log_event(log, "processing.deferred", logging.WARNING, inbound=accepted.stored.inbound_id,
                      retry="resume_received")
        return [None] * len(batch)


def _small(accepted: Accepted) -> bool:
    """Whether a mail may share its transaction: every parsed mail of a batch is held until the
    commit, so a large one goes alone (docs/performance.md, "Large mails held once"), and so does
    one of unknown size (sent by the door without its bytes: over the pipe's limit)."""
    if accepted.stored.duplicate:
        return True
    size = len(accepted.raw) if accepted.raw is not None else accepted.size
    return size is not None and size <= BATCH_MAIL_BYTES
