"""Processing in a process of its own, beside the SMTP door.

One interpreter ran the door (event loop, store), processing and delivery, and was the limit at
one core while the machine's other core idled (docs/performance.md). `intake serve` now starts
this process; the door sends it each stored mail (id, envelope, bytes) through a pipe, and it runs
stages 2-6 in arrival order on its own `Processor` thread, with the same retries and byte budget.
For each mail it answers the door, outcome, SLA breach notices and start time, from which the
door's process counts the metrics (only the door serves them) and wakes the outbox worker.

On PostgreSQL, where transactions write side by side, `ProcessingLanes` runs several such
processes (`[database] processing_processes`); each sender's mail goes to the same one, so one
sender's mails are still processed in the order they arrived.

Nothing is lost if one dies: a mail is stored before it is sent here, and a mail not processed
stays `received` (`resume_received`). `intake serve` then ends at once, as killed, so that its
supervisor starts it again; a reload (SIGHUP) is passed on.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
import zlib
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from intake import metrics
from intake.config import Config, config_from
from intake.logs import log_event
from intake.pipeline import Result
from intake.processor import Accepted, Processor
from intake.reload import ServicesHolder
from intake.store import Stored

log = logging.getLogger("intake.processor")

STOP = None
RELOAD = "reload"
# A larger mail goes through the pipe as its id and is read back from the store: no process holds
# a pickled copy of it on its way, and each keeps one copy less afterwards (the peaks, in receiving
# and parsing, stay as they were: docs/performance.md).
PIPE_BYTES = 1024 * 1024


class ProcessingProcess:
    """The door's side of one processing process: mail and reloads go to it, outcomes come back."""

    def __init__(self, holder: ServicesHolder) -> None:
        self._holder = holder
        context = multiprocessing.get_context("spawn")     # a clean interpreter: the door already runs threads
        self._conn, child_conn = context.Pipe()
        config = holder.current.config      # the door's config as it read it, not the file as it is by now
        self._process = context.Process(target=_run, args=(str(config.path), dict(config.raw), child_conn),
                                        name="intake-processing", daemon=True)
        self._outgoing: queue.Queue[Any] = queue.Queue()   # the event loop never waits for the pipe
        self._stopping = False

    def start(self) -> None:
        self._process.start()
        threading.Thread(target=self._send, name="processing-send", daemon=True).start()
        threading.Thread(target=self._receive, name="processing-results", daemon=True).start()

    def submit(self, accepted: Accepted) -> None:
        raw = accepted.raw
        if accepted.stored.duplicate or len(raw or b"") > PIPE_BYTES:   # a duplicate is not parsed again
            raw = None
        self._outgoing.put(("mail", accepted.stored.inbound_id, accepted.stored.duplicate, accepted.envelope,
                            raw, accepted.started))

    def reload(self, config: Config) -> None:
        """Pass on a config the door reloaded (as TOML data: the file may have changed again since)."""
        self._outgoing.put((RELOAD, str(config.path), dict(config.raw)))

    def alive(self) -> bool:
        return self._process.is_alive()

    def ask_to_stop(self) -> None:
        self._stopping = True
        self._outgoing.put(STOP)

    def join(self, timeout: float) -> None:
        self._process.join(2 * timeout + 5)     # the child's own stop waits up to twice `timeout`

    def _send(self) -> None:
        while True:
            item = self._outgoing.get()
            try:
                self._conn.send(item)
            except (OSError, ValueError):       # the child is gone: _receive ends the service
                return
            if item is STOP:
                return

    def _receive(self) -> None:
        while True:
            try:
                door, outcome, breaches, started = self._conn.recv()
            except (EOFError, OSError):
                break
            if outcome is not None:     # None: not processed now (deferred to resume_received, or failed)
                metrics.received(door, outcome, time.monotonic() - started)
            metrics.SLA_BREACHES.inc(breaches)
            event = self._holder.current.mail_enqueued
            if event is not None:
                event.set()
        if not self._stopping:      # died: end as killed, so that the supervisor starts the service again
            log_event(log, "processing.died", logging.ERROR, exitcode=self._process.exitcode)
            os.kill(os.getpid(), signal.SIGKILL)


def _run(config_path: str, raw: dict[str, Any], conn: Connection) -> None:
    """The child: build the services from the door's config, then process what the door sends."""
    from intake.cli import configure_logging
    from intake.service import build_services, return_large_blocks, warmed_outbox_for

    signal.signal(signal.SIGINT, signal.SIG_IGN)        # a Ctrl-C reaches the door, which stops this
    signal.signal(signal.SIGHUP, signal.SIG_IGN)        # reloads come through the pipe
    return_large_blocks()
    config = config_from(Path(config_path), raw)
    configure_logging(config, serving=True)
    logging.getLogger("intake.reload").disabled = True     # the door logs each reload; this one follows it
    holder = ServicesHolder(build_services(config, warmed_outbox_for))
    results: queue.Queue[Any] = queue.Queue()
    processor = Processor(done=lambda accepted, result: results.put(_answer_of(accepted, result)))
    processor.start()
    answering = threading.Thread(target=_answer, args=(conn, results), name="processing-answer", daemon=True)
    answering.start()
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):     # the door is gone
            item = STOP
        if item is STOP:
            processor.stop()
            results.put(STOP)
            answering.join(5)       # the last outcomes reach the door's metrics
            return
        if item[0] == RELOAD:
            holder.use(config_from(Path(item[1]), item[2]), warmed_outbox_for)
            continue
        _, inbound_id, duplicate, envelope, raw, started = item
        processor.submit(Accepted(holder.current, Stored(inbound_id, duplicate), envelope, raw, started))


def _answer_of(accepted: Accepted, result: Result | None) -> tuple[str, str | None, int, float]:
    """What the door counts of a mail: its door, outcome (None: not processed now), the SLA breach
    notices it caused, and when its DATA ended. The metrics this process counts are not served."""
    outcome, breaches = (result.metric_outcome, result.sla_breaches) if result else (None, 0)
    return accepted.envelope.door, outcome, breaches, accepted.started


def _answer(conn: Connection, results: queue.Queue[Any]) -> None:
    while (item := results.get()) is not STOP:
        try:
            conn.send(item)
        except (OSError, ValueError):
            return


class ProcessingLanes:
    """Several processing processes; a sender's mail always goes to the same one (its lane)."""

    def __init__(self, holder: ServicesHolder, processes: int) -> None:
        self._lanes = [ProcessingProcess(holder) for _ in range(processes)]

    def start(self) -> None:
        for lane in self._lanes:
            lane.start()

    def submit(self, accepted: Accepted) -> None:
        sender = (accepted.envelope.sender or "").lower().encode()
        self._lanes[zlib.crc32(sender) % len(self._lanes)].submit(accepted)

    def reload(self, config: Config) -> None:
        for lane in self._lanes:
            lane.reload(config)

    def alive(self) -> bool:
        return all(lane.alive() for lane in self._lanes)

    def stop(self, timeout: float = 10) -> None:
        """Each child processes what is queued for up to `timeout` seconds, then finishes the mail in
        hand and stops; what is still queued stays `received` for the next start."""
        for lane in self._lanes:
            lane.ask_to_stop()
        for lane in self._lanes:
            lane.join(timeout)
