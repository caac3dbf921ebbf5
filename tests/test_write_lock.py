"""The SQLite write lock: handed over in arrival order in a process, a door's store first, and
shared with the other processes on the database."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from models import db
from models.db import FairLock, first_in_line, make_engine
from tests.harness import wait_until


def _queue_up(lock: FairLock, names: list[str], taken: list[str], first: set[str]) -> list[threading.Thread]:
    """Start a waiter per name, one after the other, each queued before the next starts."""
    threads = []
    for name in names:
        def wait(name: str = name) -> None:
            if name in first:
                with first_in_line():
                    assert lock.acquire(5)
            else:
                assert lock.acquire(5)
            taken.append(name)
            lock.release()
        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.05)        # queued before the next one comes
        threads.append(thread)
    return threads


def test_waiters_get_the_lock_in_the_order_they_came_and_a_store_goes_first() -> None:
    lock, taken = FairLock(), []
    assert lock.acquire(1)
    threads = _queue_up(lock, ["processing 1", "delivery", "store", "processing 2"], taken, first={"store"})
    lock.release()
    for thread in threads:
        thread.join(5)
    assert taken == ["store", "processing 1", "delivery", "processing 2"]


def test_a_wait_that_times_out_leaves_the_line_and_the_lock_still_works() -> None:
    lock = FairLock()
    assert lock.acquire(1)
    started = time.monotonic()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(lock.acquire(0.1)))
    waiter.start()
    waiter.join(5)
    assert results == [False] and time.monotonic() - started >= 0.1
    lock.release()
    assert lock.acquire(0.1)        # free again: the timed-out waiter did not take it
    lock.release()


HOLD_IN_ANOTHER_PROCESS = """
import sys, time
from sqlalchemy import text
from models.db import make_engine
engine = make_engine(sys.argv[1])
with engine.begin() as conn:          # BEGIN IMMEDIATE under the shared lock
    conn.execute(text("INSERT INTO held (at) VALUES (1)"))
    print("holding", flush=True)
    time.sleep(0.6)
"""


def test_a_write_in_another_process_waits_on_the_lock_file_and_is_woken_when_it_is_free(tmp_path: Path) -> None:
    """The processing process and the door share SQLite's write lock through `<database>-writelock`:
    a writer waits for the other process's transaction and goes on as soon as it ends."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE held (at INTEGER)"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_IN_ANOTHER_PROCESS, url], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        started = time.monotonic()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO held (at) VALUES (2)"))
        waited = time.monotonic() - started
    finally:
        assert holder.wait(10) == 0
    assert 0.3 < waited < 5
    with engine.connect() as conn:
        assert list(conn.scalars(text("SELECT at FROM held ORDER BY rowid"))) == [1, 2]
    assert (tmp_path / "shared.db-writelock").exists()


def test_a_lock_file_held_too_long_elsewhere_times_out_and_leaves_the_lock_usable(tmp_path: Path) -> None:
    """A process hung inside a write must not hold the others up for good: the wait ends at the
    timeout (the store then answers 451), and the lock works again once the file is free."""
    path = tmp_path / "db-writelock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(1.5)", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = FairLock(str(path))
        started = time.monotonic()
        assert not lock.acquire(0.3)
        assert 0.25 < time.monotonic() - started < 1.2
    finally:
        assert holder.wait(10) == 0
    assert lock.acquire(1)      # neither the in-process lock nor the file was left taken
    lock.release()


def test_the_lock_file_taken_for_a_wait_that_gave_up_is_let_go(tmp_path: Path) -> None:
    """A wait for the lock file goes on in the lock's locker thread after its caller timed out;
    the file it then gets is released at once, not kept from the other processes."""
    path = str(tmp_path / "db-writelock")
    here, elsewhere = FairLock(path), FairLock(path)    # two opens of the file: as two processes
    assert elsewhere.acquire(1)
    assert not here.acquire(0.2)        # the locker thread still waits in flock
    elsewhere.release()                 # the locker gets the file for the caller that gave up ...
    wait_until(lambda: _take_and_give_back(elsewhere), timeout=5)     # ... and lets it go
    assert here.acquire(1)
    assert not elsewhere.acquire(0.1)
    here.release()
    assert elsewhere.acquire(1)
    elsewhere.release()


def _take_and_give_back(lock: FairLock) -> bool:
    if not lock.acquire(0.05):
        return False
    lock.release()
    return True


def test_a_commit_hands_the_lock_on_before_its_sync_and_returns_only_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction goes into the WAL unsynced (synchronous=NORMAL), the write lock is handed on,
    then the WAL is fsynced: the next writer goes ahead during the sync, and the commit returns
    (a 250, a delivery result) only once its transaction is on disk."""
    database = tmp_path / "synced.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE held (at INTEGER)"))
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    synced: list[tuple[str, float]] = []
    real_sync = db._sync

    def slow_sync(path: str) -> None:
        time.sleep(0.4)
        real_sync(path)
        synced.append((path, time.monotonic()))
    monkeypatch.setattr(db, "_sync", slow_sync)
    returned: list[float] = []

    def first() -> None:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO held (at) VALUES (1)"))
        returned.append(time.monotonic())
    thread = threading.Thread(target=first)
    thread.start()
    time.sleep(0.1)         # the first commit is in its sync now
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO held (at) VALUES (2)"))
        second_wrote = time.monotonic()
    thread.join(5)
    assert [path for path, _ in synced] == [f"{database}-wal"] * 2
    assert second_wrote < synced[0][1] <= returned[0]


def test_a_failed_sync_is_the_database_s_error_and_leaves_the_lock_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller gets an OperationalError, as for any failed commit (the door answers 451, processing
    retries), and the next transaction goes ahead."""
    url = f"sqlite:///{tmp_path / 'unsynced.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE held (at INTEGER)"))
    monkeypatch.setattr(db._writer_class(url), "wal", str(tmp_path / "gone" / "unsynced.db-wal"))
    with pytest.raises(OperationalError, match="disk I/O error: syncing"):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO held (at) VALUES (1)"))
    monkeypatch.undo()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO held (at) VALUES (2)"))
        assert list(conn.scalars(text("SELECT at FROM held ORDER BY rowid"))) == [1, 2]
