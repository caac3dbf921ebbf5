"""Composition root: config -> engine -> services; and the long-running `serve` loop."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Callable

from intake import metrics
from intake.config import Config
from intake.crashpoints import crash_point
from intake.imap_poller import PollerThread, start_pollers
from intake.logs import log_event
from intake.pipeline import Services, resume_received
from intake.processing_process import ProcessingLanes
from intake.reload import ServicesHolder, Signals, holding
from intake.smtp_listener import serving, start_listener
from intake.sweep import SWEEP_SECONDS, run_sweeps
from models import utcnow
from models.db import make_engine, session_factory
from notifications.delivery import CLAIM_BATCH, deliver_due
from notifications.outbox import Outbox
from notifications.render import Renderer, shipped_templates_dir
from notifications.scheduler import start_scheduler
from notifications.sender import SmtpSender

log = logging.getLogger("intake.serve")

GATHER_SECONDS = 0.25   # a pass costs a claim and an SMTP session, whatever it sends
# The SMTP door needs the interpreter briefly and often (the event loop, then the store thread,
# then the loop again); behind a busy thread (the outbox worker, an IMAP poller and the processing
# they run) each handoff waits up to this long (Python's default is 5 ms).
SWITCH_INTERVAL_SECONDS = 0.001
# glibc's allocator (mallopt): blocks from 256 KiB up are mapped and given back to the system when
# freed, and two arenas serve all threads. By default it raises that threshold to the largest
# block freed so far and gives each busy thread an arena of its own, so a large mail's buffers
# stayed with the process and the peak RSS drifted up mail after mail (docs/performance.md).
_M_ARENA_MAX, _M_MMAP_THRESHOLD = -8, -3
MALLOC_SETTINGS = ((_M_ARENA_MAX, 2), (_M_MMAP_THRESHOLD, 256 * 1024))


def renderer_for(config: Config) -> Renderer:
    search = [config.templates_dir] if config.templates_dir else []
    return Renderer([*search, shipped_templates_dir()])


def outbox_for(config: Config) -> Outbox:
    levels = [{"level": lv.level, "name": lv.name, "description": lv.description, "aliases": list(lv.aliases)}
              for lv in config.levels]
    return Outbox(renderer_for(config), config.from_address, {"service_name": config.service_name, "levels": levels})


def warmed_outbox_for(config: Config) -> Outbox:
    """The Outbox of a running service: its templates compiled before the first mail needs them
    (compiling them in the first mail's transaction held SQLite's write lock for ~0.1 s)."""
    outbox = outbox_for(config)
    outbox.renderer.warm()
    return outbox


def build_services(config: Config, outbox_factory: Callable[[Config], Outbox] = outbox_for) -> Services:
    engine = make_engine(config.database_url)
    return Services(config=config, sessions=session_factory(engine), outbox=outbox_factory(config),
                    mail_enqueued=threading.Event())


def serve(config: Config) -> None:
    """Run the listener, the IMAP pollers, the outbox worker and the scheduler until SIGTERM or SIGINT;
    SIGHUP reloads the config (intake/reload.py)."""
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return_large_blocks()
    holder = ServicesHolder(build_services(config, warmed_outbox_for))
    services = holder.current
    monitor = None      # bound first: a metrics port in use stops the start before anything runs
    if config.metrics_port:
        monitor = metrics.MetricsServer(config.metrics_host, config.metrics_port,
                                        metrics.DatabaseCollector(lambda: holder.current.sessions, utcnow))
    stopping, signals = threading.Event(), Signals()
    resumed = resume_received(services)
    if resumed:
        log_event(log, "serve.resumed", mails=resumed)
    single_writer = config.database_url.startswith("sqlite")
    executor = ThreadPoolExecutor(max_workers=1 if single_writer else 4, thread_name_prefix="ingest")
    processor = ProcessingLanes(holder, config.processing_lanes)
    processor.start()
    listener = start_listener(holder, executor, processor, config.smtp_host, config.smtp_port)
    resume = (lambda: resume_received(holder.current, timedelta(minutes=1)), 60)
    sweeps = (lambda: metrics.swept(run_sweeps(holder.current, holder.current.clock())), SWEEP_SECONDS)
    scheduler = start_scheduler({"resume_received": resume, "sweeps": sweeps})
    worker = threading.Thread(target=outbox_worker, args=(holder, stopping), name="outbox", daemon=True)
    worker.start()
    pollers = start_pollers(holder, stopping)
    metrics.prepare(thread.poller.address for thread in pollers)
    if monitor is not None:
        monitor.start(health_checks(holder, lambda: serving(listener), processor, pollers))
    log_event(log, "serve.started", smtp=f"{config.smtp_host}:{config.smtp_port}",
              metrics=monitor.address if monitor else "off", imap_mailboxes=len(pollers))
    signals.run(stopping, lambda: holder.reload(config.path, warmed_outbox_for)
                and processor.reload(holder.current.config))
    if monitor is not None:
        monitor.close()
    listener.stop()
    scheduler.shutdown(wait=False)
    executor.shutdown(wait=True)
    processor.stop()
    worker.join(timeout=10)
    for poller in pollers:
        poller.join(timeout=10)
    log_event(log, "serve.stopped")


def return_large_blocks() -> None:
    """Apply MALLOC_SETTINGS, before any thread starts; nothing where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    for option, value in MALLOC_SETTINGS:
        mallopt(option, value)


def health_checks(holder: ServicesHolder, smtp_serving: Callable[[], bool], processor: ProcessingLanes,
                  pollers: list[PollerThread]) -> metrics.Health:
    """What `/health` asks: the database answers, the listener accepts connections, every processing
    process runs, and every IMAP mailbox is connected (a poller that is still starting or backing
    off after a failure is not serving its door)."""
    health = metrics.Health()
    health.add("database", metrics.database_check(lambda: holder.current.sessions))
    health.add("smtp", lambda: None if smtp_serving() else "not accepting connections")
    health.add("processing", lambda: None if processor.alive() else "a processing process stopped")
    for thread in pollers:
        health.add(f"imap {thread.poller.address}", partial(_imap_problem, thread))
    return health


def _imap_problem(thread: PollerThread) -> str | None:
    if not thread.is_alive():
        return "poller stopped"
    return None if thread.poller.state == "connected" else thread.poller.state


def outbox_worker(services: Services | ServicesHolder, stopping: threading.Event, idle_seconds: float = 1.0) -> None:
    """Deliver due outbox rows; woken early whenever processing enqueues mail. The relay is read from
    the current config on every pass, so a reload can move it."""
    holder = holding(services)
    wake = holder.current.mail_enqueued or threading.Event()
    while not stopping.is_set():
        wake.clear()
        current = holder.current
        sender = SmtpSender(current.config.outbound_host, current.config.outbound_port)
        try:
            report = deliver_due(current.sessions, sender, current.clock, crash_point)
            metrics.delivered(report)
        except Exception:     # the database is away: try again on the next tick
            log_event(log, "outbox.worker_failed", logging.ERROR, exc_info=True)
            report = None
        if report is None or not report.handled:
            wake.wait(idle_seconds)
        elif report.handled < CLAIM_BATCH:  # more mail is likely on its way: a short pause lets the next
            stopping.wait(GATHER_SECONDS)   # pass take it in one batch; after a full batch it starts at once
