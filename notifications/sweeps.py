"""Stage 8, sweep: claim the cases whose time has come and act on each exactly once.

This module is the mechanism only and knows nothing of config: a `Sweep` says which cases
are due (a condition on the times stored on tickets, all indexed) and what to do with one;
`intake/sweep.py` defines the sweeps themselves.

Claims take `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, so several instances share
the work and never act on one case at once; SQLite transactions start with BEGIN IMMEDIATE
(models/db.py), which serialises them (one process is the supported setup there). The action,
its outbox rows and the case's next due time commit together, so a crash or a restart loses
nothing and repeats nothing. The work comes from stored times, not from ticks: a service
that was down for a day finds each case due once and acts once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from models import Ticket

log = logging.getLogger("intake.sweep")

BATCH = 20


@dataclass(frozen=True)
class Action:
    """One thing a sweep did (or, in a dry run, would do)."""
    sweep: str
    ticket_id: int
    kind: str                       # followup, closing_notice, sla_warning, sla_breach, sev1_reminder
    due: datetime                   # when it was due
    recipients: tuple[str, ...]
    detail: str = ""


class Sweep(Protocol):
    name: str

    def due(self, now: datetime) -> ColumnElement[bool]:
        """Which tickets to look at: a condition on their stored times."""

    def act(self, session: Session, ticket: Ticket, now: datetime) -> Action | None:
        """Act on one claimed ticket and store its next time; None when it turned out not to be due."""


def run_sweep(sessions: sessionmaker[Session], sweep: Sweep, now: datetime, dry_run: bool = False,
              batch: int = BATCH) -> list[Action]:
    """Look once at every ticket due at `now`, in id order; a dry run does the same work and rolls
    it back. A failing ticket is rolled back alone (a savepoint), logged, and left for the next run.
    Each batch starts past the last id looked at: a case that stays due is not looked at twice,
    and a batch costs the same however many came before it.
    """
    actions: list[Action] = []
    after = 0
    while True:
        with sessions() as session:
            claimed = _claim(session, sweep, now, after, batch)
            for ticket in claimed:
                after = ticket.id
                action = _act_alone(session, sweep, ticket, now)
                if action is not None:
                    actions.append(action)
            if dry_run:
                session.rollback()
            else:
                session.commit()
        if len(claimed) < batch:
            return actions


def _claim(session: Session, sweep: Sweep, now: datetime, after: int, batch: int) -> list[Ticket]:
    return list(session.scalars(select(Ticket).where(sweep.due(now), Ticket.id > after).order_by(Ticket.id)
                                .limit(batch).with_for_update(skip_locked=True)))


def _act_alone(session: Session, sweep: Sweep, ticket: Ticket, now: datetime) -> Action | None:
    ticket_id = ticket.id
    try:
        with session.begin_nested():
            action = sweep.act(session, ticket, now)
            session.flush()
    except Exception:       # one broken case must not stop the others: it is tried again next run
        log.exception("sweep.failed", extra={"fields": {"sweep": sweep.name, "ticket": ticket_id}})
        return None
    if action is not None:      # a structured line (rendered by intake/logs.py)
        log.info("sweep.action", extra={"fields": {"sweep": sweep.name, "ticket": ticket_id, "kind": action.kind,
                                                   "due": action.due.isoformat(), "to": list(action.recipients)}})
    return action
