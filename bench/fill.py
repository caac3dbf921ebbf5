"""Fill a fresh, migrated database with N existing cases, as the service would have written them.

Used by `bench/ingest.py --existing N`, `bench/inprocess.py --existing N` and `bench/plans.py`;
also runs alone:

    .venv/bin/python bench/fill.py DATABASE_URL N [--seed 1]

Each case gets the rows one new case writes (intake/apply.py, intake/store.py,
notifications/outbox.py, intake/staff.py): its inbound mail row (processed, outcome `ticket`,
a distinct Message-ID and SHA-256) and its small raw bytes, the ticket, the requester as a
participant, the customer message and the acknowledgment's copy, the `created` and `routed`
events, the acknowledgment and staff notification outbox rows (plus the on-call notice for
SEV-1), sent, and the staff member's reply token; cases that left `open` also get a
`status_changed` event. Cases are spread over 3 years (ids rising with time), 3,000
organizations of very different sizes (Zipf-like: the largest, Acme, the benchmark corpus's
organization, has about 8 % of all cases, Globex, an `advanced` tier one with an incident
allowance in bench/plans.py, about 4 %) and 10 to 500 senders each.

Older cases are closed; of the last 14 days' cases some are open, pending or resolved, in the
state the sweeps leave them in: every stored due time (`first_response_due`, `sla_warn_at`,
`next_followup_at`, `next_sev1_reminder_at`) that has not passed lies at least 6 hours ahead,
and the ones that passed were acted on (`sla_warned_at`, `sla_breached_at` set). So a sweep
during the benchmark finds the indexes full but nothing due, and the outbox worker finds no
pending row.

Fast paths: SQLite through plain sqlite3 `executemany` in one transaction (journal off and
`synchronous=OFF` while filling, WAL again after); PostgreSQL through `COPY` in one
transaction with foreign-key triggers off (`session_replication_role = replica`: the rows are
consistent by construction), the id sequences moved past the rows, then `VACUUM ANALYZE` (what
autovacuum would have done on a database that grew to this size). Batches of 10,000 cases.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import accumulate
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.migrate import upgrade  # noqa: E402

BATCH = 10_000
SPAN = timedelta(days=3 * 365)
RECENT = timedelta(days=14)
AHEAD = timedelta(hours=6)          # the nearest stored due time: nothing comes due during a benchmark
ORGANIZATIONS = 3000
SUPPORT = "support@example.com"
STAFF = "alice@example.com"
ONCALL = "oncall@example.com"
DUE = {1: timedelta(hours=2), 2: timedelta(hours=4), 3: timedelta(days=1), 4: timedelta(days=2)}
ROUTED = {True: ('["critical-to-oncall"]', "{}"), False: ("[]", '{"critical-to-oncall": "severity"}')}
SUBJECTS = ("Replication lag on prod", "Login fails for some users", "Export is slow", "Fråga om licensen",
            "Disk usage alert", "Invoice question", "API returns 500", "Backup did not run")

COLUMNS = {
    "tickets": ("id", "subject", "severity", "status", "queue", "assignee", "tags", "requester", "requester_name",
                "organization", "tier", "mailbox", "reply_token", "created_at", "updated_at", "first_response_due",
                "first_response_at", "resolved_at", "closed_at", "previous_ticket_id", "notify", "sla_warn_at",
                "sla_warned_at", "sla_breached_at", "next_followup_at", "followup_attempts", "next_sev1_reminder_at"),
    "inbound_mail": ("id", "received_at", "door", "mailbox", "envelope_sender", "envelope_recipients",
                     "sha256", "message_id", "status", "outcome", "reason", "sender", "subject", "ticket_id",
                     "processed_at", "auto_answer"),
    "inbound_raw": ("inbound_id", "raw"),
    "participants": ("id", "ticket_id", "address", "name", "role"),
    "messages": ("id", "ticket_id", "inbound_id", "direction", "author", "kind", "subject", "body_text",
                 "message_id", "created_at"),
    "events": ("id", "ticket_id", "kind", "at", "actor", "data"),
    "outbox": ("id", "dedupe_key", "kind", "ticket_id", "inbound_id", "recipient", "recipients", "sender",
               "automatic", "message_id", "subject", "raw", "status", "attempts", "next_attempt_at", "created_at",
               "sent_at"),
    "staff_tokens": ("id", "ticket_id", "staff_address", "token_hash", "created_at"),
}


@dataclass(frozen=True)
class Organization:
    name: str
    domain: str
    tier: str
    senders: int


def organizations(rng: random.Random) -> tuple[list[Organization], list[float]]:
    """Acme (the corpus's organization, 500 senders) first and largest, Globex (advanced tier) second,
    then Org-0003 ...; weights 1/rank^0.9."""
    orgs = [Organization("Acme", "acme.example", "enterprise", 500),
            Organization("Globex", "globex.example", "advanced", 200)]
    for rank in range(3, ORGANIZATIONS + 1):
        orgs.append(Organization(f"Org-{rank:04d}", f"org{rank:04d}.example", rng.choice(("enterprise", "advanced")),
                                 max(10, int(500 / rank ** 0.5))))
    weights = [1 / rank ** 0.9 for rank in range(1, len(orgs) + 1)]
    return orgs, list(accumulate(weights))


class Rows:
    """One batch of rows, per table, as tuples in COLUMNS order (timestamps already as text)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[tuple[object, ...]]] = {name: [] for name in COLUMNS}


