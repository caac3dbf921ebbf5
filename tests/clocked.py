"""A service desk whose clock the test sets: mail in through the real pipeline, status changes,
sweeps and delivery to the capture server, each at a chosen moment. Nothing sleeps."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from intake.config import load_config
from intake.lifecycle import change_status
from intake.pipeline import Services, ingest
from intake.service import build_services
from intake.store import Envelope
from intake.sweep import run_sweeps
from intake.views import show_ticket
from models import Ticket, TicketStatus
from models.db import unit_of_work
from notifications.delivery import deliver_due
from notifications.sender import SmtpSender
from notifications.sweeps import Action
from tests.conftest import CaptureServer, Captured, free_port, write_config

STOCKHOLM = ZoneInfo("Europe/Stockholm")


def at(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A moment in 2026, Stockholm time (2026-03-12 is a Thursday)."""
    return datetime(2026, month, day, hour, minute, tzinfo=STOCKHOLM)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Desk:
    services: Services
    clock: Clock
    capture: CaptureServer
    config_path: Path

    def mail(self, raw: bytes, when: datetime, sender: str = "ann@acme.example",
             to: str = "support@example.com") -> int:
        """Deliver a mail at `when` through the SMTP door's pipeline; returns the case it went to."""
        self.clock.now = when
        result = ingest(self.services, raw, Envelope("smtp", "support@example.com", sender, (to,)))
        assert result.ticket_id is not None, result
        return result.ticket_id

    def set_status(self, ticket_id: int, status: TicketStatus, when: datetime,
                   actor: str = "alice@example.com") -> None:
        with unit_of_work(self.services.sessions) as session:
            ticket = session.get(Ticket, ticket_id)
            assert ticket is not None
            change_status(session, ticket, status, actor, when, "staff command")

    def sweep(self, when: datetime, dry_run: bool = False) -> list[Action]:
        self.clock.now = when
        return run_sweeps(self.services, when, dry_run)

    def deliver(self, to: str | None = None) -> list[Captured]:
        """Hand every due outbox row to the capture server; returns the mails that arrived (for `to`)."""
        arrived = self.capture.handler.mails
        before = len(arrived)
        deliver_due(self.services.sessions, SmtpSender("127.0.0.1", self.capture.port), self.clock)
        return [m for m in arrived[before:] if to is None or to in m.recipients]

    def show(self, ticket_id: int) -> dict[str, Any]:
        with self.services.sessions() as session:
            view = show_ticket(session, self.services.config, str(ticket_id), self.clock.now)
        assert view is not None
        return view


def make_desk(tmp_path: Path, db_url: str, capture: CaptureServer, start: datetime, extra: str = "") -> Desk:
    path = write_config(tmp_path, db_url, free_port(), capture.port, extra=extra)
    clock = Clock(start)
    services = build_services(load_config(path))
    return Desk(Services(services.config, services.sessions, services.outbox, clock, services.mail_enqueued),
                clock, capture, path)
