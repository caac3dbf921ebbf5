"""Ingest benchmark: mails over SMTP into a running `intake serve`, on SQLite or PostgreSQL.

Two runs, each against a fresh database and a fresh server, with a capture relay in a process
of its own standing in for the outbound relay:

- full load: N mails from C concurrent clients, each sending as soon as its last mail was
  answered. Prints mails/s accepted (DATA -> 250), fully processed (case + rendered
  acknowledgment in the outbox) and delivered (every outbox row at the relay), the DATA->250
  percentiles, and the server's CPU and peak RSS (all its processes); the CPU the relay, the
  clients and the rest of the machine used in the same run;
- paced: mails offered on a fixed schedule (default 50/s) from enough clients that a slow
  answer does not hold back the next mail; prints the DATA->250 percentiles at that load, and
  how long after the last answer every mail was processed and delivered (whether the service
  keeps up with that rate for as long as it is offered).

Then the ceilings, measured on the same machine in the same run: the bare loop (bench/bare_loop.py:
aiosmtpd -> mail-parser -> SQLite commit -> 250, fed by the same clients), mail-parser and stdlib
parse rates and a bare durable commit rate (SQLite; PostgreSQL too when benchmarking it), with the
processed rate as a fraction of each, and the 150 mails/s target scaled to this machine by the
bare loop (the issue's reference machine ran it at 286 mails/s), with the CPU budget per mail that
rate leaves the service once the relay and the clients have had theirs. Run on demand, not in the
test suite:

    .venv/bin/python bench/ingest.py [--mails 2000] [--clients 4] [--rate 50] [--paced-mails 500]
                                     [--database sqlite|postgresql] [--pg-url URL]
                                     [--existing N | --seed-db URL]

`--existing N` starts both runs on a database holding N existing cases with their mail, messages,
events, outbox rows and staff tokens (bench/fill.py): filled once into a seed database (the time
and size are printed), which each run then starts from a copy of (SQLite: a file copy; PostgreSQL:
`CREATE DATABASE ... TEMPLATE`). Comparing a run with `--existing 1000000` against one without
shows what the indexes cost and save as the tables grow. To fill once and run several times,
fill a database with `bench/fill.py URL N` and pass it as `--seed-db URL` (a SQLite file, or a
PostgreSQL database on the `--pg-url` server; it is only copied, never changed). The
PostgreSQL databases a run creates carry its process id (`intake_bench_load_PID`, ...), so two
benchmarks against one server do not drop each other's.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import re
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import mailparser
import psycopg
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.fill import Filled, fill  # noqa: E402
from models import InboundMail, InboundStatus, OutboxMail  # noqa: E402

SUBJECTS = ["Replication lag on prod", "Login fails for some users", "Export is slow",
            "Fråga om licensen", "Ошибка при входе", "請求書について", "Disk usage alert"]
LATE_SECONDS = 0.005        # a paced mail that starts later than this after its slot counts as late


def corpus(n: int, seed: int = 7) -> list[bytes]:
    """Plain and multipart mails, 20 % with an attachment, some encoded subjects."""
    rng = random.Random(seed)
    mails = []
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = f"User {i} <user{i % 97}@acme.example>"
        msg["To"] = "support@example.com"
        msg["Subject"] = f"[SEV-{rng.randint(1, 4)}] {rng.choice(SUBJECTS)} #{i}"
        msg["Message-ID"] = f"<bench-{seed}-{i}-{rng.getrandbits(40)}@acme.example>"
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
    """The capture relay, in a process of its own as a real relay is (in the benchmark's process it
    would share an interpreter with the clients): counts what the outbox worker delivers."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")    # before the benchmark starts any thread
        self._count = context.Value("q", 0)
        self.port = free_port()
        self._process = context.Process(target=_relay, args=(self.port, self._count), daemon=True)

    def start(self) -> None:
        self._process.start()
        wait_port(self.port)

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(10)

    @property
    def count(self) -> int:
        return int(self._count.value)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid


