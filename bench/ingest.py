"""Ingest benchmark: N mails over SMTP from C concurrent clients into a running `intake serve`.

Prints mails/s accepted (DATA -> 250), fully processed (case + rendered acknowledgment in the
outbox), acknowledgments delivered to a capture relay, DATA->250 latency percentiles, the
server's peak RSS, and two ceilings measured in the same run: the stdlib parse rate and a bare
durable SQLite commit rate. Run on demand:

    .venv/bin/python bench/ingest.py [--mails 2000] [--clients 4] [--database sqlite|postgresql]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models import InboundMail, InboundStatus, OutboxMail  # noqa: E402

SUBJECTS = ["Replication lag on prod", "Login fails for some users", "Export is slow",
            "Fråga om licensen", "Ошибка при входе", "請求書について", "Disk usage alert"]


def corpus(n: int, seed: int = 7) -> list[bytes]:
    """Plain and multipart mails, 20 % with an attachment, some encoded subjects."""
    rng = random.Random(seed)
    mails = []
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = f"User {i} <user{i % 97}@acme.example>"
        msg["To"] = "support@example.com"
        msg["Subject"] = f"[SEV-{rng.randint(1, 4)}] {rng.choice(SUBJECTS)} #{i}"
        msg["Message-ID"] = f"<bench-{i}-{rng.getrandbits(40)}@acme.example>"
        body = "\n".join(f"Line {j}: the service answers slowly since the upgrade." for j in range(rng.randint(5, 60)))
        msg.set_content(body)
        if rng.random() < 0.5:
            msg.add_alternative(f"<html><body><p>{body.replace(chr(10), '<br>')}</p></body></html>", subtype="html")
        if rng.random() < 0.2:
            msg.add_attachment(os.urandom(rng.randint(2_000, 40_000)), maintype="application",
                               subtype="octet-stream", filename=f"log-{i}.bin")
        mails.append(msg.as_bytes().replace(b"\n", b"\r\n"))
    return mails


class Sink:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.lock:
            self.count += 1
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, url: str, port: int, relay: int) -> Path:
    body = (ROOT / "config.toml").read_text()
    body = body.replace('url = "sqlite:///intake.db"', f'url = "{url}"').replace("port = 2525", f"port = {port}")
    body = body.replace("port = 25\n", f"port = {relay}\n").replace("auto_replies_per_hour = 5", "auto_replies_per_hour = 100000")
    path = tmp / "config.toml"
    path.write_text(body)
    return path


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("listener did not start")


def send_all(port: int, mails: list[bytes], clients: int) -> list[float]:
    chunks = [mails[i::clients] for i in range(clients)]

    def client(chunk: list[bytes]) -> list[float]:
        latencies = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            for raw in chunk:
                smtp.mail("user@acme.example")
                smtp.rcpt("support@example.com")
                started = time.perf_counter()
                code, _ = smtp.data(raw)
                latencies.append(time.perf_counter() - started)
                assert code == 250, code
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        return [lat for part in pool.map(client, chunks) for lat in part]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ceilings(mails: list[bytes], tmp: Path) -> tuple[float, float]:
    started = time.perf_counter()
    for raw in mails:
        message_from_bytes(raw, policy=policy.default).get_body(("plain", "html"))
    parse_rate = len(mails) / (time.perf_counter() - started)
    db = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, raw BLOB)")
    started = time.perf_counter()
    for raw in mails[:500]:
        db.execute("BEGIN")
        db.execute("INSERT INTO m (raw) VALUES (?)", (raw,))
        db.execute("COMMIT")
    return parse_rate, min(len(mails), 500) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    mails = corpus(args.mails)
    tmp = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    if args.database == "postgresql":
        admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS intake_bench WITH (FORCE)"))
            conn.execute(text("CREATE DATABASE intake_bench"))
        url = args.pg_url.rsplit("/", 1)[0] + "/intake_bench"
    sink = Sink()
    relay = Controller(sink, hostname="127.0.0.1", port=free_port())
    relay.start()
    port = free_port()
    config = write_config(tmp, url, port, relay.port)
    server = subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "serve"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        engine = create_engine(url)
        started = time.perf_counter()
        latencies = send_all(port, mails, args.clients)
        accepted = time.perf_counter() - started
        processed = delivered = None
        deadline = time.monotonic() + 600
        with engine.connect() as conn:
            while time.monotonic() < deadline and (processed is None or delivered is None):
                if processed is None:
                    left = conn.execute(select(func.count()).select_from(InboundMail).where(
                        InboundMail.status == InboundStatus.RECEIVED)).scalar()
                    acks = conn.execute(select(func.count()).select_from(OutboxMail).where(
                        OutboxMail.kind == "acknowledgment")).scalar()
                    if left == 0 and acks >= len(mails):
                        processed = time.perf_counter() - started
                if processed is not None and sink.count >= 2 * len(mails):   # acks + staff notifications
                    delivered = time.perf_counter() - started
                conn.rollback()
                time.sleep(0.02)
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)
        relay.stop()
    parse_rate, commit_rate = ceilings(mails, tmp)
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000  # noqa: E731
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}")
    print(f"database: {args.database}; mails: {len(mails)}; clients: {args.clients}")
    print(f"accepted:  {len(mails) / accepted:8.1f} mails/s (DATA->250 p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, "
          f"mean {statistics.mean(latencies) * 1000:.1f} ms)")
    print(f"processed: {len(mails) / processed:8.1f} mails/s (case + acknowledgment in the outbox)" if processed
          else "processed: did not finish")
    print(f"delivered: {len(mails) / delivered:8.1f} mails/s (acknowledgments and staff notifications at the relay)"
          if delivered else f"delivered: {sink.count} mails reached the relay")
    print(f"peak RSS of intake serve: {rss:.0f} MiB")
    print(f"ceilings: stdlib parse {parse_rate:.0f} mails/s; bare durable SQLite commit {commit_rate:.0f} commits/s")


if __name__ == "__main__":
    main()
