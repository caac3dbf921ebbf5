"""Prometheus metrics and the health endpoint of `intake serve`; the only importer of prometheus_client.

Counters and the latency histogram are bumped where things happen (the doors, the outbox worker,
the scheduler, the IMAP pollers) and count this process's work. What the database holds (outbox
depth, the oldest waiting mail, the quarantine) is read when Prometheus scrapes, by a collector,
so it is true whatever another instance or an administrator's command did meanwhile.

One small HTTP server serves `/metrics` and `/health` (docs/operations.md).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Iterator

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, Counter, Enum, Histogram, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from models import InboundMail, InboundStatus, OutboxMail, OutboxStatus, Outcome
from notifications.delivery import DeliveryReport
from notifications.sweeps import Action

DOORS = ("smtp", "imap", "import")
OUTCOMES = (*(outcome.value for outcome in Outcome), "duplicate", "quarantined")
IMAP_STATES = ("starting", "connected", "unreachable", "login_refused", "refused", "error", "stopped")

MAILS = Counter("intake_mails_received", "Mail taken in through a door, by door and outcome", ["door", "outcome"])
PROCESSING = Histogram("intake_processing_seconds", "From a mail's arrival at a door to its outcome", ["door"],
                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SENT = Counter("intake_outbox_sent", "Outgoing mails the relay accepted")
DELIVERY_FAILURES = Counter("intake_delivery_failures", "Failed delivery attempts: temporary ones are retried, "
                            "permanent ones leave the mail failed", ["kind"])
IMAP_STATE = Enum("intake_imap_state", "Connection state of each IMAP mailbox's poller", ["mailbox"],
                  states=list(IMAP_STATES))
SLA_WARNINGS = Counter("intake_sla_warnings", "SLA warnings enqueued for staff")
SLA_BREACHES = Counter("intake_sla_breaches", "SLA breach notices enqueued for staff")


def received(door: str, outcome: str, seconds: float) -> None:
    MAILS.labels(door, outcome).inc()
    PROCESSING.labels(door).observe(seconds)


def delivered(report: DeliveryReport) -> None:
    SENT.inc(report.sent)
    DELIVERY_FAILURES.labels("temporary").inc(report.retried)
    DELIVERY_FAILURES.labels("permanent").inc(report.failed)


def imap_state(mailbox: str, state: str) -> None:
    IMAP_STATE.labels(mailbox).state(state)


def swept(actions: Iterable[Action]) -> None:
    """Count the SLA notices among what a run of the sweeps did."""
    for action in actions:
        if action.kind == "sla_warning":
            SLA_WARNINGS.inc()
        elif action.kind == "sla_breach":
            SLA_BREACHES.inc()


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape. A database that does not answer gives
    `intake_database_up 0` and no other gauge, rather than a failed scrape."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session]], clock: Callable[[], datetime]) -> None:
        self.sessions, self.clock = sessions, clock

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("intake_database_up", "1 when the database answered this scrape")
        try:
            with self.sessions()() as session:
                pending, oldest = session.execute(select(func.count(OutboxMail.id), func.min(OutboxMail.created_at))
                                                  .where(OutboxMail.status == OutboxStatus.PENDING)).one()
                failed = session.scalar(select(func.count(OutboxMail.id))
                                        .where(OutboxMail.status == OutboxStatus.FAILED))
                quarantined = session.scalar(select(func.count(InboundMail.id))
                                             .where(InboundMail.status == InboundStatus.QUARANTINED))
                backlog = session.scalar(select(func.count(InboundMail.id))
                                         .where(InboundMail.status == InboundStatus.RECEIVED))
        except Exception:       # the scrape still answers: the database being away is what it reports
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        age = (self.clock() - oldest).total_seconds() if oldest is not None else 0.0
        for name, doc, value in (
                ("intake_outbox_depth", "Outgoing mails waiting to be delivered (due now or retried later)", pending),
                ("intake_outbox_oldest_pending_age_seconds", "Age of the oldest waiting outgoing mail (0: none)",
                 max(age, 0.0)),
                ("intake_outbox_failed", "Outgoing mails that failed for good (`intake outbox retry` sends them "
                 "again)", failed),
                ("intake_quarantine_size", "Stored mails whose processing failed (`intake quarantine list`)",
                 quarantined),
                ("intake_processing_backlog", "Stored mails not processed yet", backlog)):
            yield GaugeMetricFamily(name, doc, value=float(value or 0))


Check = Callable[[], "str | None"]


@dataclass
class Health:
    """Named checks, each returning None when fine, else what is wrong; run when `/health` is asked."""
    checks: dict[str, Check] = field(default_factory=dict)

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def report(self) -> tuple[bool, dict[str, str]]:
        results = {}
        for name, check in self.checks.items():
            try:
                problem = check()
            except Exception as exc:    # a check that breaks is a failing check, not a broken endpoint
                problem = f"{type(exc).__name__}: {exc}"
            results[name] = "ok" if problem is None else problem
        return all(result == "ok" for result in results.values()), results


def database_check(sessions: Callable[[], sessionmaker[Session]]) -> Check:
    def check() -> str | None:
        try:
            with sessions()() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:
            return f"unreachable: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
        return None
    return check


class MetricsUnavailable(Exception):
    """The metrics port could not be bound."""


class MetricsServer:
    """`/metrics` and `/health` on one port. The socket is bound on construction (so a port in use
    stops `intake serve` before anything else starts) and served from `start`."""

    def __init__(self, host: str, port: int, collector: Collector) -> None:
        try:
            self._server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise MetricsUnavailable(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        disable_created_metrics()       # `_created` series double the output and no dashboard reads them
        self._collector = collector
        self._thread: threading.Thread | None = None
        self.address = f"{host}:{self._server.server_address[1]}"

    def start(self, health: Health) -> None:
        self._server.health = health        # type: ignore[attr-defined]
        REGISTRY.register(self._collector)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            REGISTRY.unregister(self._collector)
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:       # noqa: N802 (the name http.server calls)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
        elif path == "/health":
            ok, checks = self.server.health.report()     # type: ignore[attr-defined]
            body = {"status": "ok" if ok else "failing", "checks": checks}
            self._answer(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
        else:
            self._answer(404, "text/plain; charset=utf-8", b"not found: try /metrics or /health\n")

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes every few seconds are not events worth a log line."""


def prepare(mailboxes: Iterable[str] = ()) -> None:
    """Create every door/outcome series at zero (and each IMAP mailbox's), so that a rate over the
    first mail of a kind is not lost to a series that did not exist yet."""
    for door in DOORS:
        PROCESSING.labels(door)
        for outcome in OUTCOMES:
            MAILS.labels(door, outcome)
    for kind in ("temporary", "permanent"):
        DELIVERY_FAILURES.labels(kind)
    for mailbox in mailboxes:
        IMAP_STATE.labels(mailbox)
