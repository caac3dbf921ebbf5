"""Memory benchmark: the peak RSS of `intake serve` against the size of one mail's attachment.

The target (performance issue): peak RSS does not grow with attachment size beyond one message.
Three parts:

1. **per size**: for each attachment size (default 1, 5, 10 and 20 MB; random, so incompressible,
   base64 on the wire: 1.37 times the size), a fresh `intake serve` on a fresh database takes
   20 small mails (warm-up, as in `bench/ingest.py`), then one mail with one attachment of
   that size; once the mail is processed and its outbox rows delivered to a capture relay (a
   process of its own, `bench.ingest.Sink`), the server's VmHWM (peak RSS) and VmRSS (from /proc/PID/status) are read,
   summed over its processes (the door and the processing processes).
   Printed: the peak's growth over the warm-up peak, and that growth as a multiple of the
   message's size on the wire, in all and in the door and the processing processes apart; and
   "together": the largest sum of the processes' VmRSS sampled every millisecond while the mail
   was in flight, over the sum at rest (what the service held at one time: the door and the
   processing process hold the mail one after the other, and VmHWM adds up both peaks).
2. **repeat**: one fresh server takes `--repeat` (20) mails of `--repeat-mb` (5) MB one after
   the other; VmHWM after the 1st, 2nd, 5th, 10th and last mail and VmRSS at the end show
   whether memory accumulates across mails.
3. **where** (`--where`): the largest mail again, in this process with tracemalloc (Python
   allocations only; SQLite's and the C libraries' own buffers are not traced), the real SMTP
   listener and pipeline, sent from a separate process: the peak of the SMTP DATA phase (what
   aiosmtpd holds until the `handle_DATA` hook) and the extra peak of each pipeline stage over
   what was allocated when it started (store, parse, process with its flush and commit), as
   multiples of the message size.

The shipped `smtp.max_message_bytes` (25 MiB) refuses the 20 MB attachment's 27.5 MB on the
wire, and `limits.max_attachment_bytes` (10 MiB) would leave it out: the benchmark raises
them to 64 MiB and 32 MiB in its config, so every size is received and stored. Run on demand:

    .venv/bin/python bench/memory.py [--sizes 1,5,10,20] [--repeat 20] [--repeat-mb 5]
                                     [--database sqlite|postgresql] [--pg-url URL] [--where]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.ingest import (WARM_UP_MAILS, Options, Sink, _admin, corpus, free_port, fresh_database,  # noqa: E402
                          memory_mb, serving, settle, write_config)

MB = 1_000_000
MAX_MESSAGE_BYTES = 64 * 2**20
MAX_ATTACHMENT_BYTES = 32 * 2**20


# The shipped limits refuse (25 MiB) or drop (10 MiB) the largest attachments measured here.
LIMITS = {"max_message_bytes = 26214400": f"max_message_bytes = {MAX_MESSAGE_BYTES}",
          "max_attachment_bytes = 10485760": f"max_attachment_bytes = {MAX_ATTACHMENT_BYTES}"}


def attachment_mail(size: int, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"User {n} <user{n % 97}@acme.example>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"[SEV-3] Logs from the failing node ({size / MB:g} MB) #{n}"
    msg["Message-ID"] = f"<memory-{n}-{size}-{time.time_ns()}@acme.example>"
    msg.set_content("The logs of the failing node are attached.\n")
    msg.add_attachment(os.urandom(size), maintype="application", subtype="octet-stream", filename=f"node-{n}.log.gz")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def per_size(opts: Options, sink: Sink, sizes: list[int]) -> list[tuple[int, int, dict[str, float], dict[str, float]]]:
    results = []
    for size in sizes:
        raw = attachment_mail(size, 1)
        url = fresh_database(opts, f"intake_bench_memory_{os.getpid()}_{size // MB}")
        with serving(opts, url, sink, LIMITS) as (port, server):
            before = memory_mb(server.pid)
            with sampled_peak(server.pid) as together:
                settle(port, url, sink, [raw])
            results.append((size, len(raw), before, {**memory_mb(server.pid), "together": together[0]}))
        print(f"  {size / MB:g} MB done", file=sys.stderr, flush=True)
    return results


@contextmanager
def sampled_peak(pid: int) -> Iterator[list[float]]:
    """The largest sum of the service's processes' VmRSS seen (MiB, in the list yielded once the
    block ends), read every millisecond or so: what the service held at one time, where VmHWM
    adds up peaks the processes may reach at different times."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], memory_mb(pid)["VmRSS"])
            except (FileNotFoundError, ProcessLookupError):     # a process came or went between reads
                pass
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def repeat(opts: Options, sink: Sink, count: int, size: int
           ) -> tuple[int, dict[str, float], list[tuple[int, dict[str, float]]]]:
    marks = {1, 2, 5, 10, count}
    seen = []
    url = fresh_database(opts, f"intake_bench_memory_{os.getpid()}_repeat")
    with serving(opts, url, sink, LIMITS) as (port, server):
        before = memory_mb(server.pid)
        wire = 0
        for n in range(1, count + 1):
            raw = attachment_mail(size, n)
            wire = len(raw)
            settle(port, url, sink, [raw])
            if n in marks:
                seen.append((n, memory_mb(server.pid)))
    return wire, before, seen


