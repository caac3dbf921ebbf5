"""In-process ingest timing: `intake.pipeline.ingest` called directly, no SMTP, no other threads.

Stores and processes the benchmark corpus (bench/ingest.py) on a fresh, migrated database and
prints wall and CPU milliseconds per new-case mail. `--profile` records one run with
pyinstrument (the `bench` extra: `pip install -e .[bench]`) and writes its text tree.

    .venv/bin/python bench/inprocess.py [--mails 400] [--database-url URL] [--profile FILE] [--existing N]

`--existing N` first fills the database with N existing cases (bench/fill.py; the time and size
are printed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.fill import prepared_database  # noqa: E402
from bench.ingest import corpus, write_config  # noqa: E402
from intake.config import load_config  # noqa: E402
from intake.pipeline import ingest  # noqa: E402
from intake.service import build_services  # noqa: E402
from intake.store import Envelope  # noqa: E402
from models import Outcome  # noqa: E402

ENVELOPE = Envelope(door="smtp", mailbox="support@example.com", sender="u@acme.example",
                    recipients=("support@example.com",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mails", type=int, default=400)
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--profile", type=Path, help="record the run with pyinstrument, write the tree here")
    parser.add_argument("--existing", type=int, default=0, metavar="N",
                        help="fill the database with N existing cases first (bench/fill.py)")
    args = parser.parse_args()
    tmp, url = prepared_database("inprocess", args.database_url, args.existing)
    services = build_services(load_config(write_config(tmp, url, 2525, 2526)))
    ingest(services, corpus(1, seed=99)[0], ENVELOPE)       # compiles the templates, fills the caches
    mails = corpus(args.mails)
    profiler = None
    if args.profile:
        from pyinstrument import Profiler
        profiler = Profiler(interval=0.0005)
        profiler.start()
    times = []
    cpu_started, started = time.process_time(), time.perf_counter()
    for raw in mails:
        begun = time.perf_counter()
        result = ingest(services, raw, ENVELOPE)
        times.append(time.perf_counter() - begun)
        assert result.outcome is Outcome.TICKET, result
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=False, color=False))
    times.sort()
    n = len(mails)
    print(f"{n} new-case mails: {wall / n * 1000:.2f} ms wall, {cpu / n * 1000:.2f} ms CPU per mail "
          f"(p50 {times[n // 2] * 1000:.2f} ms, p99 {times[int(n * 0.99)] * 1000:.2f} ms); {n / wall:.0f} mails/s"
          + (" (profiled)" if profiler else ""))


if __name__ == "__main__":
    main()
