"""Reloading the config on SIGHUP: a good new config changes the routing of the next mail, a
broken one is refused with its errors logged and the old routing kept, and a mail in flight
finishes under the config it started with."""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from intake import smtp_listener
from intake.config import load_config
from intake.processor import Processor
from intake.reload import ServicesHolder
from intake.service import build_services, outbox_for
from intake.smtp_listener import start_listener
from tests.conftest import EXTRA_CONFIG, CaptureServer, free_port, make_mail, run_cli, write_config
from tests.harness import Serve, smtp_send, wait_until

RULE = """
[[routing.rules]]
name = "acme-medium"
match = { organization = "Acme", severity = [3] }
queue = "billing"
"""


def with_queue(path: Path, queue: str) -> None:
    """Rewrite the acme-medium rule of the config file in place."""
    path.write_text(with_queue_text(path.read_text(), queue))


def with_queue_text(text: str, queue: str) -> str:
    start = text.index('name = "acme-medium"')
    end = text.index("\n", text.index("queue = ", start))
    return text[:start] + text[start:end].rsplit("queue = ", 1)[0] + f'queue = "{queue}"' + text[end:]


def queues(config: Path) -> list[str]:
    """The queue of every case, oldest first (read with a copy of the config: the file may be broken)."""
    readable = config.with_name("readable.toml")
    readable.write_text(with_queue_text(config.read_text(), "billing"))
    code, out = run_cli("--config", str(readable), "tickets", "list", "--json")
    assert code == 0, out
    return [t["queue"] for t in sorted(json.loads(out), key=lambda t: int(t["ref"].split("-")[1]))]


@pytest.fixture
def holder(tmp_path: Path) -> ServicesHolder:
    path = write_config(tmp_path, f"sqlite:///{tmp_path}/intake.db", 2525, 25, EXTRA_CONFIG + RULE)
    return ServicesHolder(build_services(load_config(path)))


def test_a_good_config_is_swapped_in_whole_and_the_old_one_is_left_as_it_was(holder: ServicesHolder,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    before = holder.current
    with_queue(before.config.path, "oncall")
    with caplog.at_level(logging.INFO, "intake.reload"):
        assert holder.reload(before.config.path, outbox_for)
    after = holder.current
    assert [r.actions.queue for r in before.config.rules] == ["oncall", "billing"]
    assert [r.actions.queue for r in after.config.rules] == ["oncall", "oncall"]
    assert after.sessions is before.sessions and after.mail_enqueued is before.mail_enqueued
    assert after.outbox is not before.outbox
    assert "config.reloaded" in caplog.text


def test_a_broken_config_is_refused_with_every_error_logged(holder: ServicesHolder,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    before = holder.current
    path = before.config.path
    with_queue(path, "nightshift")
    path.write_text(path.read_text().replace('match = { organization = "Acme"', 'match = { organisation = "Acme"'))
    with caplog.at_level(logging.INFO, "intake.reload"):
        assert not holder.reload(path, outbox_for)
    assert holder.current is before
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3, errors
    assert "[routing.rules.acme-medium] queue: 'nightshift' is not in [routing] queues" in errors[1]
    assert "[routing.rules.acme-medium] match.organisation: unknown key" in errors[0]
    assert errors[2].startswith("config.not_reloaded") and "problems=2" in errors[2]


def test_settings_bound_at_start_keep_their_running_values(holder: ServicesHolder,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    path = holder.current.config.path
    path.write_text(path.read_text().replace("port = 2525", "port = 2626"))
    with caplog.at_level(logging.WARNING, "intake.reload"):
        assert holder.reload(path, outbox_for)
    assert holder.current.config.smtp_port == 2525
    assert "config.restart_needed key=smtp.port" in caplog.text


@pytest.mark.integration
def test_a_mail_in_flight_finishes_under_the_config_it_started_with(
        tmp_path: Path, db_url: str, capture: CaptureServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, db_url, free_port(), capture.port, EXTRA_CONFIG + RULE)
    holder = ServicesHolder(build_services(load_config(path)))
    real_accept, reloaded = smtp_listener.accept, threading.Event()

    def accept_while_reloading(services: Any, raw: bytes, envelope: Any) -> Any:
        if not reloaded.is_set():       # the first mail: a reload lands while it is in flight
            with_queue(path, "oncall")
            assert holder.reload(path, outbox_for)
            reloaded.set()
        return real_accept(services, raw, envelope)

    monkeypatch.setattr(smtp_listener, "accept", accept_while_reloading)
    executor, processor = ThreadPoolExecutor(max_workers=1), Processor()
    processor.start()
    listener = start_listener(holder, executor, processor, "127.0.0.1", holder.current.config.smtp_port)
    try:
        for subject in ("[SEV-3] in flight", "[SEV-3] after the reload"):
            assert _send(holder.current.config.smtp_port, make_mail(subject)) == 250
        assert processor.wait_idle()
    finally:
        listener.stop()
        executor.shutdown()
        processor.stop()
        holder.current.sessions.kw["bind"].dispose()
    assert queues(path) == ["billing", "oncall"]


def _send(port: int, raw: bytes) -> int:
    return smtp_send(port, raw, "ann@acme.example", ("support@example.com",))


class Output:
    """The merged stdout and stderr of a child process, from its log file."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve

    @property
    def lines(self) -> list[str]:
        return self.serve.output().splitlines()

    @property
    def text(self) -> str:
        return self.serve.output()

    def wait_for(self, needle: str, after: int = 0, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in line for line in self.lines[after:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged:\n{self.text}")


@pytest.mark.integration
def test_sighup_reloads_the_rules_of_a_running_serve_and_refuses_a_broken_config(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port, EXTRA_CONFIG + RULE)
    serve = Serve(config, port, tmp_path / "serve.log")
    proc, output = serve.proc, Output(serve)
    try:
        assert _send(port, make_mail("[SEV-3] before")) == 250

        with_queue(config, "oncall")
        mark = len(output.lines)
        proc.send_signal(signal.SIGHUP)
        output.wait_for("config.reloaded", after=mark)
        assert _send(port, make_mail("[SEV-3] after a good reload")) == 250

        with_queue(config, "nightshift")
        mark = len(output.lines)
        proc.send_signal(signal.SIGHUP)
        output.wait_for("config.not_reloaded", after=mark)
        assert "[routing.rules.acme-medium] queue: 'nightshift' is not in [routing] queues" in output.text
        assert _send(port, make_mail("[SEV-3] after a bad reload")) == 250

        assert proc.poll() is None
        wait_until(lambda: len(queues(config)) == 3, what="three cases")     # a 250 means stored
        assert queues(config) == ["billing", "oncall", "oncall"]
    finally:
        serve.kill()