def where(size: int, tmp: Path) -> list[tuple[str, float, float]]:
    """tracemalloc peaks by stage for one mail through the real listener and pipeline in this process."""
    from concurrent.futures import ThreadPoolExecutor

    import intake.pipeline as pipeline
    from intake.config import load_config
    from intake.processor import Processor
    from intake.service import build_services
    from intake.smtp_listener import IntakeHandler, start_listener
    from models.migrate import upgrade

    url = f"sqlite:///{tmp / 'where.db'}"
    upgrade(url)
    port = free_port()
    services = build_services(load_config(write_config(tmp, url, port, free_port(), LIMITS)))
    for raw in corpus(3, seed=4):       # imports, templates, caches: not part of the mail's cost
        pipeline.ingest(services, raw, pipeline.Envelope("smtp", "support@example.com", "u@acme.example",
                                                         ("support@example.com",)))
    peaks = Peaks()
    original_data = IntakeHandler.handle_DATA

    async def handle_data(self, server, session, envelope):  # type: ignore[no-untyped-def]
        peaks.mark("SMTP DATA received (aiosmtpd, until handle_DATA)")
        return await original_data(self, server, session, envelope)

    IntakeHandler.handle_DATA = handle_data     # type: ignore[method-assign]
    patched = {"store": pipeline.store, "parse_mail": pipeline.parse_mail, "process": pipeline.process}
    pipeline.store = peaks.traced("store (sha256, INSERT of the raw bytes, commit)", pipeline.store)
    pipeline.parse_mail = peaks.traced("parse_mail (mail-parser; large bodies cut out)", pipeline.parse_mail)
    pipeline.process = peaks.traced("process (apply, flush, commit; cut bodies decoded)", pipeline.process)
    executor = ThreadPoolExecutor(1)
    processor = Processor()
    processor.start()
    listener = start_listener(services, executor, processor, "127.0.0.1", port)
    mail_file = tmp / "where.eml"
    mail_file.write_bytes(attachment_mail(size, 99))
    client = ("import smtplib, sys; s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=600); "
              "s.sendmail('u@acme.example', ['support@example.com'], open(sys.argv[2], 'rb').read()); s.quit()")
    tracemalloc.start()
    try:
        peaks.enter("whole mail (DATA to processed)")
        subprocess.run([sys.executable, "-c", client, str(port), str(mail_file)], check=True)
        processor.wait_idle(600)
        peaks.leave()
    finally:
        tracemalloc.stop()
        listener.stop()
        processor.stop()
        executor.shutdown()
        IntakeHandler.handle_DATA = original_data   # type: ignore[method-assign]
        for name, function in patched.items():
            setattr(pipeline, name, function)
    order = ["SMTP DATA", "store", "parse_mail", "process", "whole"]
    return sorted(peaks.results, key=lambda r: next(i for i, p in enumerate(order) if r[0].startswith(p)))


