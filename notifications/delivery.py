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
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Callable, cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models import Event, OutboxMail, OutboxStatus
from notifications.sender import PermanentFailure, Sender, TemporaryFailure

log = logging.getLogger("intake.delivery")

LEASE = timedelta(minutes=5)
FIRST_RETRY = timedelta(seconds=30)
MAX_RETRY = timedelta(hours=1)
CLAIM_BATCH = 50        # rows leased per pass
# A send result: the row's new state (the UPDATE's parameters) and, for a mail that failed for good,
# the event on its case.
_Result = tuple[dict[str, Any], dict[str, Any] | None]
_unrecorded: list[_Result] = []     # send results a pass could not write (the database was away)
_unrecorded_lock = threading.Lock()


@dataclass(frozen=True)
class DeliveryReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0

    @property
    def handled(self) -> int:
        """Rows the pass claimed and settled: a full batch means more are likely due right now."""
        return self.sent + self.retried + self.failed


def backoff(attempts: int) -> timedelta:
    """30 s, 1 min, 2 min, ... capped at an hour: a relay outage delays mail, never drops it."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), MAX_RETRY)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed outbox row: what sending it and logging the result take, without an ORM object."""
    id: int
    kind: str
    ticket_id: int | None
    message_id: str
    sender: str
    recipients: list[str]
    raw: bytes
    attempts: int       # this one included


_OUTBOX = cast(Table, OutboxMail.__table__)
_CLAIMED = [_OUTBOX.c[field.name] for field in fields(Claimed)]
_TAKE_LEASE = {"attempts": _OUTBOX.c.attempts + 1, "next_attempt_at": bindparam("lease")}
_DUE = (select(_OUTBOX.c.id, _OUTBOX.c.next_attempt_at.label("due_at"))
        .where(_OUTBOX.c.status == OutboxStatus.PENDING, _OUTBOX.c.next_attempt_at <= bindparam("now"))
        .order_by(_OUTBOX.c.next_attempt_at, _OUTBOX.c.id).limit(bindparam("limit"))
        .with_for_update(skip_locked=True))     # SQLite has none: its BEGIN IMMEDIATE keeps other writers out
_DUE_CTE = _DUE.cte("due")
_CLAIM_DUE = (update(_OUTBOX).where(_OUTBOX.c.id == _DUE_CTE.c.id).values(_TAKE_LEASE)
              .returning(*_CLAIMED, _DUE_CTE.c.due_at))
_CLAIM_IDS = (update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True))).values(_TAKE_LEASE)
              .returning(*_CLAIMED))
_RECORD = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("row_id"))    # SET: the other keys of each result
_INSERT_EVENT = insert(cast(Table, Event.__table__))


def claim_due(conn: Connection, now: datetime, limit: int = CLAIM_BATCH) -> list[Claimed]:
    """Lease up to `limit` due rows in one short transaction; they are sent in the order they fell due.

    On PostgreSQL one statement leases the rows and returns each with its due time, to sort by.
    SQLite's RETURNING sees only the updated table: the due ids are read first, under the write
    lock BEGIN IMMEDIATE took, then leased."""
    params = {"now": now, "limit": limit, "lease": now + LEASE}
    with conn.begin():
        if conn.dialect.name == "postgresql":
            rows = sorted(conn.execute(_CLAIM_DUE, params), key=lambda row: (row.due_at, row.id))
            return [Claimed(*row[:-1]) for row in rows]
        order = {row_id: position for position, row_id in enumerate(conn.scalars(_DUE, params))}
        if not order:
            return []
        leased = conn.execute(_CLAIM_IDS, {**params, "ids": list(order)})
        return sorted((Claimed(*row) for row in leased), key=lambda claimed: order[claimed.id])


def deliver_due(sessions: sessionmaker[Session], sender: Sender, clock: Callable[[], datetime],
                crash: Callable[[str], None] = lambda _: None) -> DeliveryReport:
    """Send what is due now; returns counts. Safe to run from several processes at once.

    The pass keeps one database connection: checking one out of the pool for each result would
    cost a liveness ping per mail on PostgreSQL."""
    with _engine(sessions).connect() as conn:
        outcomes = _Outcomes(conn)
        with _unrecorded_lock:          # results an earlier pass could not record are written first
            outcomes.waiting, _unrecorded[:] = [*_unrecorded], []
        try:
            outcomes.write()
            for row in claim_due(conn, clock()):
                try:
                    sender.send(row.sender, row.recipients, row.raw)
                except TemporaryFailure as exc:
                    delay = backoff(row.attempts)
                    outcomes.add(row.id, OutboxStatus.PENDING, clock() + delay, str(exc))
                    log.warning("outbox.retry", extra=_facts(row, attempts=row.attempts,
                                                             retry_in=f"{delay.total_seconds():g}s", error=str(exc)))
                    continue
                except PermanentFailure as exc:
                    now = clock()
                    outcomes.add(row.id, OutboxStatus.FAILED, now, str(exc), _failure_event(row, now, str(exc)))
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


def _failure_event(row: Claimed, now: datetime, error: str) -> dict[str, Any] | None:
    """A `delivery_failed` event on the mail's case, written with the row's status: staff reading the
    case see that this mail did not go out (its copy among the case's messages does not say so)."""
    if row.ticket_id is None:
        return None
    return {"ticket_id": row.ticket_id, "kind": "delivery_failed", "at": now, "actor": "system",
            "data": {"outbox": row.id, "mail": row.kind, "to": list(row.recipients), "error": error}}


def _facts(row: Claimed, **more: object) -> dict[str, Any]:
    """`extra` for a structured log line (rendered by intake/logs.py): which mail, and what happened."""
    return {"fields": {"outbox": row.id, "kind": row.kind, "ticket": row.ticket_id, "message_id": row.message_id,
                       "to": list(row.recipients), **more}}


def _engine(sessions: sessionmaker[Session]) -> Engine:
    """The engine the sessions are bound to: delivery's statements run on it, with no Session around them."""
    engine: Engine = sessions.kw["bind"]
    return engine


class _Outcomes:
    """Send results, each written as soon as it is known; ones the database could not take wait here."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.waiting: list[_Result] = []
        self.counts = dict.fromkeys(OutboxStatus, 0)

    def add(self, row_id: int, status: OutboxStatus, when: datetime, error: str | None,
            event: dict[str, Any] | None = None) -> None:
        self.waiting.append(({"row_id": row_id, "status": status, "last_error": error,
                              "sent_at" if status is OutboxStatus.SENT else "next_attempt_at": when}, event))
        self.counts[status] += 1
        self.write()

    def write(self) -> None:
        if self.waiting:
            try:
                self._write()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                self._write()   # the kept connection had died (a database restart): once more on a new one
            self.waiting = []

    def _write(self) -> None:
        with self.conn.begin():
            for state, event in self.waiting:
                self.conn.execute(_RECORD, state)
                if event is not None:
                    self.conn.execute(_INSERT_EVENT, event)

    def report(self) -> DeliveryReport:
        return DeliveryReport(self.counts[OutboxStatus.SENT], self.counts[OutboxStatus.PENDING],
                              self.counts[OutboxStatus.FAILED])
