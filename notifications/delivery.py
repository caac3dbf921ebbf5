"""Stage 7, deliver: claim due outbox rows, send them, record the result.

A row is claimed by pushing its next attempt into the future (a lease) in a short
transaction, under `FOR UPDATE SKIP LOCKED` where the database has it, so several
instances never send the same row at once. Each result is recorded right after its send,
so if the process dies after the relay accepted a mail but before its row is marked sent,
the lease runs out and that one mail is sent again: the only window in which a recipient
can get a mail twice, as small as SMTP allows. Results that cannot be written because the database went away
are kept in memory and written first on the next pass, so an outage alone sends nothing twice.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models import OutboxMail, OutboxStatus
from models.db import unit_of_work
from notifications.sender import PermanentFailure, Sender, TemporaryFailure

log = logging.getLogger("intake.delivery")

LEASE = timedelta(minutes=5)
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
_unrecorded: list[dict[str, Any]] = []     # send results a pass could not write (the database was away)
_unrecorded_lock = threading.Lock()


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... capped at an hour: a relay outage delays mail, never drops it."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), MAX_RETRY)


def claim_due(sessions: sessionmaker[Session], now: datetime, limit: int = 50) -> list[OutboxMail]:
    with unit_of_work(sessions) as session:
        rows = list(session.scalars(
            select(OutboxMail)
            .where(OutboxMail.status == OutboxStatus.PENDING, OutboxMail.next_attempt_at <= now)
            .order_by(OutboxMail.next_attempt_at, OutboxMail.id).limit(limit)
            .with_for_update(skip_locked=True)))
        for row in rows:
            row.attempts += 1
            row.next_attempt_at = now + LEASE
    return rows


def deliver_due(sessions: sessionmaker[Session], sender: Sender, clock: Callable[[], datetime],
                crash: Callable[[str], None] = lambda _: None) -> DeliveryReport:
    """Send what is due now; returns counts. Safe to run from several processes at once."""
    outcomes = _Outcomes(sessions)
    with _unrecorded_lock:          # results an earlier pass could not record are written first
        outcomes.waiting, _unrecorded[:] = [*_unrecorded], []
    try:
        outcomes.write()
        for row in claim_due(sessions, clock()):
            try:
                sender.send(row.sender, row.recipients, row.raw)
            except TemporaryFailure as exc:
                delay = backoff(row.attempts)
                outcomes.add(row.id, OutboxStatus.PENDING, clock() + delay, str(exc))
                log.warning("outbox.retry", extra=_facts(row, attempts=row.attempts,
                                                         retry_in=f"{delay.total_seconds():g}s", error=str(exc)))
                continue
            except PermanentFailure as exc:
                outcomes.add(row.id, OutboxStatus.FAILED, clock(), str(exc))
                log.error("outbox.failed", extra=_facts(row, attempts=row.attempts, error=str(exc)))
                continue
            crash("after_relay_accepted")
            outcomes.add(row.id, OutboxStatus.SENT, clock(), None)
            log.info("outbox.sent", extra=_facts(row, attempts=row.attempts))
    finally:
        sender.close()
        try:
            outcomes.write()
        except OperationalError:    # the database went away: a mail the relay took must not go out again
            with _unrecorded_lock:      # when its lease runs out, so its result waits here for the next pass
                _unrecorded.extend(outcomes.waiting)
            outcomes.waiting = []
            raise
    return outcomes.report()


def _facts(row: OutboxMail, **more: object) -> dict[str, Any]:
    """`extra` for a structured log line (rendered by intake/logs.py): which mail, and what happened."""
    return {"fields": {"outbox": row.id, "kind": row.kind, "ticket": row.ticket_id, "message_id": row.message_id,
                       "to": list(row.recipients), **more}}


class _Outcomes:
    """Send results, each written as soon as it is known; ones the database could not take wait here."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.waiting: list[dict[str, Any]] = []
        self.counts = dict.fromkeys(OutboxStatus, 0)

    def add(self, row_id: int, status: OutboxStatus, when: datetime, error: str | None) -> None:
        self.waiting.append({"id": row_id, "status": status, "last_error": error,
                             "sent_at" if status is OutboxStatus.SENT else "next_attempt_at": when})
        self.counts[status] += 1
        self.write()

    def write(self) -> None:
        if self.waiting:
            with unit_of_work(self.sessions) as session:
                session.execute(update(OutboxMail), self.waiting)     # by primary key, one statement per shape
            self.waiting = []

    def report(self) -> DeliveryReport:
        return DeliveryReport(self.counts[OutboxStatus.SENT], self.counts[OutboxStatus.PENDING],
                              self.counts[OutboxStatus.FAILED])