class Peaks:
    """tracemalloc peaks of nested stages: each stage's peak over what was allocated when it began
    (an inner stage resets tracemalloc's peak, so the outer ones keep theirs as a running max)."""

    def __init__(self) -> None:
        self.frames: list[list[object]] = []            # [name, start, running peak]
        self.results: list[tuple[str, float, float]] = []   # name, peak over start, held at the end

    def enter(self, name: str) -> None:
        current, peak = tracemalloc.get_traced_memory()
        for frame in self.frames:
            frame[2] = max(frame[2], peak)  # type: ignore[call-overload]
        self.frames.append([name, current, current])
        tracemalloc.reset_peak()

    def leave(self) -> None:
        current, peak = tracemalloc.get_traced_memory()
        name, start, running = self.frames.pop()
        top = max(running, peak)  # type: ignore[call-overload]
        for frame in self.frames:
            frame[2] = max(frame[2], top)  # type: ignore[call-overload]
        self.results.append((str(name), top - start, current - start))  # type: ignore[operator]

    def mark(self, name: str) -> None:
        """The peak so far of the outermost stage (nothing inside it reset the peak yet)."""
        current, peak = tracemalloc.get_traced_memory()
        start = self.frames[0][1] if self.frames else 0
        self.results.append((name, peak - start, current - start))  # type: ignore[operator]

    def traced(self, name: str, function):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()
        return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,5,10,20", help="attachment sizes in MB (10^6 bytes), comma-separated")
    parser.add_argument("--repeat", type=int, default=20, help="mails in the repeat run (0: skip it)")
    parser.add_argument("--repeat-mb", type=float, default=5)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--where", action="store_true", help="also break the largest mail's peak down by stage")
    args = parser.parse_args()
    sizes = [int(float(s) * MB) for s in args.sizes.split(",")]
    sink = Sink()
    sink.start()
    opts = Options(args.database, args.pg_url, Path(tempfile.mkdtemp(prefix="intake-memory-")), sink.port)
    load_before = os.getloadavg()
    names = [f"intake_bench_memory_{os.getpid()}_{size // MB}" for size in sizes] + [f"intake_bench_memory_{os.getpid()}_repeat"]
    try:
        results = per_size(opts, sink, sizes)
        repeated = repeat(opts, sink, args.repeat, int(args.repeat_mb * MB)) if args.repeat else None
    finally:
        sink.stop()
        if opts.database == "postgresql":
            _admin(opts, *(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)" for name in names))
    stages = where(max(sizes), opts.tmp) if args.where else None
    load_after = os.getloadavg()

    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"database: {args.database}; smtp.max_message_bytes {MAX_MESSAGE_BYTES}, limits.max_attachment_bytes "
          f"{MAX_ATTACHMENT_BYTES} (raised for the benchmark); {WARM_UP_MAILS} small mails first on each server")
    print("per size (fresh server each): peak RSS (VmHWM) after warm-up -> after the mail processed and delivered")
    print(f"  {'attachment':>10} {'on the wire':>12} {'VmHWM before':>13} {'VmHWM after':>12} {'growth':>9} "
          f"{'growth / wire':>14} {'VmRSS after':>12}   peak growth: door, processing; together")
    for size, wire, before, after in results:
        growth = after["VmHWM"] - before["VmHWM"]
        print(f"  {size / MB:8g} MB {wire / 2**20:8.1f} MiB {before['VmHWM']:9.0f} MiB {after['VmHWM']:8.0f} MiB "
              f"{growth:5.0f} MiB {growth * 2**20 / wire:13.1f}x {after['VmRSS']:8.0f} MiB   "
              + ", ".join(f"{(after[p] - before[p]) * 2**20 / wire:.1f}x" for p in ("door", "processing"))
              + f"; {(after['together'] - before['VmRSS']) * 2**20 / wire:.1f}x")
    if len(results) > 1:
        (_, wire_a, before_a, after_a), (_, wire_b, before_b, after_b) = results[0], results[-1]

        def slope(key: str, base: str) -> float:
            grown_a, grown_b = after_a[key] - before_a[base], after_b[key] - before_b[base]
            return (grown_b - grown_a) * 2**20 / (wire_b - wire_a)
        print(f"  growth per byte on the wire, from the smallest mail to the largest: VmHWM added up "
              f"{slope('VmHWM', 'VmHWM'):.2f}, together {slope('together', 'VmRSS'):.2f}")
    if repeated:
        wire, before, seen = repeated
        print(f"repeat: {args.repeat} mails with a {args.repeat_mb:g} MB attachment ({wire / 2**20:.1f} MiB on the wire) "
              f"on one server; VmHWM after warm-up {before['VmHWM']:.0f} MiB")
        print("  " + ", ".join(f"after mail {n}: VmHWM {s['VmHWM']:.0f} MiB / VmRSS {s['VmRSS']:.0f} MiB"
                               for n, s in seen))
    if stages:
        biggest = max(sizes)
        wire = len(attachment_mail(biggest, 99))
        print(f"where ({biggest / MB:g} MB attachment, {wire / 2**20:.1f} MiB on the wire; tracemalloc in process, "
              f"Python allocations only): peak over the stage's start / still held at its end")
        for name, peak, held in stages:
            print(f"  {name:48s} {peak / 2**20:7.0f} MiB = {peak / wire:4.1f}x   held {held / 2**20:6.0f} MiB")


if __name__ == "__main__":
    main()
