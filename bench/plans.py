"""Query plans of everything the service runs per mail and per scheduled pass, on a filled database.

Drives the real code (intake.pipeline.ingest, the sweeps, the outbox claim, resume_received, the
metrics gauges) through every ingest path once - a new case, a new case of an organization with
an incident allowance (the per-organization count), a duplicate, replies found by reply token,
by In-Reply-To (a stored message and a staff notification only in the outbox), by a case
reference in the subject, a staff reply on a staff token, an unauthenticated staff-looking
reply, a bounce, a mail from an unknown sender - and records every statement it sends
(SQLAlchemy's `before_cursor_execute`). Then, for each distinct SELECT, UPDATE and DELETE, it
prints the plan (SQLite `EXPLAIN QUERY PLAN`, PostgreSQL `EXPLAIN`) with the parameters the
code used, the median time of 20 executions (SELECTs only, rolled back), and flags full
scans (SQLite `SCAN table` without an index, PostgreSQL `Seq Scan`) and full index scans.

    .venv/bin/python bench/plans.py [--database-url URL] [--existing N] [--all]

Without --database-url a new SQLite file; with --existing N it is first filled with N cases
(bench/fill.py; the database must be empty). --all prints every statement, not only those
with a finding or slower than 1 ms. Run on a scratch database: it writes a few cases.
"""
from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Engine, event, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fill import prepared_database  # noqa: E402
from bench.ingest import corpus, free_port, write_config  # noqa: E402
from intake import metrics  # noqa: E402
from intake.config import load_config  # noqa: E402
from intake.pipeline import ingest, resume_received  # noqa: E402
from intake.service import build_services  # noqa: E402
from intake.store import Envelope  # noqa: E402
from intake.sweep import run_sweeps  # noqa: E402
from models import Message, OutboxMail, Participant, Ticket, TicketStatus, utcnow  # noqa: E402
from notifications.delivery import claim_due  # noqa: E402

EXTRA_CONFIG = """
[[organizations]]
name = "Globex"
domains = ["globex.example"]
tier = "advanced"
"""
REPEAT = 20


@dataclass
class Statement:
    sql: str
    phases: list[str] = field(default_factory=list)
    parameters: Any = None


class Recorder:
    def __init__(self) -> None:
        self.phase = "setup"
        self.statements: dict[str, Statement] = {}

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        if executemany or not re.match(r"\s*(SELECT|UPDATE|DELETE)\b", statement, re.I):
            return
        entry = self.statements.setdefault(statement, Statement(statement))
        if self.phase not in entry.phases:
            entry.phases.append(self.phase)
        if entry.parameters is None:
            entry.parameters = parameters


