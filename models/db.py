"""Engine and the one unit of work that commits."""
from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker


BUSY_TIMEOUT_SECONDS = 30


def make_engine(url: str, **kwargs: Any) -> Engine:
    """SQLite gets WAL, a busy timeout, foreign keys and one in-process write lock per database;
    a commit is durable when it returns (`_Writer.commit`)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False,
                                                  "factory": _writer_class(url)}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    engine = create_engine(url, pool_pre_ping=True, **kwargs)
    event.listen(engine, "checkin", _close_if_swollen)
    return engine


SWOLLEN = "swollen"     # on a pooled connection's info: it carried a large value (models/blobs.py)


def _close_if_swollen(_dbapi_connection: Any, record: Any) -> None:
    """libpq keeps its buffers as large as the largest message they carried, for the connection's
    life: a pooled connection that sent or read a 25 MB mail held ~50 MB more for good. Such a
    connection is closed when it comes back to the pool (the next checkout opens a fresh one)."""
    if record.info.pop(SWOLLEN, False):
        record.invalidate()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None   # the driver's own BEGIN handling off; see _sqlite_begin_immediate
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")     # the WAL is fsynced after the lock is handed on: _Writer.commit
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions on `engine`. The ORM's mappings are set up now, not in the first query (~50 ms,
    which in `intake serve` the first mail's transaction would spend holding SQLite's write lock)."""
    configure_mappers()
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commits on success, rolls back on any error. Query functions never commit."""
    with factory() as session, session.begin():
        yield session


def _sqlite_begin_immediate(conn: Any) -> None:
    """Take SQLite's write lock at BEGIN: a read-then-write transaction can then never fail
    half-way because another connection committed in between (SQLITE_BUSY_SNAPSHOT)."""
    writer: _Writer = conn.connection.dbapi_connection
    if not writer.take_lock():      # as SQLite's own busy timeout would end
        raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        writer.drop_lock()
        raise


_line = threading.local()


@contextmanager
def first_in_line() -> Iterator[None]:
    """SQLite transactions begun inside go ahead of the other threads queued for the write lock: a
    door's store, which a sender waits on, before processing and delivery, which nobody waits on."""
    _line.first = True
    try:
        yield
    finally:
        _line.first = False


