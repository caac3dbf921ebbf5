"""Two `intake serve` processes on one PostgreSQL database, each with its own listener, fed the
same mails at the same time, then a batch of due follow-ups: no case is opened twice and no
mail goes out twice. (SQLite is supported with one process only.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from intake.config import load_config
from intake.lifecycle import change_status
from intake.service import build_services
from models import Ticket, TicketStatus, utcnow
from models.db import unit_of_work
from tests.conftest import CaptureServer, free_port, make_mail, run_cli, write_config
from tests.harness import ROOT, Database, Serve, captured_ids, in_threads, send_until_stored, wait_until

pytestmark = pytest.mark.integration
CASES = 24


def _make_pending(config: Path) -> None:
    services = build_services(load_config(config))
    with unit_of_work(services.sessions) as session:
        for ticket in session.scalars(select(Ticket)):
            change_status(session, ticket, TicketStatus.PENDING, "alice@example.com", utcnow(), "staff command")
    services.sessions.kw["bind"].dispose()


def _sweep(config: Path, now: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "sweep", "--once",
                             "--now", now, "--json"], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_instances_fed_the_same_mails_open_each_case_once_and_send_each_mail_once(
        tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    ports, configs = [free_port(), free_port()], []
    for name, port in zip("ab", ports):
        (tmp_path / name).mkdir()
        configs.append(write_config(tmp_path / name, db_url, port, capture.port))
    db = Database(db_url)
    instances = [Serve(config, port, config.parent / "serve.log") for config, port in zip(configs, ports)]
    mails = [(make_mail(subject=f"[SEV-3] Same mail to both {n}", sender=f"customer{n}@acme.example"),
              f"customer{n}@acme.example") for n in range(CASES)]
    try:
        # Each mail reaches both listeners at about the same moment (two MX hosts, one database).
        results = list(in_threads([lambda port=port: [send_until_stored(lambda: port, raw, sender, timeout=30)
                                                      for raw, sender in mails] for port in ports]))
        assert all(a.codes == [250] for per_port in results for a in per_port)
        replies = Counter(a.reply.split(b"Ok: ")[-1] for per_port in results for a in per_port)
        assert replies == {b"stored": CASES, b"already stored": CASES}     # one instance each stored it
        wait_until(db.settled, 30, db.unsettled)
        assert db.outcomes() == {"processed/ticket": CASES}
        assert db.scalar("SELECT count(*) FROM tickets") == CASES
        acks = captured_ids(capture.all_mails)
        assert acks == {mid: 1 for mid in db.outbox_ids()} and len(acks) == 2 * CASES

        # A batch of follow-ups comes due: two sweeps at once, as of a time when attempt 1 of
        # every case is due; the two running instances deliver what they wrote.
        _make_pending(configs[0])
        later = (utcnow() + timedelta(days=10)).isoformat()
        sweeps = [_sweep(config, later) for config in configs]
        outputs = [proc.communicate(timeout=60) for proc in sweeps]
        assert [proc.returncode for proc in sweeps] == [0, 0], outputs
        acted = [a["ticket"] for out, _ in outputs for a in json.loads(out)["actions"]]
        assert sorted(acted) == sorted(f"CASE-{n}" for (n,) in db.rows("SELECT id FROM tickets"))  # each once
        # The sweep wrote the follow-ups as of that later time; they are due now for the workers.
        assert run_cli("--config", str(configs[0]), "outbox", "retry")[0] == 0
        wait_until(db.settled, 30, db.unsettled)
        assert all(instance.alive() for instance in instances)
    finally:
        for instance in instances:
            instance.kill()
    try:
        written = db.outbox_ids()
        assert Counter(written.values()) == {"acknowledgment": CASES, "staff_notification": CASES,
                                             "followup": CASES}
        assert captured_ids(capture.all_mails) == {mid: 1 for mid in written}
        followups = Counter(r for m in capture.all_mails if str(m.message["Message-ID"]) in written
                            and written[str(m.message["Message-ID"])] == "followup" for r in m.recipients)
        assert followups == {f"customer{n}@acme.example": 1 for n in range(CASES)}
    finally:
        db.close()
