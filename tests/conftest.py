"""Shared fixtures: real databases (SQLite always, PostgreSQL when reachable, required under CI),
a real SMTP capture server for outgoing mail, and the real listener on a free port."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import smtplib
from aiosmtpd.controller import Controller
from sqlalchemy import text

from intake.cli import main as cli_main
from intake.config import Config, load_config
from intake.pipeline import Services
from intake.service import build_services, outbox_worker
from intake.processor import Processor
from intake.smtp_listener import start_listener
from models import Base
from models.db import make_engine
from models.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = ROOT / "config.toml"
PG_ADMIN_URL = os.environ.get("INTAKE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"
STAFF = {"alice@example.com", "bob@example.com"}
# The trusted host's verdict on a staff member's genuine mail (the shipped config trusts mx.example.com)
TRUSTED_AR = "mx.example.com; dkim=pass header.d=example.com header.s=s1; spf=pass smtp.mailfrom=alice@example.com"

EXTRA_CONFIG = """
[[organizations]]
name = "Globex"
domains = ["globex.example"]
tier = "advanced"
contact = "accounts@globex.example"

[[organizations]]
name = "Hobbyist"
domains = ["hobby.example"]
tier = "community"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_available() -> bool:
    try:
        engine = make_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


# ---------------------------------------------------------------- databases

@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for each test (Alembic runs once per session)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private PostgreSQL database for this test session, migrated once."""
    if not postgres_available():
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI and is not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    name = f"intake_test_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "intake.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    engine = make_engine(url)
    with engine.begin() as conn:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


# ---------------------------------------------------------------- outgoing mail capture

@dataclass
class Captured:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        from email import message_from_bytes, policy
        return message_from_bytes(self.raw, policy=policy.default)  # type: ignore[return-value]


class CaptureHandler:
    def __init__(self) -> None:
        self.mails: list[Captured] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.mails.append(Captured(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
            self.arrived.notify_all()
        return "250 OK"


class CaptureServer:
    """A real SMTP server standing in for the outbound relay; can be stopped and started."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.handler = CaptureHandler()
        self.controller: Controller | None = None

    @property
    def all_mails(self) -> list[Captured]:
        return list(self.handler.mails)

    @property
    def mails(self) -> list[Captured]:
        """Mail to the customer side: everything but notifications to the staff in the shipped config."""
        return [m for m in self.handler.mails if not set(m.recipients) <= STAFF]

    @property
    def staff_mails(self) -> list[Captured]:
        return [m for m in self.handler.mails if set(m.recipients) <= STAFF]

    def start(self, smtputf8: bool = True) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, decode_data=False,
                                     enable_SMTPUTF8=smtputf8)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count: int, timeout: float = 10.0, staff: bool = False) -> list[Captured]:
        """Wait until `count` customer-side (or, with staff=True, staff) mails arrived; returns them."""
        def current() -> list[Captured]:
            return self.staff_mails if staff else self.mails
        deadline = time.monotonic() + timeout
        with self.handler.arrived:
            while len(current()) < count and time.monotonic() < deadline:
                self.handler.arrived.wait(max(deadline - time.monotonic(), 0.01))
        return current()

    def to(self, address: str) -> list[Captured]:
        return [m for m in self.mails if address in m.recipients]


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    server = CaptureServer(free_port())
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------- the service

def write_config(tmp_path: Path, db_url: str, smtp_port: int, relay_port: int, extra: str = EXTRA_CONFIG,
                 replace: dict[str, str] | None = None) -> Path:
    body = SHIPPED_CONFIG.read_text()
    changes = {'url = "sqlite:///intake.db"': f'url = "{db_url}"', "port = 2525": f"port = {smtp_port}",
               "port = 25\n": f"port = {relay_port}\n", "port = 9464": f"port = {free_port()}",
               **(replace or {})}
    for old, new in changes.items():
        assert old in body, old
        body = body.replace(old, new, 1)
    path = tmp_path / "config.toml"
    path.write_text(body + extra)
    return path


@dataclass
class RunningService:
    config: Config
    services: Services
    config_path: Path
    processor: Processor
    stop: Callable[[], None] = field(repr=False)

    @property
    def port(self) -> int:
        return self.config.smtp_port

    def send(self, raw: bytes, sender: str = "someone@acme.example",
             recipients: tuple[str, ...] = ("support@example.com",)) -> tuple[int, bytes]:
        """Send over SMTP with CRLF line ends (smtplib leaves bytes as they are); returns the reply to DATA
        once the mail is processed (the listener answers when it is stored)."""
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail(sender)
            for rcpt in recipients:
                code, msg = smtp.rcpt(rcpt)
                assert code == 250, (code, msg)
            reply = smtp.data(crlf(raw))
        assert self.processor.wait_idle(), "processing did not finish"
        return reply

    def cli(self, *args: str) -> tuple[int, str]:
        return run_cli("--config", str(self.config_path), *args)

    def cli_json(self, *args: str) -> Any:
        import json
        code, out = self.cli(*args, "--json")
        assert code == 0, out
        return json.loads(out)


def crlf(raw: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", raw)


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli_main(list(args))
    return code, out.getvalue()


@pytest.fixture
def services(tmp_path: Path, db_url: str) -> Iterator[Services]:
    """The service's parts on `db_url`, in this process, taking mail from unknown senders too."""
    config = load_config(write_config(tmp_path, db_url, free_port(), free_port(),
                                      replace={'on_unknown_sender = "hold"': 'on_unknown_sender = "accept"'}))
    built = build_services(config)
    yield built
    built.sessions.kw["bind"].dispose()


@pytest.fixture
def start_service(tmp_path: Path, db_url: str, capture: CaptureServer) -> Iterator[Callable[..., RunningService]]:
    """Start the real listener and outbox worker in this process; stopped at the end of the test."""
    stops: list[Callable[[], None]] = []

    def start(extra: str = EXTRA_CONFIG, replace: dict[str, str] | None = None, worker: bool = True) -> RunningService:
        path = write_config(tmp_path, db_url, free_port(), capture.port, extra, replace)
        config = load_config(path)
        services = build_services(config)
        from concurrent.futures import ThreadPoolExecutor
        executor = ThreadPoolExecutor(max_workers=1)
        processor = Processor()
        processor.start()
        listener = start_listener(services, executor, processor, "127.0.0.1", config.smtp_port)
        stopping = threading.Event()
        thread = threading.Thread(target=outbox_worker, args=(services, stopping, 0.05), daemon=True)
        if worker:
            thread.start()

        def stop() -> None:
            listener.stop()
            stopping.set()
            if worker:
                thread.join(5)
            executor.shutdown()
            processor.stop()
            services.sessions.kw["bind"].dispose()

        stops.append(stop)
        return RunningService(config, services, path, processor, stop)

    yield start
    for stop in stops:
        stop()


@pytest.fixture
def service(start_service: Callable[..., RunningService]) -> RunningService:
    return start_service()


# ---------------------------------------------------------------- mail factory

def make_mail(subject: str = "[SEV-2] Replication lag on prod", sender: str = "Ann Customer <ann@acme.example>",
              to: str = "support@example.com", cc: str | None = None, body: str = "The replica is 20 min behind.\n",
              message_id: str | None = None, headers: dict[str, str] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain="acme.example")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()