class _Counting:
    def __init__(self, count: Any) -> None:
        self.count = count

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        with self.count.get_lock():
            self.count.value += 1
        return "250 OK"


def _relay(port: int, count: Any) -> None:
    Controller(_Counting(count), hostname="127.0.0.1", port=port).start()
    threading.Event().wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, url: str, port: int, relay: int, changes: Mapping[str, str] | None = None) -> Path:
    """The shipped config pointed at `url`, `port` and the relay, with `changes` (old text -> new)."""
    body = (ROOT / "config.toml").read_text()
    body = body.replace('url = "sqlite:///intake.db"', f'url = "{url}"').replace("port = 2525", f"port = {port}")
    body = body.replace("port = 25\n", f"port = {relay}\n").replace("auto_replies_per_hour = 5", "auto_replies_per_hour = 100000")
    body = body.replace("port = 9464", f"port = {free_port()}")     # two servers (or benchmarks) at once
    for old, new in (changes or {}).items():
        assert old in body, old
        body = body.replace(old, new)
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


@dataclass
class Options:
    database: str
    pg_url: str
    tmp: Path
    relay_port: int
    seed: str | None = None     # runs start from a copy of this filled database (--existing, --seed-db)


# Per run: two benchmarks against one PostgreSQL server (another worktree, CI) must not drop each
# other's databases.
WARM_UP_MAILS = 20
LOAD, PACED, SEED = (f"intake_bench_{name}_{os.getpid()}" for name in ("load", "paced", "seed"))


def fresh_database(opts: Options, name: str) -> str:
    """An empty database, or with a seed a copy of it."""
    if opts.database == "sqlite":
        path = opts.tmp / f"{name}.db"
        if opts.seed:
            shutil.copyfile(opts.seed.split("///", 1)[1], path)
            _flush(path)
        return f"sqlite:///{path}"
    template = f" TEMPLATE {opts.seed.rsplit('/', 1)[1]} STRATEGY FILE_COPY" if opts.seed else ""
    _admin(opts, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}{template}")
    return opts.pg_url.rsplit("/", 1)[0] + f"/{name}"


def _flush(path: Path) -> None:
    """Write a copied database to disk before the server starts: otherwise SQLite's first checkpoint
    (an fsync of the database file) waits for gigabytes of the copy's dirty pages, a stall of
    seconds that a database grown in service never has."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def seed_database(opts: Options, existing: int) -> Filled:
    """Fill the seed database once with `existing` cases; every run then starts from a copy of it."""
    url = fresh_database(opts, SEED)
    filled = fill(url, existing)
    print(filled.describe(), flush=True)
    opts.seed = url
    return filled


def seed_size(url: str) -> tuple[int, int]:
    """Cases in a database filled before (--seed-db), and its size in bytes."""
    engine = create_engine(url)
    with engine.connect() as conn:
        cases = conn.execute(text("SELECT count(*) FROM tickets")).scalar() or 0
        size = (Path(url.split("///", 1)[1]).stat().st_size if url.startswith("sqlite") else
                conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)
    engine.dispose()
    return cases, int(size)


def _admin(opts: Options, *statements: str) -> None:
    admin = create_engine(opts.pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for statement in statements:
            conn.execute(text(statement))
    admin.dispose()


@contextmanager
def serving(opts: Options, url: str, sink: Sink, changes: Mapping[str, str] | None = None
            ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`intake serve` on a free port against `url` (config `changes` as for write_config), warmed up;
    stopped (SIGTERM) on leaving."""
    port = free_port()
    folder = Path(tempfile.mkdtemp(dir=opts.tmp))
    config = write_config(folder, url, port, opts.relay_port, changes)
    server = subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "serve"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        warm_up(port, url, sink)
        yield port, server
    finally:
        server.terminate()
        server.wait(30)