def generate(n: int, now: datetime, stamp: Callable[[datetime], str], seed: int = 1) -> Iterator[Rows]:
    rng = random.Random(seed)
    orgs, cumulative = organizations(rng)
    start = now - SPAN
    step = (SPAN - timedelta(hours=1)) / max(n, 1)
    event_id = outbox_id = 0
    rows = Rows()
    for i in range(1, n + 1):
        org = rng.choices(orgs, cum_weights=cumulative)[0]
        user = rng.randrange(org.senders)
        requester, name = f"user{user}@{org.domain}", f"User {user}"
        severity = rng.choices((1, 2, 3, 4), (5, 20, 45, 30))[0]
        created = start + step * i + timedelta(seconds=rng.random() * 60)
        received = created - timedelta(milliseconds=30)
        subject = f"[SEV-{severity}] {rng.choice(SUBJECTS)} #{i}"
        queue, rule = ("oncall", "critical-to-oncall") if severity == 1 else ("triage", "default")
        notify = '["oncall@example.com"]' if severity == 1 else "[]"
        due = created + DUE[severity]
        status, answered_at, resolved_at, closed_at = _lifecycle(rng, now, created, due)
        warn_at = warned = breached = followup_at = reminder_at = None
        if status == "open" and answered_at is None:
            if due <= now:                      # the sweeps warned and reported the breach already
                warned, breached = created + (due - created) * 0.75, due
            else:
                warn_at = max(created + (due - created) * 0.75, now + AHEAD)
        if status == "open" and severity == 1:
            reminder_at = now + AHEAD + timedelta(seconds=rng.random() * 4 * 3600)
        if status == "pending":
            followup_at = now + AHEAD + timedelta(seconds=rng.random() * 3 * 86400)
        updated = closed_at or resolved_at or answered_at or created
        token = base64.b32encode(rng.randbytes(10)).decode().lower()
        s = stamp
        rows.tables["tickets"].append((
            i, subject, severity, status, queue, None, "[]", requester, name, org.name, org.tier, SUPPORT, token,
            s(created), s(updated), s(due), _opt(s, answered_at), _opt(s, resolved_at), _opt(s, closed_at), None,
            notify, _opt(s, warn_at), _opt(s, warned), _opt(s, breached), _opt(s, followup_at), 0,
            _opt(s, reminder_at)))
        message_id = f"{rng.getrandbits(64):016x}.{i}@{org.domain}"
        raw = (f"From: {name} <{requester}>\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n"
               f"Date: {created:%d %b %Y %H:%M:%S} +0000\r\n\r\nThe service answers slowly since the upgrade.\r\n"
               ).encode()
        rows.tables["inbound_mail"].append((
            i, s(received), "smtp", SUPPORT, requester, '["support@example.com"]', hashlib.sha256(raw).hexdigest(),
            message_id, "processed", "ticket", rule, requester, subject, i, s(created), True))
        rows.tables["inbound_raw"].append((i, raw))
        rows.tables["participants"].append((i, i, requester, name, "requester"))
        ack_id = f"{rng.getrandbits(128):032x}.{i + 1_700_000_000}@example.com"
        ack_subject = f"[CASE-{i}] {subject}"
        rows.tables["messages"].append((2 * i - 1, i, i, "in", requester, "customer", subject,
                                        "The service answers slowly since the upgrade.", message_id, s(received)))
        rows.tables["messages"].append((2 * i, i, None, "out", SUPPORT, "acknowledgment", ack_subject,
                                        f"Hello {name},\n\nThank you for contacting Example Support. Reference: "
                                        f"CASE-{i}.\n", ack_id, s(created)))
        event_id += 1
        rows.tables["events"].append((
            event_id, i, "created", s(created), requester,
            f'{{"rule": "{rule}", "severity": {severity}, "tag": "tag \\"[SEV-{severity}]\\" -> level {severity}", '
            f'"tags_seen": ["[SEV-{severity}]"], "queue": "{queue}", "due": "{due.isoformat()}+00:00", "previous": null}}'))
        event_id += 1
        rows.tables["events"].append((
            event_id, i, "routed", s(created), "system",
            f'{{"rule": "{rule}", "matched": {ROUTED[severity == 1][0]}, "not_matched": {ROUTED[severity == 1][1]}, '
            f'"queue": "{queue}", "assignee": null, "tags": [], "notify": {notify}}}'))
        if status != "open":
            event_id += 1
            changed = closed_at or resolved_at or updated
            rows.tables["events"].append((
                event_id, i, "status_changed", s(changed), STAFF,
                f'{{"from": "open", "to": "{status}", "why": "staff command"}}'))
        sent = s(created + timedelta(seconds=2))
        lease = s(created + timedelta(minutes=5))
        outgoing = [("acknowledgment", f"acknowledgment:{i}", requester, True, ack_id, ack_subject)]
        outgoing.append(("staff_notification", f"staff_notification:{i}:new_case:{STAFF}", STAFF, False,
                         f"{rng.getrandbits(128):032x}.{i + 1_700_000_000}@example.com",
                         f"[CASE-{i}] SEV-{severity} {subject}"))
        if severity == 1:
            outgoing.append(("staff_notification", f"staff_notification:{i}:new_case:{ONCALL}", ONCALL, False,
                             f"{rng.getrandbits(128):032x}.{i + 1_700_000_000}@example.com",
                             f"[CASE-{i}] SEV-1 {subject}"))
        for kind, key, to, automatic, out_id, out_subject in outgoing:
            outbox_id += 1
            out_raw = (f"From: {SUPPORT}\r\nTo: {to}\r\nSubject: {out_subject}\r\nMessage-ID: <{out_id}>\r\n"
                       f"In-Reply-To: <{message_id}>\r\n\r\nCASE-{i}\r\n").encode()
            rows.tables["outbox"].append((
                outbox_id, key, kind, i, i, to, f'["{to}"]', SUPPORT, automatic, out_id, out_subject, out_raw, "sent", 1,
                lease, s(created), sent))
        rows.tables["staff_tokens"].append((i, i, STAFF, f"{rng.getrandbits(256):064x}", s(created)))
        if i % BATCH == 0 or i == n:
            yield rows
            rows = Rows()


