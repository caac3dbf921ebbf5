"""Several instances on one PostgreSQL database: every due follow-up is sent exactly once.

(SQLite is supported with a single process; these tests need PostgreSQL.)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from intake.sweep import FollowupSweep
from models import Ticket, TicketStatus
from notifications.delivery import deliver_due
from notifications.sender import SmtpSender
from notifications.sweeps import Action, run_sweep
from tests.clocked import Desk, at, make_desk
from tests.conftest import CaptureServer, make_mail

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
CASES = 20
MONDAY_0900 = at(3, 16, 9)          # attempt 1 of every case below is due


@pytest.fixture
def desk(tmp_path: Path, db_url: str, capture: CaptureServer) -> Desk:
    if db_url.startswith("sqlite"):
        pytest.skip("several instances need PostgreSQL; SQLite is supported with one process")
    return make_desk(tmp_path, db_url, capture, at(3, 12, 10))


def _pending_cases(desk: Desk) -> list[int]:
    cases = [desk.mail(make_mail(subject=f"[SEV-3] Case number {n}", sender=f"customer{n}@acme.example"),
                       at(3, 12, 10), sender=f"customer{n}@acme.example") for n in range(CASES)]
    for case in cases:
        desk.set_status(case, TicketStatus.PENDING, at(3, 12, 11))
    return cases


def _deliver_from_two_workers(desk: Desk) -> None:
    sender = SmtpSender("127.0.0.1", desk.capture.port)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: deliver_due(desk.services.sessions, sender, desk.clock), range(2)))


def _followups_per_customer(desk: Desk) -> Counter[str]:
    return Counter(r for m in desk.capture.handler.mails if "Waiting for your answer" in m.message["Subject"]
                   for r in m.recipients)


def test_two_sweep_processes_send_each_followup_once(desk: Desk) -> None:
    cases = _pending_cases(desk)
    command = [sys.executable, "-m", "intake", "--config", str(desk.config_path), "sweep", "--once",
               "--now", MONDAY_0900.isoformat(), "--json"]
    procs = [subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    done = [json.loads(out)["actions"] for out, _ in outputs]
    tickets = [a["ticket"] for actions in done for a in actions]
    assert sorted(tickets) == sorted(f"CASE-{c}" for c in cases)       # each case once, across both
    desk.clock.now = MONDAY_0900
    _deliver_from_two_workers(desk)
    assert _followups_per_customer(desk) == Counter({f"customer{n}@acme.example": 1 for n in range(CASES)})
    assert desk.sweep(MONDAY_0900) == []


class _MeetInside:
    """A follow-up sweep whose first action in each thread waits until the other thread is inside too:
    both then hold claimed rows at once, which only works if the second claim skipped the first one's."""

    name = "followups"

    def __init__(self, inner: FollowupSweep) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(2, timeout=20)
        self.local = threading.local()

    def due(self, now: datetime):  # type: ignore[no-untyped-def]
        return self.inner.due(now)

    def act(self, session: Session, ticket: Ticket, now: datetime) -> Action | None:
        if not getattr(self.local, "met", False):
            self.local.met = True
            self.barrier.wait()
        return self.inner.act(session, ticket, now)


def test_two_schedulers_claim_disjoint_batches_at_the_same_time(desk: Desk) -> None:
    cases = _pending_cases(desk)
    sweep = _MeetInside(FollowupSweep(desk.services.config, desk.services.outbox))
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: run_sweep(desk.services.sessions, sweep, MONDAY_0900, batch=5), range(2)))
    assert all(runs), "both schedulers did part of the work"
    assert sorted(a.ticket_id for run in runs for a in run) == sorted(cases)
    desk.clock.now = MONDAY_0900
    _deliver_from_two_workers(desk)
    assert set(_followups_per_customer(desk).values()) == {1} and len(_followups_per_customer(desk)) == CASES