def send_all(port: int, mails: list[bytes], clients: int) -> list[float]:
    """Each client sends its share back to back; returns the DATA->250 latencies."""
    chunks = [mails[i::clients] for i in range(clients)]

    def client(chunk: list[bytes]) -> list[float]:
        latencies = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            for raw in chunk:
                latencies.append(_send(smtp, raw))
        return latencies

    with ThreadPoolExecutor(clients) as pool:
        return [lat for part in pool.map(client, chunks) for lat in part]


def send_paced(port: int, mails: list[bytes], rate: float, clients: int) -> tuple[list[float], int]:
    """Mail i is offered at start + i / rate by whichever client is free; returns the DATA->250
    latencies and how many mails started late because every client was still busy."""
    lock = threading.Lock()
    state = {"next": 0, "late": 0}
    start = time.perf_counter() + 0.5

    def client() -> list[float]:
        latencies = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp.ehlo()
            while True:
                with lock:
                    index = state["next"]
                    state["next"] += 1
                if index >= len(mails):
                    return latencies
                wait = start + index / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -LATE_SECONDS:
                    with lock:
                        state["late"] += 1
                latencies.append(_send(smtp, mails[index]))

    with ThreadPoolExecutor(clients) as pool:
        parts = [pool.submit(client) for _ in range(clients)]
        return [lat for part in parts for lat in part.result()], state["late"]


FROM_ADDRESS = re.compile(rb"^From: [^<\r\n]*<([^>]+)>", re.MULTILINE)


def _send(smtp: smtplib.SMTP, raw: bytes) -> float:
    """One mail, its envelope sender the address of its From (as a customer's mail server sends it)."""
    sender = FROM_ADDRESS.search(raw)
    smtp.mail(sender.group(1).decode() if sender else "user@acme.example")
    smtp.rcpt("support@example.com")
    started = time.perf_counter()
    code, _ = smtp.data(raw)
    assert code == 250, code
    return time.perf_counter() - started


def warm_up(port: int, url: str, sink: Sink) -> None:
    """Mail a fresh server before measuring it, and wait until it is processed and delivered: a
    service runs for days, and its first mails after a start prepare what every later one reuses
    (SQLAlchemy's mapper setup and compiled statements, the holiday tables)."""
    settle(port, url, sink, corpus(WARM_UP_MAILS, seed=5))


def settle(port: int, url: str, sink: Sink, mails: list[bytes]) -> None:
    """Send `mails` from one client; return once they are processed and every mail they caused
    reached the relay."""
    with finishing(url, sink) as finished:
        send_all(port, mails, 1)
        processed, delivered = finished(len(mails), time.perf_counter())
    if processed is None or delivered is None:
        raise SystemExit(f"{len(mails)} mails not processed and delivered in time")


Finished = Callable[[int, float], tuple[float | None, float | None]]


@contextmanager
def finishing(url: str, sink: Sink) -> Iterator[Finished]:
    """Notes the last outbox row and the relay's count now, and yields `finished(mails, started)`:
    wait_finished for the mails sent from here on."""
    engine = create_engine(url)
    outbox_before, delivered_before = last_outbox_id(engine), sink.count
    try:
        yield lambda mails, started: wait_finished(engine, mails, sink, delivered_before, started, outbox_before)
    finally:
        engine.dispose()


def last_outbox_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.max(OutboxMail.id))).scalar() or 0