def _lifecycle(rng: random.Random, now: datetime, created: datetime,
               due: datetime) -> tuple[str, datetime | None, datetime | None, datetime | None]:
    """status, first response, resolved, closed: recent cases in every state, older ones closed."""
    answered = created + (due - created) * rng.uniform(0.1, 1.3)
    age = now - created
    if age > RECENT:
        status = "closed" if rng.random() < 0.99 else "resolved"
    else:
        status = rng.choices(("open", "pending", "resolved", "closed"), (40, 20, 15, 25))[0]
    if status == "open":
        if rng.random() < 0.5 or answered > now:
            # unanswered; one whose warning would come due within AHEAD counts as answered instead
            if due <= now or created + (due - created) * 0.75 >= now + AHEAD:
                return status, None, None, None
        return status, min(answered, now), None, None
    answered = min(answered, now - timedelta(minutes=1))
    done = min(answered + (now - answered) * rng.uniform(0.05, 0.5), answered + timedelta(days=10))
    if status == "pending":
        return status, answered, None, None
    if status == "resolved":
        return status, answered, done, None
    return status, answered, done, min(done + timedelta(days=rng.uniform(0, 7)), now - timedelta(seconds=1))


def _opt(stamp: Callable[[datetime], str], value: datetime | None) -> str | None:
    return None if value is None else stamp(value)


