"""The IMAP door against a real Dovecot: outcomes, marking, IDLE, polling, broken messages,
server restarts, refused logins and a kill between commit and flag."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from imapclient import SEEN
from sqlalchemy import func, select

from intake.config import ConfigError, load_config
from intake.imap_mailbox import IO_TIMEOUT_SECONDS, ImapClientMailbox, read_ahead
from intake.imap_poller import Backoff, start_pollers
from intake.service import build_services
from models import InboundMail, OutboxMail, Outcome
from models.db import make_engine
from tests.conftest import EXTRA_CONFIG, SHIPPED_CONFIG, CaptureServer, free_port, make_mail, run_cli, write_config
from tests.dovecot import PASSWORD, Dovecot

ROOT = Path(__file__).resolve().parent.parent
SUPPORT, SALES = "support@example.com", "sales@example.com"
PASSWORD_ENV = "INTAKE_TEST_IMAP_PASSWORD"
MAILBOX_LINE = 'on_unknown_sender = "hold"'


# ---------------------------------------------------------------- fixtures and helpers

def _start(monkeypatch: pytest.MonkeyPatch, idle_and_move: bool) -> Iterator[Dovecot]:
    server = Dovecot(free_port(), (SUPPORT, SALES), idle_and_move)
    try:
        server.start()
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
        yield server
    finally:
        server.close()


@pytest.fixture
def dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    yield from _start(monkeypatch, idle_and_move=True)


@pytest.fixture
def plain_dovecot(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dovecot]:
    """A server that advertises neither IDLE nor MOVE."""
    yield from _start(monkeypatch, idle_and_move=False)


def imap_table(server: Dovecot, user: str = SUPPORT, **settings: Any) -> str:
    values = {"host": "127.0.0.1", "port": server.port, "user": user, "password_env": PASSWORD_ENV, "tls": False,
              "processed_folder": "Processed", "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5, **settings}
    return "imap = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None) + " }"


def imap_config(tmp_path: Path, db_url: str, capture: CaptureServer, server: Dovecot, extra: str = "",
                **settings: Any) -> Path:
    return write_config(tmp_path, db_url, free_port(), capture.port, EXTRA_CONFIG + extra,
                        replace={MAILBOX_LINE: f"{MAILBOX_LINE}\n{imap_table(server, **settings)}"})


def count(db_url: str, model: Any = InboundMail, **where: Any) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).select_from(model.__table__).filter_by(**where)
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def wait_until(check: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def intake(config: Path, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INTAKE_CRASH_AT"}
    if crash_at:
        env["INTAKE_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "intake", "--config", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@contextmanager
def serving(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "serve"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summary(out: str, mailbox: str = SUPPORT) -> dict[str, int]:
    line = next(line for line in out.splitlines() if line.startswith(f"{mailbox}: fetched="))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}


# ---------------------------------------------------------------- config (no server needed)

def test_imap_settings_are_validated_and_errors_name_the_mailbox_and_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SHIPPED_CONFIG.read_text().replace(MAILBOX_LINE, MAILBOX_LINE + "\nimap = { host = \"h\", "
                    "user = \"u\", password_env = \"NOT A NAME\", folder = \"INBOX\", processed_folder = \"INBOX\", "
                    "idle_seconds = 3600, tls = \"yes\", pasword = \"oops\" }", 1))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    problems = "\n".join(error.value.problems)
    for expected in ("[mailboxes.0] imap.pasword: unknown key", "[mailboxes.0] imap.tls: expected a boolean",
                     "[mailboxes.0] imap.password_env: 'NOT A NAME' is not an environment variable name",
                     "[mailboxes.0] imap.idle_seconds: 3600 is out of range",
                     "[mailboxes.0] imap.processed_folder: must differ from folder"):
        assert expected in problems, problems
    path.write_text(SHIPPED_CONFIG.read_text().replace(
        MAILBOX_LINE, f'{MAILBOX_LINE}\nimap = {{ host = "h", user = "u", password_env = "UNSET", tls = false }}'))
    imap = load_config(path).mailboxes[0].imap
    assert imap is not None and (imap.port, imap.tls, imap.folder, imap.processed_folder) == (143, False, "INBOX", None)
    assert imap.password() is None          # reported by the poller when it connects, not here


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = Backoff(1, 5)
    assert [backoff.next() for _ in range(5)] == [1, 2, 4, 5, 5]
    backoff.reset()
    assert backoff.next() == 1


# ---------------------------------------------------------------- poll --once

@pytest.mark.integration
def test_poll_once_records_every_outcome_moves_the_mail_and_a_second_run_finds_nothing(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot)
    dovecot.append(make_mail(message_id="<first@acme.example>"))
    dovecot.append(make_mail(subject="Re: [SEV-2] Replication lag on prod",
                             headers={"In-Reply-To": "<first@acme.example>"}))
    dovecot.append(make_mail(subject="Replication lag, no tag"))
    dovecot.append(make_mail(subject="[SEV-3] who are you", sender="someone@nowhere.example"))
    code, out = run_cli("--config", str(config), "poll", "--once")
    assert code == 0, out
    assert summary(out) == {"fetched": 4, "tickets": 1, "replies": 1, "rejected": 1, "held": 1, "bounces": 0,
                            "duplicates": 0, "quarantined": 0, "failed": 0}
    assert dovecot.messages() == {} and len(dovecot.messages("Processed")) == 4
    assert count(db_url, door="imap") == 4
    assert count(db_url, OutboxMail, kind="acknowledgment") == 1 and count(db_url, OutboxMail, kind="rejection") == 1
    engine = make_engine(db_url)
    with engine.connect() as conn:
        origins = conn.execute(select(InboundMail.imap_folder, InboundMail.imap_uidvalidity,
                                      InboundMail.imap_uid)).all()
    engine.dispose()
    assert sorted(uid for _, _, uid in origins) == [1, 2, 3, 4]
    assert all(folder == "INBOX" and validity for folder, validity, _ in origins)

    code, out = run_cli("--config", str(config), "poll", "--once", "--mailbox", SUPPORT)
    assert code == 0 and summary(out)["fetched"] == 0, out
    assert count(db_url) == 4


@pytest.mark.integration
def test_without_a_processed_folder_mail_is_flagged_seen_and_a_new_uidvalidity_only_finds_duplicates(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot, folder="Support", processed_folder=None)
    raws = [make_mail(subject=f"[SEV-3] item {n}") for n in range(2)]
    for raw in raws:
        dovecot.append(raw, "Support")
    code, out = run_cli("--config", str(config), "poll", "--once")
    assert code == 0 and summary(out)["tickets"] == 2, out
    assert all(SEEN in flags for flags in dovecot.messages("Support").values())

    with dovecot.client() as client:        # the folder is rebuilt (a restore): new UIDVALIDITY, no flags
        before = client.folder_status("Support", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        client.delete_folder("Support")
    for raw in raws:
        dovecot.append(raw, "Support")
    with dovecot.client() as client:
        assert client.folder_status("Support", [b"UIDVALIDITY"])[b"UIDVALIDITY"] != before
    code, out = run_cli("--config", str(config), "poll", "--once")
    assert code == 0, out
    assert summary(out).items() >= {"fetched": 2, "duplicates": 2, "tickets": 0}.items(), out
    assert all(SEEN in flags for flags in dovecot.messages("Support").values())
    assert count(db_url) == 2


@pytest.mark.integration
def test_a_message_that_cannot_be_fetched_whole_goes_to_the_error_folder_after_max_failures(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot,
        caplog: pytest.LogCaptureFixture) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot, max_fetch_failures=2)
    dovecot.append(make_mail(subject="[SEV-3] fine"))
    broken = dovecot.append(make_mail(subject="[SEV-3] damaged", body="DAMAGED-ON-DISK\n" + "x" * 5000))
    with dovecot.maildir_file(b"DAMAGED-ON-DISK").open("r+b") as damaged:
        damaged.truncate(300)               # the server now breaks the connection when it sends it
    caplog.set_level(logging.WARNING, logger="intake.imap")
    code, out = run_cli("--config", str(config), "poll", "--once")
    assert code == 0, out
    assert summary(out).items() >= {"fetched": 1, "tickets": 1, "failed": 2}.items(), out
    assert dovecot.messages() == {}
    assert list(dovecot.messages("Errors")) == [1] and len(dovecot.messages("Processed")) == 1
    assert re.search(rf"moved_to_error_folder mailbox={SUPPORT} folder=Errors uidvalidity=\d+ uid={broken} "
                     r"failures=2", caplog.text), caplog.text
    assert count(db_url) == 1


@pytest.mark.integration
def test_killed_between_commit_and_flag_every_message_ends_as_exactly_one_record(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot)
    without_id = re.sub(rb"(?m)^Message-ID:.*\r?\n", b"", make_mail(subject="[SEV-3] no Message-ID"))
    for raw in (make_mail(), without_id, make_mail(subject="[SEV-4] third")):
        dovecot.append(raw)
    crashed = intake(config, "poll", "--once", crash_at="imap_after_commit")
    assert crashed.returncode == -9, crashed.stderr
    assert len(dovecot.messages()) == 3 and count(db_url) == 3     # committed, not yet marked

    again = intake(config, "poll", "--once")
    assert again.returncode == 0, again.stderr
    assert summary(again.stdout).items() >= {"fetched": 3, "duplicates": 3, "tickets": 0}.items()
    assert dovecot.messages() == {} and len(dovecot.messages("Processed")) == 3
    assert count(db_url) == 3 and count(db_url, outcome=Outcome.TICKET.value) == 3
    assert count(db_url, OutboxMail, kind="acknowledgment") == 3    # one each


@pytest.mark.integration
def test_poll_once_gives_up_on_a_refused_login_and_says_so(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot, max_fetch_failures=1)
    monkeypatch.setenv(PASSWORD_ENV, "not the password")
    dovecot.append(make_mail())
    code, out = run_cli("--config", str(config), "poll", "--once")
    assert code == 1 and f"{SUPPORT}: gave up: [AUTHENTICATIONFAILED]" in out, out
    assert count(db_url) == 0


# ---------------------------------------------------------------- serve: IDLE, polling, faults

@pytest.mark.integration
def test_serve_turns_a_message_appended_while_running_into_a_ticket_within_seconds_through_idle(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot, poll_seconds=3600)
    dovecot.append(make_mail(subject="[SEV-3] waiting before the start"))
    log = tmp_path / "serve.log"
    with serving(config, log):
        wait_until(lambda: count(db_url, outcome="ticket") == 1, 30)
        appended = time.monotonic()
        dovecot.append(make_mail(subject="[SEV-2] arrives while serving"))
        wait_until(lambda: count(db_url, outcome="ticket") == 2, 10)
        assert time.monotonic() - appended < 10
    assert f"state=connected mailbox={SUPPORT}" in log.read_text() and "idle=yes" in log.read_text()
    assert dovecot.messages() == {} and len(dovecot.messages("Processed")) == 2


@pytest.mark.integration
def test_a_server_without_idle_is_polled_and_without_move_gets_copy_and_expunge(
        tmp_path: Path, db_url: str, capture: CaptureServer, plain_dovecot: Dovecot,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="intake.imap")
    services = build_services(load_config(imap_config(tmp_path, db_url, capture, plain_dovecot, poll_seconds=0.2)))
    stopping = threading.Event()
    threads = start_pollers(services, stopping)
    try:
        wait_until(lambda: "state=connected" in caplog.text)
        plain_dovecot.append(make_mail())
        wait_until(lambda: len(plain_dovecot.messages("Processed")) == 1)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(10)
        services.sessions.kw["bind"].dispose()
    assert "idle=no" in caplog.text and plain_dovecot.messages() == {}
    assert count(db_url, outcome="ticket") == 1


@pytest.mark.integration
def test_dovecot_stopped_and_restarted_mid_run_leaves_every_message_as_exactly_one_record(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    config = imap_config(tmp_path, db_url, capture, dovecot, batch_size=2)
    for n in range(30):
        dovecot.append(make_mail(subject=f"[SEV-3] before the restart {n}"))
    log = tmp_path / "serve.log"
    with serving(config, log) as proc:
        wait_until(lambda: count(db_url) >= 1, 30)
        dovecot.stop()
        wait_until(lambda: "state=unreachable" in log.read_text())
        assert proc.poll() is None
        dovecot.start()
        for n in range(3):
            dovecot.append(make_mail(subject=f"[SEV-3] after the restart {n}"))
        wait_until(lambda: count(db_url) == 33 and dovecot.messages() == {}, 30)
    assert count(db_url) == 33 and count(db_url, outcome="ticket") == 33
    assert len(dovecot.messages("Processed")) == 33
    assert log.read_text().count(f"state=connected mailbox={SUPPORT}") >= 2


@pytest.mark.integration
def test_a_mailbox_without_its_password_is_retried_while_the_others_go_on(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    sales = f'\n[[mailboxes]]\naddress = "{SALES}"\n{imap_table(dovecot, user=SALES)}\n'
    config = imap_config(tmp_path, db_url, capture, dovecot, sales, password_env="INTAKE_TEST_SUPPORT_PASSWORD")
    monkeypatch.delenv("INTAKE_TEST_SUPPORT_PASSWORD", raising=False)
    dovecot.append(make_mail(subject="[SEV-3] to support"))
    dovecot.append(make_mail(subject="[SEV-3] to sales", to=SALES), user=SALES)
    caplog.set_level(logging.DEBUG, logger="intake.imap")
    services = build_services(load_config(config))
    stopping = threading.Event()
    threads = start_pollers(services, stopping)
    try:
        wait_until(lambda: count(db_url, mailbox=SALES) == 1)
        wait_until(lambda: caplog.text.count(f"state=login_refused mailbox={SUPPORT}") >= 3)  # retried
        monkeypatch.setenv("INTAKE_TEST_SUPPORT_PASSWORD", PASSWORD)
        wait_until(lambda: count(db_url, mailbox=SUPPORT) == 1)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(10)
        services.sessions.kw["bind"].dispose()
    refused = [r for r in caplog.records if f"state=login_refused mailbox={SUPPORT}" in r.getMessage()]
    assert [r.levelno for r in refused].count(logging.WARNING) == 1       # one line per state change
    assert "INTAKE_TEST_SUPPORT_PASSWORD is not set" in refused[0].getMessage()
    assert caplog.text.count(f"state=connected mailbox={SUPPORT}") == 1


@pytest.mark.integration
def test_mail_announced_in_an_earlier_answer_ends_the_wait_at_once(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    """Mail that arrives while a command runs is announced (EXISTS) in that command's answer, and
    IDLE does not announce it again: the poller must not wait through it (up to idle_seconds)."""
    settings = load_config(imap_config(tmp_path, db_url, capture, dovecot)).mailboxes[0].imap
    assert settings is not None
    box = ImapClientMailbox(settings)
    try:
        box.wait(0.2, threading.Event())        # what the folder held when selected is known now
        dovecot.append(make_mail())
        assert box._client.search(["SEEN"]) == []       # its answer announces the mail, which it does not list
        started = time.monotonic()
        assert box.wait(5, threading.Event()) is True
        assert time.monotonic() - started < 1
    finally:
        box.close()


@pytest.mark.integration
def test_mail_delivered_just_before_idle_begins_ends_the_wait_at_once(
        tmp_path: Path, db_url: str, capture: CaptureServer, dovecot: Dovecot) -> None:
    """Dovecot announces a mail that came between the last command and IDLE right behind IDLE's
    go-ahead, which imaplib has read into its buffer by then: the wait must see it there."""
    settings = load_config(imap_config(tmp_path, db_url, capture, dovecot)).mailboxes[0].imap
    assert settings is not None
    box = ImapClientMailbox(settings)
    try:
        box.wait(0.2, threading.Event())        # the count SELECT reported ends this one
        dovecot.append(make_mail())
        started = time.monotonic()
        assert box.wait(5, threading.Event()) is True
        assert time.monotonic() - started < 1
        assert box.search(unseen_only=True) != []
    finally:
        box.close()


TLS = Path(__file__).parent / "tls"     # a self-signed certificate for localhost, for tests only


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_reading_ahead_finds_what_came_with_the_go_ahead_and_never_waits(tls: bool) -> None:
    """The IDLE wait's look into imaplib's buffer, over a real socket: on TLS an empty socket raises
    SSLWantReadError where a plain one reads nothing (it ended every IDLE wait on a TLS mailbox)."""
    listening = socket.create_server(("127.0.0.1", 0))
    sent = threading.Event()

    def serve() -> None:
        conn, _ = listening.accept()
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(TLS / "cert.pem", TLS / "key.pem")
            conn = context.wrap_socket(conn, server_side=True)
        with conn:
            conn.sendall(b"+ idling\r\n* 1 EXISTS\r\n")      # the go-ahead and an announcement in one packet
            sent.set()
            conn.recv(1)                                        # until the client is done

    threading.Thread(target=serve, daemon=True).start()
    sock = socket.create_connection(listening.getsockname(), timeout=5)
    if tls:
        context = ssl.create_default_context(cafile=TLS / "cert.pem")
        sock = context.wrap_socket(sock, server_hostname="localhost")
    with sock, sock.makefile("rb") as reader:
        assert reader.readline() == b"+ idling\r\n" and sent.wait(5)
        assert read_ahead(sock, reader) is True
        assert reader.readline() == b"* 1 EXISTS\r\n"
        started = time.monotonic()
        assert read_ahead(sock, reader) is False
        assert time.monotonic() - started < 0.5 and sock.gettimeout() == IO_TIMEOUT_SECONDS
