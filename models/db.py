"""Engine and the one unit of work that commits."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: Any) -> Engine:
    """SQLite gets WAL, a busy timeout and foreign keys; commits stay durable (synchronous=FULL)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None   # the driver's own BEGIN handling off; see _sqlite_begin_immediate
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commits on success, rolls back on any error. Query functions never commit."""
    with factory() as session, session.begin():
        yield session


def _sqlite_begin_immediate(conn: Any) -> None:
    """Take SQLite's write lock at BEGIN: a read-then-write transaction can then never fail
    half-way because another connection committed in between (SQLITE_BUSY_SNAPSHOT)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