class _FileLockRequest:
    """A caller's wait for the lock file, which the locker thread either grants or, when the caller
    gave up first, lets go."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.granted = threading.Event()
        self.abandoned = False


class FairLock:
    """A lock handed to its waiters in the order they came (threads `first_in_line` go to the front).
    A plain lock goes to whichever thread runs first after the release, mostly the one that released
    it: the processing thread, going from one mail's transaction to the next, would keep the SMTP
    door's store waiting."""

    def __init__(self, shared_with_processes: str | None = None) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False
        # Other processes on the database (processing beside the door, one-shot commands) take the
        # same lock file, waited for in a blocking flock (woken at its release), where SQLite's busy
        # handler sleeps up to 100 ms.
        self._shared_path = shared_with_processes
        self._file: int | None = None      # opened at the first write: the folder exists once SQLite has opened the file
        self._requests: queue.SimpleQueue[_FileLockRequest] | None = None     # to the locker thread, started at the first wait
        self._locker_busy = 0      # waits handed to the locker thread and not yet granted or let go

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._acquire_here(timeout):
            return False
        if self._shared_path is None:
            return True
        try:
            if self._lock_file(deadline):
                return True
        except BaseException:
            self._release_here()
            raise
        self._release_here()
        return False

    def _lock_file(self, deadline: float) -> bool:
        """The lock file, waited for until `deadline`. Taken at once when free; else this lock's
        locker thread waits in a blocking flock, which the kernel ends at the release, and hands
        the lock over; one it takes for a caller that gave up is let go at once. (A blocking flock
        in the caller could not time out, so a process hung inside a write would hold up the others
        for good; polled every 50-100 us instead, as before, the SMTP door spent ~0.3 ms of CPU per
        mail on the wakeups at full load: docs/performance.md.)"""
        if self._file is None:
            assert self._shared_path is not None    # acquire() comes here only for a lock with a file
            self._file = os.open(self._shared_path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._mutex:
            # Not while the locker thread still has a wait in hand, given up or not: on the same open
            # file a second flock succeeds, and the locker would then let go of the caller's lock.
            if not self._locker_busy:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
            self._locker_busy += 1
        request = _FileLockRequest()
        self._locker_queue().put(request)
        request.granted.wait(max(0.0, deadline - time.monotonic()))
        with request.mutex:
            request.abandoned = not request.granted.is_set()
            return not request.abandoned

    def _locker_queue(self) -> queue.SimpleQueue[_FileLockRequest]:
        if self._requests is None:
            self._requests = queue.SimpleQueue()
            threading.Thread(target=self._lock_for_callers, args=(self._requests,), name="sqlite-writelock",
                             daemon=True).start()
        return self._requests

    def _lock_for_callers(self, requests: queue.SimpleQueue[_FileLockRequest]) -> None:
        assert self._file is not None
        while True:
            request = requests.get()
            fcntl.flock(self._file, fcntl.LOCK_EX)
            with request.mutex:
                if request.abandoned:
                    fcntl.flock(self._file, fcntl.LOCK_UN)
                else:
                    request.granted.set()
            with self._mutex:
                self._locker_busy -= 1

    def _acquire_here(self, timeout: float) -> bool:
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            if getattr(_line, "first", False):
                self._waiters.appendleft(turn)
            else:
                self._waiters.append(turn)
        if turn.acquire(timeout=timeout):
            return True
        with self._mutex:
            if turn in self._waiters:
                self._waiters.remove(turn)
                return False
        return True     # handed over just as the wait timed out

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._release_here()

    def _release_here(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()     # still held: it passes to the first waiter
            else:
                self._held = False


class _Writer(sqlite3.Connection):
    """Holds its database's in-process lock from BEGIN IMMEDIATE to the end of the transaction.

    Threads of one process (the SMTP door, the processing thread, the outbox worker, the sweeps)
    then queue on a lock that is handed over in turn when a transaction ends, instead of SQLite's
    busy handler, which polls with sleeps of 1 to 100 ms."""
    lock: FairLock
    holding = False
    wal: str | None         # the database's WAL file (None: an in-memory database)

    def take_lock(self) -> bool:
        """False when the lock was not free within the busy timeout."""
        self.holding = self.lock.acquire(BUSY_TIMEOUT_SECONDS)
        return self.holding

    def drop_lock(self) -> None:
        if self.holding:
            self.holding = False
            self.lock.release()

    def commit(self) -> None:
        """Durable when it returns, as with synchronous=FULL, but the write lock is handed on
        before the disk is waited for: the transaction goes into the WAL without a sync
        (synchronous=NORMAL), the lock is released, then the WAL file is fsynced. The next writer
        no longer waits for this one's fsync (0.1 ms on an idle disk, more under load; several
        commits per mail). What a reader sees before the sync is never acted on outside before it
        is durable: a writer acts only once its own commit returned, and a commit's sync covers
        every transaction before it in the WAL (docs/reliability.md)."""
        try:
            super().commit()
        finally:
            self.drop_lock()
        if self.wal is not None:
            _sync(self.wal)

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.drop_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.drop_lock()


def _sync(path: str) -> None:
    """fsync a file; a failure is the database's (OperationalError: the caller retries, as for
    any failed commit), never the mail's."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except OSError as exc:
        raise sqlite3.OperationalError(f"disk I/O error: syncing {path}: {exc}") from exc


_WRITER_CLASSES: dict[str, type[_Writer]] = {}
_WRITER_CLASSES_LOCK = threading.Lock()


def _writer_class(url: str) -> type[_Writer]:
    """One connection class, and so one lock, per database URL in this process."""
    with _WRITER_CLASSES_LOCK:
        if url not in _WRITER_CLASSES:
            database = make_url(url).database
            on_disk = bool(database) and database != ":memory:"
            _WRITER_CLASSES[url] = type("Writer", (_Writer,), {
                "lock": FairLock(f"{database}-writelock" if on_disk else None),
                "wal": f"{database}-wal" if on_disk else None})
        return _WRITER_CLASSES[url]