def wait_finished(engine: Engine, mails: int, sink: Sink, delivered_before: int,
                  started: float, outbox_before: int = 0) -> tuple[float | None, float | None]:
    """Seconds from `started` until every mail was processed (no `received` row left, an
    acknowledgment per mail in the outbox) and until every outbox row reached the relay.
    Outbox rows are counted past `outbox_before` (the last id before the run) by primary key,
    so the check costs the same on a database of a million cases as on an empty one."""
    processed = delivered = None
    outbox_rows = 0
    new_rows = OutboxMail.id > outbox_before
    deadline = time.monotonic() + 600
    with engine.connect() as conn:
        while time.monotonic() < deadline and delivered is None:
            if processed is None:
                left = conn.execute(select(func.count()).select_from(InboundMail).where(
                    InboundMail.status == InboundStatus.RECEIVED)).scalar()
                acks = conn.execute(select(func.count()).select_from(OutboxMail).where(
                    new_rows, OutboxMail.kind == "acknowledgment")).scalar() or 0
                if left == 0 and acks >= mails:
                    processed = time.perf_counter() - started
                    outbox_rows = conn.execute(select(func.count()).select_from(OutboxMail).where(new_rows)).scalar() or 0
            if processed is not None and sink.count - delivered_before >= outbox_rows:
                delivered = time.perf_counter() - started
            conn.rollback()
            time.sleep(0.01)
    return processed, delivered


def service_pids(pid: int) -> list[int]:
    """`intake serve` and its processing processes (not multiprocessing's resource tracker)."""
    children = [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    return [pid, *(child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes())]


def cpu_seconds(pid: int) -> list[float]:
    """User + system CPU time each of the service's processes (the door first, then its processing
    processes) used so far: less sensitive to a busy machine than rates."""
    return [process_cpu(each) for each in service_pids(pid)]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds one process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds the whole machine spent busy so far (all cores; idle and I/O wait left out)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS of the service in MiB, summed over its processes (so the peak is
    an upper bound: the processes need not peak at once); "door" and "processing": the VmHWM of
    the door and of its processing processes (summed)."""
    values = {"VmHWM": 0.0, "VmRSS": 0.0, "door": 0.0, "processing": 0.0}
    for each in service_pids(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] += int(rest.split()[0]) / 1024
            if key == "VmHWM":
                values["door" if each == pid else "processing"] += int(rest.split()[0]) / 1024
    return values


def percentile(latencies: list[float], p: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


# The reference machine: the bare loop did 286 mails/s there, and the target is 150.
REFERENCE_BARE_LOOP, REFERENCE_TARGET = 286.0, 150.0


def bare_loop_rate(mails: list[bytes], clients: int, tmp: Path) -> tuple[float, float]:
    """Mails/s of bench/bare_loop.py (aiosmtpd -> mail-parser -> SQLite commit -> 250) in its own
    process, fed like the service by `clients` clients, after the same warm-up; and its CPU seconds
    per mail."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_loop.py"), str(port), str(tmp / "loop.db")])
    try:
        wait_port(port)
        send_all(port, mails[:WARM_UP_MAILS], 1)
        cpu_before, started = process_cpu(server.pid), time.perf_counter()
        send_all(port, mails, clients)
        return len(mails) / (time.perf_counter() - started), (process_cpu(server.pid) - cpu_before) / len(mails)
    finally:
        server.terminate()
        server.wait(30)


