"""Outages under a running `intake serve`: the database going away mid-load, and a disk that
fills up. The listener answers `451` while it cannot store, never `250` for mail it has not
stored, and recovers by itself, with nothing lost and nothing doubled.

(A relay outage: tests/test_reliability.py; an IMAP server restart: tests/test_imap.py.)
"""
from __future__ import annotations

import resource
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from models import utcnow
from tests.conftest import CaptureServer, free_port, make_mail, run_cli, write_config
from tests.harness import (Attempts, Database, Serve, TcpProxy, captured_ids, in_threads, proxied_url,
                           send_until_stored, smtp_send, wait_until)

pytestmark = pytest.mark.integration
CLIENTS, PER_CLIENT = 3, 20


def _customer_mail(n: int) -> tuple[bytes, str]:
    sender = f"customer{n}@acme.example"    # one address each: the answer rate limit stays out of the count
    return make_mail(subject=f"[SEV-3] Outage mail {n}", sender=sender), sender


def _answered(db: Database, address: str) -> bool:
    return db.scalar("SELECT count(*) FROM outbox WHERE recipient = :a AND status = 'sent'", a=address) > 0


def _assert_every_mail_once(db: Database, capture: CaptureServer, mails: int) -> None:
    wait_until(db.settled, 30, db.unsettled)
    assert db.outcomes() == {"processed/ticket": mails}
    assert db.scalar("SELECT count(*) FROM tickets") == mails
    written = db.outbox_ids()
    assert sorted(set(written.values())) == ["acknowledgment", "staff_notification"]
    assert captured_ids(capture.all_mails) == {mid: 1 for mid in written}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)   # SQLite: the disk-full test below
def test_postgresql_away_mid_load_gives_451_never_a_false_250_and_recovers_by_itself(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    target = make_url(db_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    port = free_port()
    config = write_config(tmp_path, proxied_url(db_url, proxy.port), port, capture.port)
    db = Database(db_url)                       # the test itself reads the database directly
    serve = Serve(config, port, tmp_path / "serve.log")
    results: list[list[Attempts]] = []

    def client(first: int) -> list[Attempts]:
        return [send_until_stored(lambda: port, *_customer_mail(n), timeout=60)
                for n in range(first, first + PER_CLIENT)]

    try:
        load = threading.Thread(target=lambda: results.extend(in_threads(
            [lambda i=i: client(i * PER_CLIENT) for i in range(CLIENTS)])))
        load.start()
        wait_until(lambda: db.scalar("SELECT count(*) FROM inbound_mail") >= 6, 30, "load under way")
        proxy.cut()
        cut = time.monotonic()
        probe, probe_sender = _customer_mail(1000)
        assert smtp_send(port, probe, probe_sender, ("support@example.com",)) == 451
        time.sleep(1.5)                         # the outage lasts a while: the senders keep retrying
        restored, restored_at = time.monotonic(), utcnow()
        proxy.restore()
        assert send_until_stored(lambda: port, probe, probe_sender, timeout=30).delivered
        load.join(90)
        assert not load.is_alive()
        attempts = [a for per_client in results for a in per_client]
        assert len(attempts) == CLIENTS * PER_CLIENT and all(a.delivered for a in attempts), \
            [a.codes for a in attempts]
        assert any(451 in a.codes for a in attempts), "some sender met the outage"
        during = [a for a in attempts if cut + 0.5 < (a.stored_at or 0) < restored]
        assert during == [], "a 250 while the database was away"
        assert serve.alive()                    # recovered by itself: no restart
        # Mails the worker had claimed when the database went away stay leased for five minutes;
        # once a pass after the outage went through (the probe was answered), `outbox retry`
        # stands in for that wait. A sent mail whose result was not yet written must not go again.
        wait_until(lambda: db.settled() or (db.only_leased_left(restored_at) and _answered(db, probe_sender)),
                   30, db.unsettled)
        if not db.settled():
            assert run_cli("--config", str(config), "outbox", "retry")[0] == 0
        _assert_every_mail_once(db, capture, CLIENTS * PER_CLIENT + 1)
        assert db.scalar("SELECT count(*) FROM inbound_mail WHERE status = 'quarantined'") == 0
    finally:
        serve.kill()
        proxy.close()
        db.close()


FILE_LIMIT = 1024 * 1024


def _limit_file_size() -> None:
    """In the child: no file may grow past FILE_LIMIT bytes (the hard limit stays open, so the
    test can lift it again without privileges)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)   # PostgreSQL: its own server's matter
def test_sqlite_disk_full_gives_a_clear_451_no_corruption_and_recovers_when_space_returns(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    """A full disk, emulated with the kernel's file-size limit (RLIMIT_FSIZE) on the serving
    process: a write that would grow the database or its WAL past the limit is cut short and then
    refused (EFBIG, where a full disk gives ENOSPC), and SQLite reports it as it reports a full
    disk. No mount, no root, and only this process is affected."""
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port)
    db_file = Path(db_url.removeprefix("sqlite:///"))
    db = Database(db_url)
    serve = Serve(config, port, tmp_path / "serve.log", preexec_fn=_limit_file_size)
    small = [_customer_mail(n) for n in range(3)]
    big_sender = "big@acme.example"
    big = make_mail(subject="[SEV-3] Full log attached", sender=big_sender,
                    body="log line 0123456789 abcdefghij\n" * 50_000)   # 1.5 MB
    try:
        for raw, sender in small[:2]:
            assert smtp_send(port, raw, sender, ("support@example.com",)) == 250
        assert smtp_send(port, big, big_sender, ("support@example.com",)) == 451
        assert smtp_send(port, *small[2], ("support@example.com",)) == 250    # small mail still fits
        assert serve.alive()
        for pid in (serve.pid, *_children(serve.pid)):      # the door and its processing process
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert send_until_stored(lambda: port, big, big_sender, timeout=30).codes[-1] == 250
        _assert_every_mail_once(db, capture, 4)
        assert db.scalar("SELECT count(*) FROM inbound_mail WHERE status = 'quarantined'") == 0
    finally:
        serve.kill()
        db.close()
    with sqlite3.connect(db_file) as check:         # after a kill, the file and its WAL are sound
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("SELECT count(*) FROM inbound_mail").fetchone() == (4,)


def _children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]
