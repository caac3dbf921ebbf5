"""Delivery benchmark: the outbox worker's cost per outgoing mail, in process, on SQLite or PostgreSQL.

Each round ingests the benchmark corpus (bench/ingest.py) through `intake.pipeline.ingest` into a
fresh, migrated database (acknowledgments, staff and on-call notices land in the outbox), then
times `deliver_due` passes, as the outbox worker runs them, until every row went to an aiosmtpd
capture relay in a thread of this process, and checks that the relay got every row exactly once
(by Message-ID) and that every row is marked sent. Logging is set up as `intake serve` does (INFO,
text, addresses redacted) and written to /dev/null.

Prints wall and CPU milliseconds per delivered row, the median over the rounds: CPU of the
delivering thread alone (`time.thread_time`: the worker's cost), and of the whole process
(`time.process_time`, which adds the relay's work). Run on demand, not in the test suite:

    .venv/bin/python bench/delivery.py [--mails 300] [--rounds 3] [--database sqlite|postgresql] [--pg-url URL]
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.ingest import Options, _admin, corpus, free_port, fresh_database, write_config  # noqa: E402
from bench.inprocess import ENVELOPE  # noqa: E402
from intake.config import load_config  # noqa: E402
from intake.logs import Redactor, setup_logging  # noqa: E402
from intake.pipeline import ingest  # noqa: E402
from intake.service import build_services  # noqa: E402
from models import OutboxMail, OutboxStatus  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from notifications.delivery import deliver_due  # noqa: E402
from notifications.sender import SmtpSender  # noqa: E402

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>\r\n]+)>", re.IGNORECASE | re.MULTILINE)
DATABASE = "intake_bench_delivery"


class Relay:
    """The capture relay: the Message-ID of every mail it accepted."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        found = _MESSAGE_ID.search(envelope.original_content)    # type: ignore[attr-defined]
        with self.lock:
            self.ids.append(found.group(1).decode() if found else "")
        return "250 OK"


def one_round(opts: Options, name: str, mails: list[bytes], relay: Relay) -> tuple[int, float, float, float]:
    """Fill a fresh outbox, deliver all of it; returns (rows, wall, thread CPU, process CPU seconds)."""
    url = fresh_database(opts, name)
    upgrade(url)
    folder = Path(tempfile.mkdtemp(dir=opts.tmp))
    services = build_services(load_config(write_config(folder, url, free_port(), opts.relay_port)))
    for raw in mails:
        ingest(services, raw, ENVELOPE)
    with services.sessions() as session:
        expected = Counter(session.scalars(select(OutboxMail.message_id)))
    relay.ids.clear()
    sender = SmtpSender("127.0.0.1", opts.relay_port)
    cpu_started, process_started, started = time.thread_time(), time.process_time(), time.perf_counter()
    while deliver_due(services.sessions, sender, services.clock).sent:
        pass
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu_started
    process = time.process_time() - process_started
    with services.sessions() as session:
        unsent = session.scalar(select(func.count()).select_from(OutboxMail)
                                .where(OutboxMail.status != OutboxStatus.SENT))
    services.sessions.kw["bind"].dispose()
    got = Counter(relay.ids)
    if got != expected or unsent:
        raise SystemExit(f"delivery wrong: {sum(expected.values())} rows, {len(relay.ids)} mails at the relay, "
                         f"{len(set(got) ^ set(expected))} unmatched ids, {unsent} rows not sent")
    return len(relay.ids), wall, cpu, process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=300, help="mails ingested per round (about 1.3 rows each)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh databases timed; the median is printed")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="an existing database; the benchmark creates and drops its own beside it")
    args = parser.parse_args()
    setup_logging("text", "info", Redactor(["support@example.com"]))
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))     # type: ignore[attr-defined]
    relay = Relay()
    controller = Controller(relay, hostname="127.0.0.1", port=free_port())
    controller.start()
    opts = Options(args.database, args.pg_url, Path(tempfile.mkdtemp(prefix="intake-bench-delivery-")),
                   controller.port)
    mails = corpus(args.mails)
    load_before = os.getloadavg()
    rounds = []
    try:
        for number in range(args.rounds):
            rounds.append(one_round(opts, f"{DATABASE}_{number}", mails, relay))
    finally:
        controller.stop()
        if opts.database == "postgresql":
            _admin(opts, *(f"DROP DATABASE IF EXISTS {DATABASE}_{number} WITH (FORCE)"
                           for number in range(args.rounds)))
    load_after = os.getloadavg()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    per_row = [[value / rows * 1000 for value in measured] for rows, *measured in rounds]
    wall, cpu, process = (statistics.median(column) for column in zip(*per_row))
    print(f"database: {args.database}; {rounds[0][0]} outbox rows from {len(mails)} mails, {len(rounds)} rounds, "
          f"each row at the relay exactly once")
    print(f"delivery per row (median): {wall:.2f} ms wall, {cpu:.2f} ms CPU in the delivering thread, "
          f"{process:.2f} ms CPU in the process (with the relay)")
    print("rounds (wall/thread CPU/process CPU ms): "
          + ", ".join("/".join(f"{value:.2f}" for value in row) for row in per_row))


if __name__ == "__main__":
    main()