def ceilings(mails: list[bytes], clients: int, tmp: Path, pg_url: str | None) -> tuple[dict[str, float], float]:
    """What the pieces alone do on this machine: the bare SMTP loop, parse rates, and one durable
    commit per mail; and the bare loop's CPU seconds per mail."""
    bare_rate, bare_cpu = bare_loop_rate(mails, clients, tmp)
    rates = {"bare SMTP loop (parse, store)": bare_rate}
    started = time.perf_counter()
    for raw in mails:
        mailparser.parse_from_bytes(raw)
    rates["mail-parser parse"] = len(mails) / (time.perf_counter() - started)
    started = time.perf_counter()
    for raw in mails:
        message_from_bytes(raw, policy=policy.default).get_body(("plain", "html"))
    rates["stdlib parse"] = len(mails) / (time.perf_counter() - started)
    sample = mails[:500]
    db = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, raw BLOB)")
    started = time.perf_counter()
    for raw in sample:
        db.execute("BEGIN")
        db.execute("INSERT INTO m (raw) VALUES (?)", (raw,))
        db.execute("COMMIT")
    rates["bare durable SQLite commit"] = len(sample) / (time.perf_counter() - started)
    db.close()
    if pg_url is not None:
        with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as pg:
            pg.execute("CREATE TEMP TABLE m (id serial PRIMARY KEY, raw bytea)")
            pg.commit()
            started = time.perf_counter()
            for raw in sample:
                pg.execute("INSERT INTO m (raw) VALUES (%s)", (raw,))
                pg.commit()
            rates["bare PostgreSQL commit"] = len(sample) / (time.perf_counter() - started)
    return rates, bare_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=2000, help="mails in the full-load run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients in the full-load run")
    parser.add_argument("--rate", type=float, default=50.0, help="mails/s offered in the paced run (0: skip it)")
    parser.add_argument("--paced-mails", type=int, default=500, help="mails in the paced run (0: skip it)")
    parser.add_argument("--paced-clients", type=int, default=8)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="an existing database; the benchmark creates and drops its own beside it")
    seeding = parser.add_mutually_exclusive_group()
    seeding.add_argument("--existing", type=int, default=0, metavar="N",
                         help="start each run on a database holding N existing cases (bench/fill.py)")
    seeding.add_argument("--seed-db", metavar="URL", help="start each run on a copy of this database, filled before "
                         "with bench/fill.py (instead of --existing)")
    args = parser.parse_args()
    mails = corpus(args.mails)
    sink = Sink()
    sink.start()
    opts = Options(args.database, args.pg_url, Path(tempfile.mkdtemp(prefix="intake-bench-")), sink.port)
    filled, existing = None, "none"
    try:
        if args.seed_db:
            opts.seed = args.seed_db
            cases, size = seed_size(args.seed_db)
            existing = f"{cases:,} ({size / 2**20:,.0f} MiB, copied from {args.seed_db})"
        elif args.existing:
            filled = seed_database(opts, args.existing)
            existing = (f"{filled.cases:,} ({filled.size_bytes / 2**20:,.0f} MiB, filled in {filled.seconds:.0f} s)")
        load_before = os.getloadavg()
        url = fresh_database(opts, LOAD)
        with serving(opts, url, sink) as (port, server), finishing(url, sink) as finished:
            cpu_before, others_before = cpu_seconds(server.pid), (process_cpu(sink.pid), time.process_time(), machine_cpu())
            started = time.perf_counter()
            latencies = send_all(port, mails, args.clients)
            accepted = time.perf_counter() - started
            processed, delivered = finished(len(mails), started)
            cpu_each = [after - before for after, before in zip(cpu_seconds(server.pid), cpu_before)]
            relay_cpu, clients_cpu, machine = (after - before for after, before in zip(
                (process_cpu(sink.pid), time.process_time(), machine_cpu()), others_before))
            busy_share = machine / ((time.perf_counter() - started) * (os.cpu_count() or 1))
            cpu = sum(cpu_each)
            rss = memory_mb(server.pid)["VmHWM"]
        paced: tuple[list[float], int] | None = None
        if args.rate > 0 and args.paced_mails > 0:
            url = fresh_database(opts, PACED)
            with serving(opts, url, sink) as (port, _), finishing(url, sink) as finished:
                paced = send_paced(port, corpus(args.paced_mails, seed=11), args.rate, args.paced_clients)
                lags = finished(args.paced_mails, time.perf_counter())
    finally:
        sink.stop()
        if opts.database == "postgresql":
            _admin(opts, *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                           for name in (LOAD, PACED, *([SEED] if filled else []))))
        elif opts.seed:             # a filled database is gigabytes (a --seed-db file stays)
            for name in (LOAD, PACED, SEED):
                for suffix in ("", "-wal", "-shm"):
                    (opts.tmp / f"{name}.db{suffix}").unlink(missing_ok=True)
    load_after = os.getloadavg()
    rates, bare_cpu = ceilings(mails, args.clients, opts.tmp, args.pg_url if args.database == "postgresql" else None)

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"database: {args.database}; full load: {len(mails)} mails from {args.clients} clients; "
          f"existing cases: {existing}")
    print(f"accepted:  {len(mails) / accepted:8.1f} mails/s (DATA->250 p50 {percentile(latencies, 0.5):.1f} ms, "
          f"p99 {percentile(latencies, 0.99):.1f} ms)")
    print(f"processed: {len(mails) / processed:8.1f} mails/s (case + acknowledgment in the outbox)" if processed
          else "processed: did not finish")
    print(f"delivered: {len(mails) / delivered:8.1f} mails/s (every outbox row at the relay: acknowledgments, "
          f"staff and on-call notifications)" if delivered else f"delivered: {sink.count} mails reached the relay")
    per_mail = [each / len(mails) * 1000 for each in cpu_each]
    print(f"intake serve: {cpu / len(mails) * 1000:.1f} ms CPU per mail (receive, process, deliver; the door "
          f"{per_mail[0]:.1f} ms, processing {' + '.join(f'{each:.1f}' for each in per_mail[1:])} ms; "
          f"{len(mails) / cpu:.0f} mails per CPU-second); peak RSS {rss:.0f} MiB (the processes' peaks added)")
    outside = (relay_cpu + clients_cpu) / len(mails) * 1000
    print(f"CPU per mail, same run: intake serve {cpu / len(mails) * 1000:.1f} ms, the relay "
          f"{relay_cpu / len(mails) * 1000:.1f} ms, the clients (this process) {clients_cpu / len(mails) * 1000:.1f} ms, "
          f"the rest of the machine {(machine - cpu - relay_cpu - clients_cpu) / len(mails) * 1000:.1f} ms; "
          f"the {os.cpu_count()} cores were {busy_share:.0%} busy until every mail was delivered")
    if paced is not None:
        paced_latencies, late = paced
        print(f"paced: {len(paced_latencies)} mails offered at {args.rate:g}/s from {args.paced_clients} clients: "
              f"DATA->250 p50 {percentile(paced_latencies, 0.5):.1f} ms, p99 {percentile(paced_latencies, 0.99):.1f} ms, "
              f"max {max(paced_latencies) * 1000:.1f} ms; {late} started late")
        behind = ", ".join(f"{what} {seconds:.2f} s" if seconds is not None else f"{what} did not finish"
                           for what, seconds in zip(("processed", "delivered"), lags))
        print(f"paced: after the last answer, every mail was {behind} later (near 0: the service keeps up "
              f"with {args.rate:g}/s)")
    rate = len(mails) / processed if processed else 0.0
    print("ceilings (same machine, same run; processed rate as a fraction of each):")
    for name, ceiling in rates.items():
        unit = "commits/s" if "commit" in name else "mails/s"
        print(f"  {name:31s} {ceiling:8.0f} {unit:9s} processed = {rate / ceiling:6.1%}")
    bare = rates["bare SMTP loop (parse, store)"]
    share = REFERENCE_TARGET / REFERENCE_BARE_LOOP
    print(f"target scaled to this machine: {REFERENCE_TARGET:g} of the reference bare loop's {REFERENCE_BARE_LOOP:g} "
          f"mails/s is {share:.1%}; {share:.1%} of this bare loop is {share * bare:.0f} mails/s "
          f"(processed here: {rate:.1f}, {rate / bare:.1%})")
    budget = (os.cpu_count() or 1) / (share * bare) * 1000
    print(f"the target's CPU budget: {os.cpu_count()} cores at {share * bare:.0f} mails/s give {budget:.1f} ms per mail; "
          f"the relay and the clients took {outside:.1f} ms per mail here, which leaves {budget - outside:.1f} ms for "
          f"intake serve (it used {cpu / len(mails) * 1000:.1f} ms; the bare loop {bare_cpu * 1000:.1f} ms, with no "
          f"answer to render or deliver)")


if __name__ == "__main__":
    main()
