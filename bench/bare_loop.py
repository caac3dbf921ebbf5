"""The bare loop the performance targets are measured against: aiosmtpd -> mail-parser -> one
durable SQLite commit -> 250, and nothing else (no screening, no case, no acknowledgment).

bench/ingest.py starts it in a process of its own, as `intake serve` runs, and sends it the same
corpus from the same clients; the processed rate as a fraction of this one compares across
machines, where mails/s alone does not:

    .venv/bin/python bench/bare_loop.py PORT DATABASE_FILE
"""
from __future__ import annotations

import signal
import sqlite3
import sys
import threading
from typing import Any

import mailparser
from aiosmtpd.controller import Controller


class BareHandler:
    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS mail (id INTEGER PRIMARY KEY, sender TEXT, subject TEXT, "
                        "message_id TEXT, body TEXT, raw BLOB)")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = mailparser.parse_from_bytes(envelope.content)
        self.db.execute("BEGIN")
        self.db.execute("INSERT INTO mail (sender, subject, message_id, body, raw) VALUES (?, ?, ?, ?, ?)",
                        (envelope.mail_from, mail.subject, mail.message_id, mail.body, envelope.content))
        self.db.execute("COMMIT")
        return "250 OK"


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    controller = Controller(BareHandler(path), hostname="127.0.0.1", port=port)
    controller.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    controller.stop()


if __name__ == "__main__":
    main()
