"""The benchmarks in bench/ still run against the code they measure: each at a tiny size, checked
for its report lines, never for its figures (speed is measured by hand, docs/performance.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_ingest_over_smtp_reports_rates_latency_and_ceilings() -> None:
    out = run_bench("bench/ingest.py", "--mails", "20", "--clients", "2", "--paced-mails", "20", "--rate", "50")
    for line in ("accepted:", "processed:", "delivered:", "intake serve:", "paced: 20 mails offered at 50/s",
                 "every mail was processed", "bare SMTP loop", "mail-parser parse", "bare durable SQLite commit",
                 "target scaled to this machine", "CPU per mail, same run: intake serve", "the target's CPU budget"):
        assert line in out, out


def test_in_process_delivery_and_query_plans_run(tmp_path: Path) -> None:
    assert "5 new-case mails:" in run_bench("bench/inprocess.py", "--mails", "5")
    assert "delivery per row" in run_bench("bench/delivery.py", "--mails", "5", "--rounds", "1")
    url = f"sqlite:///{tmp_path / 'filled.db'}"
    assert "filled 100 existing cases" in run_bench("bench/fill.py", url, "100")
    assert "distinct SELECT/UPDATE/DELETE statements" in run_bench("bench/plans.py", "--database-url", url, "--all")


def test_memory_reports_each_size_and_the_stages() -> None:
    out = run_bench("bench/memory.py", "--sizes", "0.5,1", "--repeat", "2", "--repeat-mb", "1", "--where")
    for line in ("0.5 MB", "1 MB", "together", "growth per byte on the wire", "repeat: 2 mails", "SMTP DATA received",
                 "parse_mail", "whole mail"):
        assert line in out, out


def test_ingest_runs_on_postgresql(pg_database: str) -> None:     # the fixture: PostgreSQL is there (CI: must be)
    out = run_bench("bench/ingest.py", "--mails", "20", "--clients", "2", "--rate", "0", "--database", "postgresql",
                    "--pg-url", PG_ADMIN_URL)
    assert "processed:" in out and "bare PostgreSQL commit" in out, out
