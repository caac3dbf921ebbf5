"""Real processes for the reliability tests: `intake serve` as a child process that can be
killed and restarted, a sending MTA that retries until it gets a 250, a TCP proxy that can
cut a database away, and counts read straight from the database.

Nothing here stands in for a part of the service; it only drives and observes the real one.
"""
from __future__ import annotations

import os
import selectors
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from models import OutboxMail, OutboxStatus, utcnow
from models.db import make_engine
from notifications.delivery import LEASE
from tests.conftest import crlf

ROOT = Path(__file__).resolve().parent.parent


def wait_until(check: Callable[[], bool], timeout: float = 20, what: str | Callable[[], str] = "condition") -> None:
    """Poll `check` until it holds; fail after `timeout` seconds (`what` may describe the state then)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: not met within {timeout} s")
        time.sleep(0.05)


class Serve:
    """One `intake serve` child process; its output goes to a log file (a pipe could fill and block it)."""

    def __init__(self, config: Path, port: int, log: Path, crash_at: str | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "INTAKE_CRASH_AT"}
        if crash_at:
            env["INTAKE_CRASH_AT"] = crash_at
        self.port, self.log = port, log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "serve"],
                                         cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=preexec_fn)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise AssertionError("serve did not start listening")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """End it now: the tests do not need a graceful stop, only a dead process."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def smtp_send(port: int, raw: bytes, sender: str, recipients: tuple[str, ...], timeout: float = 30) -> int:
    """One SMTP transaction; returns the reply code to DATA (refused recipients count as that code)."""
    return smtp_exchange(port, raw, sender, recipients, timeout)[0]


def smtp_exchange(port: int, raw: bytes, sender: str, recipients: tuple[str, ...],
                  timeout: float = 30) -> tuple[int, bytes]:
    """One SMTP transaction; returns the reply to DATA (or to the first refused recipient)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        for rcpt in recipients:
            code, text = smtp.rcpt(rcpt)
            if code != 250:
                return code, text
        return smtp.data(crlf(raw))


@dataclass
class Attempts:
    """What a sending MTA saw for one mail: each reply code, or 0 for a broken or refused connection."""
    codes: list[int] = field(default_factory=list)
    stored_at: float | None = None      # time.monotonic() of the 250
    reply: bytes = b""                  # the text of the last reply

    @property
    def delivered(self) -> bool:
        return self.stored_at is not None


def send_until_stored(port: Callable[[], int], raw: bytes, sender: str = "ann@acme.example",
                      recipients: tuple[str, ...] = ("support@example.com",), timeout: float = 60,
                      pause: float = 0.1, between: Callable[[], None] | None = None) -> Attempts:
    """Behave like a sending MTA: retry on 4xx and on broken connections until 250 (a 5xx is final).
    `between` runs after each failed attempt (a test restarts a killed service there)."""
    seen = Attempts()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code, seen.reply = smtp_exchange(port(), raw, sender, recipients)
        except (smtplib.SMTPException, OSError):
            code, seen.reply = 0, b""
        seen.codes.append(code)
        if code == 250:
            seen.stored_at = time.monotonic()
            return seen
        if 500 <= code < 600:
            return seen
        if between is not None:
            between()
        time.sleep(pause)
    return seen


class Database:
    """Counts read straight from the service's database (no CLI in between)."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def outcomes(self) -> Counter[str]:
        """`status/outcome` of every inbound mail, counted."""
        return Counter(f"{status}/{outcome}" for status, outcome in
                       self.rows("SELECT status, outcome FROM inbound_mail"))

    def settled(self) -> bool:
        """Every stored mail processed and every outgoing mail sent (or refused for good)."""
        return self.scalar("SELECT count(*) FROM inbound_mail WHERE status = 'received'") == 0 and \
            self.scalar("SELECT count(*) FROM outbox WHERE status = 'pending'") == 0

    def unsettled(self) -> str:
        """What keeps `settled` false, for a failure message."""
        inbound = self.rows("SELECT id, status, outcome, error FROM inbound_mail WHERE status <> 'processed'")
        outbox = self.rows("SELECT id, kind, attempts, next_attempt_at, last_error FROM outbox WHERE status <> 'sent'")
        return f"not settled: inbound {inbound}; outbox {outbox}"

    def only_leased_left(self, claimed_before: datetime) -> bool:
        """Every outgoing mail still pending was claimed (leased) before `claimed_before`: none is
        due, and none is in the hands of a worker that is running now."""
        with Session(self.engine) as session:
            due = list(session.scalars(select(OutboxMail.next_attempt_at).where(
                OutboxMail.status == OutboxStatus.PENDING)))
        return bool(due) and all(utcnow() + timedelta(minutes=1) < at <= claimed_before + LEASE for at in due)

    def outbox_ids(self) -> dict[str, str]:
        """Message-ID -> kind of every outgoing mail the service wrote."""
        return {f"<{mid}>": kind for mid, kind in self.rows("SELECT message_id, kind FROM outbox")}


def captured_ids(mails: list[Any]) -> Counter[str]:
    """How often each Message-ID reached the capture server."""
    return Counter(str(m.message["Message-ID"]) for m in mails)


class TcpProxy:
    """A TCP relay in a thread between the service and PostgreSQL; `cut()` drops every
    connection and refuses new ones (like a database that went away), `restore()` lets them through."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.up = threading.Event()
        self.up.set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        self.listener.setblocking(False)
        while not self.stopping.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                if sock is self.listener:
                    self._accept(selector)
                    continue
                peer = key.data
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        peer.sendall(data)
                        continue
                    except OSError:
                        pass
                self._drop(selector, sock, peer)
            if not self.up.is_set():
                with self.lock:
                    pairs, self.pairs = self.pairs, []
                for a, b in pairs:
                    self._drop(selector, a, b)
        selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        if not self.up.is_set():
            client.close()          # the database is away: the connection ends at once
            return
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        client.setblocking(True)
        server.setblocking(True)
        with self.lock:
            self.pairs.append((client, server))
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)

    def _drop(self, selector: selectors.BaseSelector, a: socket.socket, b: socket.socket) -> None:
        for sock in (a, b):
            try:
                selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self.lock:
            self.pairs = [p for p in self.pairs if p != (a, b) and p != (b, a)]

    def cut(self) -> None:
        self.up.clear()
        wait_until(lambda: not self.pairs, 5, "proxy connections dropped")

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


def proxied_url(url: str, port: int) -> str:
    """The same PostgreSQL URL, through the proxy's port."""
    from sqlalchemy.engine import make_url
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def in_threads(work: list[Callable[[], Any]]) -> Iterator[Any]:
    """Run the callables concurrently; yields their results in order (an exception is re-raised)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(work)) as pool:
        futures = [pool.submit(fn) for fn in work]
        for future in futures:
            yield future.result()