def mail(headers: dict[str, str], body: str = "Some more detail on this.") -> bytes:
    lines = [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


def scenario(services: Any, recorder: Recorder) -> None:
    """Every ingest path once, then one pass of each scheduled job."""
    sessions = services.sessions
    with sessions() as session:         # an open case of the fill with its acknowledgment and staff notice
        ticket = session.scalar(select(Ticket).where(Ticket.status == TicketStatus.OPEN).order_by(Ticket.id.desc())
                                .limit(1)) or session.scalar(select(Ticket).order_by(Ticket.id.desc()).limit(1))
        if ticket is None:
            raise SystemExit("no case to reply to: run with --existing N")
        ack = session.scalar(select(Message.message_id).where(Message.ticket_id == ticket.id,
                                                              Message.kind == "acknowledgment"))
        notice = session.scalar(select(OutboxMail.message_id).where(OutboxMail.ticket_id == ticket.id,
                                                                    OutboxMail.kind == "staff_notification"))
        requester = session.scalar(select(Participant.address).where(Participant.ticket_id == ticket.id))
    envelope = Envelope(door="smtp", mailbox="support@example.com", sender="x@acme.example",
                        recipients=("support@example.com",))
    first = corpus(1, seed=5)[0]
    paths: list[tuple[str, bytes, Envelope]] = [
        ("new case", first, envelope),
        ("new case, incident allowance", mail({"From": "buyer@globex.example", "To": "support@example.com",
                                               "Subject": "[SEV-3] Invoice", "Message-ID": "<p1@globex.example>"}),
         envelope),
        ("duplicate", first, envelope),
        ("reply by token", mail({"From": requester, "To": f"support+{ticket.reply_token}@example.com",
                                 "Subject": "Re: more", "Message-ID": "<p2@plans.example>"}),
         Envelope("smtp", "support@example.com", requester, (f"support+{ticket.reply_token}@example.com",))),
        ("reply by In-Reply-To (message)", mail({"From": requester, "To": "support@example.com", "Subject": "Re: x",
                                                 "Message-ID": "<p3@plans.example>", "In-Reply-To": f"<{ack}>"}),
         envelope),
        ("reply by In-Reply-To (outbox)", mail({"From": requester, "To": "support@example.com", "Subject": "Re: y",
                                                "Message-ID": "<p4@plans.example>", "In-Reply-To": f"<{notice}>"}),
         envelope),
        ("reply by subject reference", mail({"From": requester, "To": "support@example.com",
                                             "Subject": f"Re: [CASE-{ticket.id}] more", "Message-ID": "<p5@plans.example>"}),
         envelope),
        ("unauthenticated staff sender", mail({"From": "alice@example.com", "To": "support@example.com",
                                               "Subject": "Re: z", "Message-ID": "<p6@plans.example>",
                                               "In-Reply-To": f"<{ack}>"}), envelope),
        ("bounce", Path(__file__).resolve().parent.parent.joinpath("tests/mails/dsn-text-rfc822-headers.eml")
         .read_bytes().replace(b"<ack-1042@support.example.com>", f"<{ack}>".encode()), envelope),
        ("unknown sender", mail({"From": "someone@unknown.example", "To": "support@example.com",
                                 "Subject": "[SEV-2] Help", "Message-ID": "<p7@plans.example>"}), envelope),
    ]
    for name, raw, env in paths:
        recorder.phase = f"ingest: {name}"
        result = ingest(services, raw, env)
        if name == "new case":
            token = _staff_token(services, result.ticket_id)
            paths.insert(3, ("staff reply on a staff token", mail(
                {"From": "alice@example.com", "To": token, "Subject": "Re: answer", "Message-ID": "<p8@plans.example>"},
                "#pending\nWe are on it."), Envelope("smtp", "support@example.com", "alice@example.com", (token,))))
    now = services.clock()
    for name, job in (("sweeps", lambda: run_sweeps(services, now)),
                      ("sweeps, a day later", lambda: run_sweeps(services, now + timedelta(days=1))),
                      ("outbox claim", lambda: _claim(sessions, now)),
                      ("resume_received", lambda: resume_received(services, timedelta(minutes=1))),
                      ("metrics scrape", lambda: list(metrics.DatabaseCollector(lambda: sessions, utcnow).collect()))):
        recorder.phase = name
        job()


def _claim(sessions: Any, now: datetime) -> None:
    with sessions.kw["bind"].connect() as conn:
        claim_due(conn, now)


def _staff_token(services: Any, ticket_id: int | None) -> str:
    with services.sessions() as session:
        raw = session.scalar(select(OutboxMail.raw).where(OutboxMail.ticket_id == ticket_id,
                                                          OutboxMail.kind == "staff_notification"))
    found = re.search(rb"Reply-To: (support\+s[0-9a-f]+@example\.com)", raw or b"")
    assert found, "no staff reply address in the notification"
    return found.group(1).decode()


FULL_SCAN_SQLITE = re.compile(r"\bSCAN (\w+)(?! USING)")
INDEX_SCAN_SQLITE = re.compile(r"\bSCAN (\w+) USING (?:COVERING )?INDEX")
FULL_SCAN_PG = re.compile(r"Seq Scan on (\w+)")


def explain(url: str, statements: list[Statement], show_all: bool) -> int:
    sqlite = url.startswith("sqlite")
    if sqlite:
        conn: Any = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
    else:
        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    findings = 0
    try:
        for st in statements:
            params = st.parameters if st.parameters is not None else ()
            if sqlite:
                plan = "\n".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + st.sql, params))
            else:
                plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + st.sql, params))
                conn.rollback()
            notes = []
            pattern = FULL_SCAN_SQLITE if sqlite else FULL_SCAN_PG
            notes += [f"FULL SCAN of {t}" for t in pattern.findall(plan)]
            if sqlite:
                notes += [f"full index scan of {t}" for t in INDEX_SCAN_SQLITE.findall(plan)]
            millis = _time(conn, st, params, sqlite) if st.sql.lstrip().upper().startswith("SELECT") else None
            if notes:
                findings += 1
            if show_all or notes or (millis or 0) > 1.0:
                print("-" * 100)
                print(f"[{'; '.join(st.phases)}]" + (f"  {millis:.3f} ms" if millis is not None else ""))
                print(_short(st.sql))
                print("  plan: " + plan.replace("\n", "\n        "))
                for note in notes:
                    print(f"  ** {note}")
    finally:
        conn.close()
    return findings


def _time(conn: Any, st: Statement, params: Any, sqlite: bool) -> float:
    times = []
    if sqlite:
        conn.execute("BEGIN")
    for _ in range(REPEAT):
        started = time.perf_counter()
        conn.execute(st.sql, params).fetchall()
        times.append(time.perf_counter() - started)
    conn.rollback() if not sqlite else conn.execute("ROLLBACK")
    return statistics.median(times) * 1000


def _short(sql: str) -> str:
    """One line, with a long column list left out."""
    sql = re.sub(r"\s+", " ", sql).strip()
    return re.sub(r"^SELECT (?:\w+\.\w+, ){6,}\w+\.\w+ FROM", "SELECT ... FROM", sql)[:700]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="default: a new SQLite file")
    parser.add_argument("--existing", type=int, default=0, metavar="N", help="fill with N cases first")
    parser.add_argument("--all", action="store_true", help="print every statement")
    args = parser.parse_args()
    tmp, url = prepared_database("plans", args.database_url, args.existing)
    config_path = write_config(tmp, url, free_port(), free_port())
    config_path.write_text(config_path.read_text() + EXTRA_CONFIG)
    services = build_services(load_config(config_path))
    recorder = Recorder()
    event.listen(Engine, "before_cursor_execute", recorder)
    try:
        scenario(services, recorder)
    finally:
        event.remove(Engine, "before_cursor_execute", recorder)
    statements = list(recorder.statements.values())
    print(f"{len(statements)} distinct SELECT/UPDATE/DELETE statements recorded")
    findings = explain(url, statements, args.all)
    print("-" * 100)
    print(f"{findings} statement(s) with a full table or index scan")


if __name__ == "__main__":
    main()
