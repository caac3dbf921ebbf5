"""Composition root: config -> engine -> services; and the long-running `serve` loop."""
from __future__ import annotations

import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from intake.config import Config
from intake.crashpoints import crash_point
from intake.imap_poller import start_pollers
from intake.pipeline import Services, resume_received
from intake.smtp_listener import start_listener
from models import utcnow
from models.db import make_engine, session_factory
from notifications.delivery import deliver_due
from notifications.outbox import Outbox
from notifications.render import Renderer, shipped_templates_dir
from notifications.scheduler import start_scheduler
from notifications.sender import SmtpSender

log = logging.getLogger("intake.serve")


def renderer_for(config: Config) -> Renderer:
    search = [config.templates_dir] if config.templates_dir else []
    return Renderer([*search, shipped_templates_dir()])


def build_services(config: Config) -> Services:
    engine = make_engine(config.database_url)
    levels = [{"level": lv.level, "name": lv.name, "description": lv.description, "aliases": list(lv.aliases)}
              for lv in config.levels]
    outbox = Outbox(renderer_for(config), config.from_address,
                    {"service_name": config.service_name, "levels": levels})
    return Services(config=config, sessions=session_factory(engine), outbox=outbox,
                    mail_enqueued=threading.Event())


def serve(config: Config) -> None:
    """Run the listener, the IMAP pollers, the outbox worker and the scheduler until SIGTERM or SIGINT."""
    services = build_services(config)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    resumed = resume_received(services)
    if resumed:
        log.info("resumed %s stored mails left unprocessed", resumed)
    single_writer = config.database_url.startswith("sqlite")
    executor = ThreadPoolExecutor(max_workers=1 if single_writer else 4, thread_name_prefix="ingest")
    listener = start_listener(services, executor, config.smtp_host, config.smtp_port)
    scheduler = start_scheduler({"resume_received": (lambda: resume_received(services, timedelta(minutes=1)), 60)})
    worker = threading.Thread(target=outbox_worker, args=(services, stopping), name="outbox", daemon=True)
    worker.start()
    pollers = start_pollers(services, stopping)
    print(f"intake serving SMTP on {config.smtp_host}:{config.smtp_port}", flush=True)
    stopping.wait()
    listener.stop()
    scheduler.shutdown(wait=False)
    executor.shutdown(wait=True)
    worker.join(timeout=10)
    for poller in pollers:
        poller.join(timeout=10)
    log.info("stopped")


def outbox_worker(services: Services, stopping: threading.Event, idle_seconds: float = 1.0) -> None:
    """Deliver due outbox rows; woken early whenever processing enqueues mail."""
    sender = SmtpSender(services.config.outbound_host, services.config.outbound_port)
    wake = services.mail_enqueued or threading.Event()
    while not stopping.is_set():
        wake.clear()
        try:
            report = deliver_due(services.sessions, sender, services.clock, crash_point)
        except Exception:     # the database is away: try again on the next tick
            log.exception("outbox worker tick failed")
            report = None
        if report is None or not (report.sent or report.retried or report.failed):
            wake.wait(idle_seconds)
