"""Metrics and health: a running `intake serve` is scraped after a handful of mails; the health
endpoint answers 200 only when the database answers and every door is serving."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import update

from intake import metrics
from intake.config import load_config
from intake.imap_mailbox import ConnectionLost
from intake.imap_poller import ImapPoller, PollerThread
from intake.processor import Processor
from intake.reload import ServicesHolder
from intake.service import build_services, health_checks
from models import Ticket
from models.db import make_engine
from notifications.sweeps import Action
from tests.conftest import EXTRA_CONFIG, CaptureServer, free_port, make_mail, run_cli, write_config
from tests.harness import Serve, smtp_send

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The Prometheus text format read into (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = SAMPLE.match(line).groups()     # type: ignore[union-attr]
            pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
            samples[(name, pairs)] = float(value)
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def eventually(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.mark.integration
def test_a_running_service_counts_what_it_received_sent_and_holds(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    overrides = tmp_path / "overrides" / "community"
    overrides.mkdir(parents=True)
    (overrides / "body.txt").write_text("{{ no_such_variable }}\n")       # a community-tier mail is quarantined
    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, db_url, port, capture.port, replace={
        "port = 9464": f"port = {metrics_port}", 'templates_dir = ""': 'templates_dir = "overrides"'})
    capture.stop()                                                          # the relay is down at first
    serve = Serve(config, port, tmp_path / "serve.log")
    try:
        eventually(lambda: health(metrics_port)[0] == 200)
        assert health(metrics_port)[1] == {"status": "ok",
                                           "checks": {"database": "ok", "smtp": "ok", "processing": "ok"}}
        before = scrape(metrics_port)
        assert value(before, "intake_mails_received_total", door="smtp", outcome="ticket") == 0
        first = make_mail("[SEV-2] Replication lag")
        for raw in (first, make_mail("[SEV-3] Slow reports"), make_mail("no tag at all"), first,
                    make_mail("[SEV-3] who am I", sender="Zed <zed@nowhere.example>"),
                    make_mail("[SEV-3] forum please", sender="Hal <hal@hobby.example>")):
            assert smtp_send(port, raw, "ann@acme.example", ("support@example.com",)) == 250
        eventually(lambda: value(scrape(metrics_port), "intake_processing_seconds_count", door="smtp") == 6)
        eventually(lambda: value(scrape(metrics_port), "intake_delivery_failures_total", kind="temporary") >= 3)
        down = scrape(metrics_port)
        counts = {outcome: value(down, "intake_mails_received_total", door="smtp", outcome=outcome)
                  for outcome in metrics.OUTCOMES}
        assert counts == {"ticket": 2, "reply": 0, "rejected": 1, "held": 1, "bounce": 0, "duplicate": 1,
                          "quarantined": 1}
        assert value(down, "intake_processing_seconds_count", door="smtp") == 6
        assert value(down, "intake_outbox_depth") >= 3          # two acknowledgments and a rejection, at least
        assert value(down, "intake_outbox_oldest_pending_age_seconds") > 0
        assert value(down, "intake_outbox_sent_total") == 0
        assert value(down, "intake_quarantine_size") == 1 and value(down, "intake_database_up") == 1
        assert value(down, "intake_processing_backlog") == 0
        assert health(metrics_port)[0] == 200                    # the relay is not a door

        capture.start()                                          # the relay is back; send now, not in 30 s
        assert run_cli("--config", str(config), "outbox", "retry")[0] == 0
        eventually(lambda: value(scrape(metrics_port), "intake_outbox_depth") == 0)
        up = scrape(metrics_port)
        assert value(up, "intake_outbox_sent_total") == value(down, "intake_outbox_depth")
        assert value(up, "intake_outbox_oldest_pending_age_seconds") == 0
        assert value(up, "intake_delivery_failures_total", kind="permanent") == 0
        assert len(capture.mails) == 3
    finally:
        serve.kill()


@pytest.mark.integration
def test_a_metrics_port_in_use_stops_serve_with_exit_1(tmp_path: Path, capture: CaptureServer) -> None:
    metrics_port = free_port()
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/intake.db", free_port(), capture.port,
                          replace={"port = 9464": f"port = {metrics_port}"})
    taken = metrics.MetricsServer("127.0.0.1", metrics_port, metrics.DatabaseCollector(lambda: None, _now))
    try:
        done = subprocess.run([sys.executable, "-m", "intake", "--config", str(config), "serve"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1, done
    assert f"metrics: cannot listen on 127.0.0.1:{metrics_port}" in done.stderr


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- health, in process

class FakeMailbox:
    uidvalidity, can_idle = 7, False

    def search(self, unseen_only: bool) -> list[int]:
        return []

    def close(self) -> None:
        pass


def poller_thread(tmp_path: Path, connect: Callable[[Any], Any], address: str) -> tuple[PollerThread, threading.Event]:
    extra = f'\n[[mailboxes]]\naddress = "{address}"\nimap = {{ host = "h", user = "u", password_env = "X", ' \
            'poll_seconds = 0.1, reconnect_min_seconds = 0.1, reconnect_max_seconds = 0.1 }\n'
    tmp_path.mkdir()
    config = load_config(write_config(tmp_path, f"sqlite:///{tmp_path}/intake.db", 2525, 25, EXTRA_CONFIG + extra))
    box = next(b for b in config.mailboxes if b.address == address)
    stopping = threading.Event()
    thread = PollerThread(ImapPoller(build_services(config), box, connect), stopping)
    thread.start()
    return thread, stopping


def state_of(address: str) -> str:
    return next(state for state in metrics.IMAP_STATES
                if metrics.REGISTRY.get_sample_value("intake_imap_state", {"mailbox": address,
                                                                           "intake_imap_state": state}) == 1)


def serve_health(checks: metrics.Health) -> tuple[int, dict[str, Any]]:
    port = free_port()
    server = metrics.MetricsServer("127.0.0.1", port, metrics.DatabaseCollector(lambda: None, _now))
    server.start(checks)
    try:
        return health(port)
    finally:
        server.close()


def test_health_names_every_door_that_is_not_serving_and_the_imap_state_is_a_metric(tmp_path: Path) -> None:
    def refuse(settings: Any) -> Any:
        raise ConnectionLost("connection refused")

    good, stop_good = poller_thread(tmp_path / "a", lambda settings: FakeMailbox(), "good@example.com")
    bad, stop_bad = poller_thread(tmp_path / "b", refuse, "bad@example.com")
    holder = ServicesHolder(build_services(load_config(write_config(
        tmp_path, f"sqlite:///{tmp_path}/no/such/folder/intake.db", 2525, 25))))
    try:
        eventually(lambda: good.poller.state == "connected" and bad.poller.state == "unreachable")
        assert (state_of("good@example.com"), state_of("bad@example.com")) == ("connected", "unreachable")
        code, body = serve_health(health_checks(holder, lambda: False, Processor(), [good, bad]))
        assert code == 503 and body["status"] == "failing"
        assert body["checks"]["database"].startswith("unreachable: ")
        assert body["checks"]["smtp"] == "not accepting connections"
        assert body["checks"]["processing"] == "a processing process stopped"
        assert body["checks"]["imap good@example.com"] == "ok"
        assert body["checks"]["imap bad@example.com"] == "unreachable"
    finally:
        stop_good.set()
        stop_bad.set()
        good.join(5)
        bad.join(5)
    assert state_of("good@example.com") == "stopped"
    assert health_checks(holder, lambda: True, Processor(), [good]).report()[1]["imap good@example.com"] == "poller stopped"


def test_health_is_200_when_the_database_answers_and_every_door_serves(tmp_path: Path, db_url: str) -> None:
    holder = ServicesHolder(build_services(load_config(write_config(tmp_path, db_url, 2525, 25))))
    processor = Processor()
    processor.start()
    try:
        assert serve_health(health_checks(holder, lambda: True, processor, [])) == (
            200, {"status": "ok", "checks": {"database": "ok", "smtp": "ok", "processing": "ok"}})
    finally:
        processor.stop()
        holder.current.sessions.kw["bind"].dispose()


def test_a_database_that_does_not_answer_is_a_gauge_not_a_failed_scrape(tmp_path: Path) -> None:
    services = build_services(load_config(write_config(tmp_path, f"sqlite:///{tmp_path}/no/such/intake.db", 1, 2)))
    collected = {m.name: m.samples for m in metrics.DatabaseCollector(lambda: services.sessions, _now).collect()}
    assert list(collected) == ["intake_database_up"] and collected["intake_database_up"][0].value == 0


def test_sla_warnings_and_breaches_are_counted_from_what_the_sweeps_did() -> None:
    def sample(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    before = sample("intake_sla_warnings_total"), sample("intake_sla_breaches_total")
    due = _now()
    metrics.swept([Action("sla", 1, "sla_warning", due, ("alice@example.com",)),
                   Action("sla", 2, "sla_breach", due, ("alice@example.com",)),
                   Action("sla", 3, "sla_breach", due, ("bob@example.com",)),
                   Action("followups", 4, "followup", due, ("ann@acme.example",))])
    assert (sample("intake_sla_warnings_total"), sample("intake_sla_breaches_total")) == (before[0] + 1, before[1] + 2)


@pytest.mark.integration
def test_a_breach_that_processing_reveals_is_counted_where_the_metrics_are_served(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    """Mail is processed in processes of their own, whose counters nobody scrapes: the breach notice
    that processing enqueues (a case set pending, unanswered, after its deadline and before the
    SLA sweep saw it) reaches intake_sla_breaches through the door's process."""
    def to_alice() -> list[Any]:
        return [m for m in capture.staff_mails if "alice@example.com" in m.recipients]

    port, metrics_port = free_port(), free_port()
    config = write_config(tmp_path, db_url, port, capture.port, replace={"port = 9464": f"port = {metrics_port}"})
    serve = Serve(config, port, tmp_path / "serve.log")
    engine = make_engine(db_url)
    try:
        assert smtp_send(port, make_mail("[SEV-2] Replication lag"), "ann@acme.example", ("support@example.com",)) == 250
        eventually(lambda: bool(to_alice()))
        notification = to_alice()[0].message
        week_ago = datetime.now(timezone.utc) - timedelta(days=7)       # the deadline long past, unseen:
        with engine.begin() as conn:                                    # the sweep runs a minute after start
            conn.execute(update(Ticket).values(created_at=week_ago, first_response_due=week_ago))
        before = value(scrape(metrics_port), "intake_sla_breaches_total")
        token_address = notification["Reply-To"]
        reply = make_mail(subject=f"Re: {notification['Subject']}", sender="Alice <alice@example.com>",
                          to=token_address, body="#pending\n", headers={"In-Reply-To": notification["Message-ID"]})
        assert smtp_send(port, reply, "alice@example.com", (token_address,)) == 250
        eventually(lambda: any(m.message["Subject"].startswith("[SLA BREACH") for m in to_alice()))
        eventually(lambda: value(scrape(metrics_port), "intake_sla_breaches_total") == before + 1)
    finally:
        engine.dispose()
        serve.kill()
