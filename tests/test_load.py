"""Load: several concurrent SMTP senders feed a running `intake serve`; afterwards every count
matches exactly (cases, rejections, holds, duplicates recognised, answers sent once each).

Small in CI; by hand: INTAKE_LOAD_MAILS=3000 INTAKE_LOAD_CLIENTS=12 pytest -m load -s
"""
from __future__ import annotations

import os
import smtplib
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import CaptureServer, crlf, free_port, make_mail, write_config
from tests.harness import Database, Serve, captured_ids, in_threads, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.load]
MAILS = int(os.environ.get("INTAKE_LOAD_MAILS", "300"))
CLIENTS = int(os.environ.get("INTAKE_LOAD_CLIENTS", "6"))


def _workload() -> tuple[list[tuple[bytes, str]], Counter[str]]:
    """Mail n: mostly new cases, every tenth untagged (rejected with an answer), every tenth from an
    unknown sender (held), every tenth a copy of an earlier mail (a duplicate). Every sender is
    distinct, so the answer rate limit stays out of the count."""
    mails: list[tuple[bytes, str]] = []
    expected: Counter[str] = Counter()
    for n in range(MAILS):
        kind = n % 10
        if kind == 9 and mails:
            mails.append(mails[(n * 7) % len(mails)])
            expected["duplicate"] += 1
            continue
        sender = f"user{n}@acme.example" if kind != 8 else f"user{n}@nowhere.example"
        subject = {7: f"Load test {n}, no tag", 8: f"[SEV-3] Load test {n}"}.get(kind, f"[SEV-{2 + n % 3}] Load {n}")
        mails.append((make_mail(subject=subject, sender=sender, body=f"Load test mail {n}.\n" * 20), sender))
        expected[{7: "processed/rejected", 8: "processed/held"}.get(kind, "processed/ticket")] += 1
    return mails, expected


def _client(port: int, share: list[tuple[bytes, str]]) -> list[int]:
    """One sender on one connection, like an MTA with a queue for this host; returns each DATA reply."""
    codes = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        for raw, sender in share:
            smtp.ehlo_or_helo_if_needed()
            smtp.mail(sender)
            smtp.rcpt("support@example.com")
            codes.append(smtp.data(crlf(raw))[0])
    return codes


def test_concurrent_senders_and_exact_counts_afterwards(tmp_path: Path, db_url: str,
                                                         capture: CaptureServer) -> None:
    mails, expected = _workload()
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port)
    db = Database(db_url)
    serve = Serve(config, port, tmp_path / "serve.log")
    try:
        started = time.monotonic()
        replies = [code for codes in in_threads([lambda i=i: _client(port, mails[i::CLIENTS])
                                                 for i in range(CLIENTS)]) for code in codes]
        stored = time.monotonic() - started
        assert Counter(replies) == {250: MAILS}
        wait_until(db.settled, 60 + MAILS / 10, db.unsettled)
        settled = time.monotonic() - started
        assert serve.alive()
    finally:
        serve.kill()
    try:
        distinct = MAILS - expected.pop("duplicate", 0)
        assert db.outcomes() == expected
        assert db.scalar("SELECT count(*) FROM inbound_mail") == distinct
        assert db.scalar("SELECT count(*) FROM tickets") == expected["processed/ticket"]
        written = db.outbox_ids()
        assert Counter(written.values()) == {"acknowledgment": expected["processed/ticket"],
                                             "staff_notification": expected["processed/ticket"],
                                             "rejection": expected["processed/rejected"]}
        assert captured_ids(capture.all_mails) == {mid: 1 for mid in written}
    finally:
        db.close()
    print(f"\nload: {MAILS} mails from {CLIENTS} senders: stored in {stored:.1f} s "
          f"({MAILS / stored:.0f}/s), all answered after {settled:.1f} s")
