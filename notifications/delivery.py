"""Stage 7, deliver: claim due outbox rows, send them, record the result.

A row is claimed by pushing its next attempt into the future (a lease) in a short
transaction, under `FOR UPDATE SKIP LOCKED` where the database has it, so several
instances never send the same row at once. If the process dies after the relay accepted a
mail but before the row is marked sent, the lease runs out and the mail is sent again: the
only window in which a recipient can get a mail twice.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from models import OutboxMail, OutboxStatus
from models.db import unit_of_work
from notifications.sender import PermanentFailure, Sender, TemporaryFailure

log = logging.getLogger("intake.delivery")

LEASE = timedelta(minutes=5)
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)


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
    sent = retried = failed = 0
    for row in claim_due(sessions, clock()):
        try:
            sender.send(row.sender, row.recipients, row.raw)
        except TemporaryFailure as exc:
            _finish(sessions, row.id, OutboxStatus.PENDING, clock() + backoff(row.attempts), str(exc))
            log.warning("outbox retry id=%s kind=%s attempts=%s error=%s", row.id, row.kind, row.attempts, exc)
            retried += 1
            continue
        except PermanentFailure as exc:
            _finish(sessions, row.id, OutboxStatus.FAILED, clock(), str(exc))
            log.error("outbox failed id=%s kind=%s error=%s", row.id, row.kind, exc)
            failed += 1
            continue
        crash("after_relay_accepted")
        _finish(sessions, row.id, OutboxStatus.SENT, clock(), None)
        log.info("outbox sent id=%s kind=%s message_id=%s", row.id, row.kind, row.message_id)
        sent += 1
    return DeliveryReport(sent, retried, failed)


def _finish(sessions: sessionmaker[Session], row_id: int, status: OutboxStatus, when: datetime,
            error: str | None) -> None:
    with unit_of_work(sessions) as session:
        row = session.get(OutboxMail, row_id)
        assert row is not None
        row.status, row.last_error = status, error
        if status is OutboxStatus.SENT:
            row.sent_at = when
        else:
            row.next_attempt_at = when