def _sqlite_stamp(value: datetime) -> str:
    return value.isoformat(" ", "microseconds")         # as UTCDateTime stores it on SQLite (naive UTC)


def _pg_stamp(value: datetime) -> str:
    return value.isoformat(" ", "microseconds") + "+00"


@dataclass(frozen=True)
class Filled:
    cases: int
    rows: int
    seconds: float
    size_bytes: int

    def describe(self) -> str:
        return (f"filled {self.cases:,} existing cases ({self.rows:,} rows) in {self.seconds:.1f} s "
                f"({self.cases / self.seconds:,.0f} cases/s); database size {self.size_bytes / 2**20:,.0f} MiB")


def prepared_database(name: str, url: str | None, existing: int) -> tuple[Path, str]:
    """A scratch folder and a migrated database (`url`, else a new SQLite file in the folder) holding
    `existing` cases: the start of the in-process benchmarks."""
    tmp = Path(tempfile.mkdtemp(prefix=f"intake-{name}-"))
    url = url or f"sqlite:///{tmp / f'{name}.db'}"
    upgrade(url)
    if existing:
        print(fill(url, existing, migrate=False).describe(), flush=True)
    return tmp, url


def fill(url: str, n: int, seed: int = 1, migrate: bool = True) -> Filled:
    """Migrate `url` (an empty database) and add `n` existing cases; returns what it did."""
    if migrate:
        upgrade(url)
    started = time.perf_counter()
    now = datetime.now(timezone.utc).replace(tzinfo=None)      # naive UTC inside the generator: cheaper to format
    if url.startswith("sqlite"):
        rows, size = _fill_sqlite(url, n, now, seed)
    else:
        rows, size = _fill_postgresql(url, n, now, seed)
    return Filled(n, rows, time.perf_counter() - started, size)


def _fill_sqlite(url: str, n: int, now: datetime, seed: int) -> tuple[int, int]:
    path = Path(url.split("///", 1)[1])
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-1048576")        # 1 GiB: the random-key indexes stay in memory
    db.execute("PRAGMA temp_store=MEMORY")
    _assert_empty(db.execute("SELECT count(*) FROM tickets").fetchone()[0])
    statements = {table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                  for table, cols in COLUMNS.items()}
    total = 0
    db.execute("BEGIN")
    for batch in generate(n, now, _sqlite_stamp, seed):
        for table, rows in batch.tables.items():
            db.executemany(statements[table], rows)
            total += len(rows)
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=WAL")           # as the service runs it
    db.close()
    with open(path, "rb+") as f:                    # on disk, as a database grown in service would be
        os.fsync(f.fileno())
    return total, path.stat().st_size


def _fill_postgresql(url: str, n: int, now: datetime, seed: int) -> tuple[int, int]:
    total = 0
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        _assert_empty(conn.execute("SELECT count(*) FROM tickets").fetchone()[0])
        conn.execute("SET session_replication_role = replica")     # no per-row foreign-key triggers
        conn.execute("SET synchronous_commit = off")
        with conn.cursor() as cur:
            for batch in generate(n, now, _pg_stamp, seed):
                for table, rows in batch.tables.items():
                    with cur.copy(f"COPY {table} ({', '.join(COLUMNS[table])}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row(row)
                    total += len(rows)
            for table in (table for table, columns in COLUMNS.items() if "id" in columns):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return total, int(size)


def _assert_empty(tickets: int) -> None:
    if tickets:
        raise SystemExit(f"the database has {tickets} cases already; fill an empty one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="sqlite:///PATH or postgresql+psycopg://... (an empty database)")
    parser.add_argument("n", type=int, help="how many existing cases")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(fill(args.url, args.n, args.seed).describe())


if __name__ == "__main__":
    main()
