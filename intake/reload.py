"""Reloading config.toml in a running `intake serve` on SIGHUP.

The doors read `ServicesHolder.current` once at the start of each mail and keep that Services
to the end, so a mail in flight finishes under the config it started with; a reload only swaps
the reference. The new file is validated in full first: a bad one is refused with its problems
logged, and the running config stays. Settings bound when the service started (the database,
the listener's address and size limit) keep their running values until a restart, with a warning.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

from intake.config import Config, ConfigError, load_config
from intake.logs import log_event
from intake.pipeline import Services
from notifications.outbox import Outbox

log = logging.getLogger("intake.reload")

# Config attribute -> the key an administrator wrote: bound at start, kept until a restart.
RESTART_ONLY = {"database_url": "database.url", "smtp_host": "smtp.host", "smtp_port": "smtp.port",
                "max_message_bytes": "smtp.max_message_bytes", "metrics_host": "metrics.host",
                "metrics_port": "metrics.port", "log_format": "service.log_format",
                "log_level": "service.log_level", "redact_addresses": "service.redact_addresses",
                "processing_processes": "database.processing_processes"}


class ServicesHolder:
    """The Services the doors and workers use now; replaced whole, never mutated."""

    def __init__(self, services: Services) -> None:
        self._current = services
        self._lock = threading.Lock()

    @property
    def current(self) -> Services:
        return self._current

    def reload(self, path: Path, outbox_for: Callable[[Config], Outbox]) -> bool:
        """Load and validate `path`; swap it in if it is good. Returns whether it was."""
        try:
            config = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log_event(log, "config.problem", logging.ERROR, problem=problem)
            log_event(log, "config.not_reloaded", logging.ERROR, path=str(path), problems=len(exc.problems),
                      running="the previous config")
            return False
        self.use(config, outbox_for)
        return True

    def use(self, config: Config, outbox_for: Callable[[Config], Outbox]) -> None:
        """Swap in a valid `config`; the keys that need a restart keep their running values."""
        with self._lock:
            old = self._current
            kept = {name: getattr(old.config, name) for name in RESTART_ONLY
                    if getattr(config, name) != getattr(old.config, name)}
            for name in kept:
                log_event(log, "config.restart_needed", logging.WARNING, key=RESTART_ONLY[name],
                          effect="at the next restart")
            config = replace(config, **kept)
            self._current = replace(old, config=config, outbox=outbox_for(config))
        log_event(log, "config.reloaded", path=str(config.path), rules=len(config.rules))


def holding(services: Services | ServicesHolder) -> ServicesHolder:
    """A holder for callers that pass plain Services (tests, one-shot commands)."""
    return services if isinstance(services, ServicesHolder) else ServicesHolder(services)


class Signals:
    """SIGTERM and SIGINT stop, SIGHUP reloads. The handlers only queue the request (SimpleQueue.put
    is safe in a signal handler); `run` does the work in the main thread, one request at a time."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[str] = queue.SimpleQueue()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._requests.put("stop"))
        signal.signal(signal.SIGHUP, lambda *_: self._requests.put("reload"))

    def run(self, stopping: threading.Event, reload: Callable[[], object]) -> None:
        """Block until a stop is requested, then set `stopping`; reload on every SIGHUP meanwhile."""
        while self._requests.get() != "stop":
            reload()
        stopping.set()
