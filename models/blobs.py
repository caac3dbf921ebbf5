"""Large binary values (a mail's bytes, an attachment) written and read without whole copies.

SQLite: an INSERT of a large value cost two copies of it besides the caller's: the bound value
(the driver binds it as transient, and the cached statement keeps it until its next use) and the
row's record, built whole before its overflow pages are written; a read built the value whole in
SQLite before the driver copied it. So a large value is inserted as ``zeroblob(n)`` and written
into the row in pieces of ``PIECE`` bytes, in the same transaction (incremental blob I/O), and read
back straight into its ``bytes``. (``inbound_raw.raw`` and ``attachments.data`` are their rows'
last columns: a zeroblob before another column is expanded in memory when the row is built.)

PostgreSQL: psycopg sends a value in binary, but reads ``bytea`` as text (hex: twice the size, and
the driver keeps the last result until the next query): a read asks for a binary result on a cursor
of its own, closed at once. A connection that carried a large value is closed when it goes back to
the pool, taking libpq's grown buffers with it (models/db.py).

Values under ``LARGE`` take the plain path: a blob handle costs more than the copy it saves. An
attachment may come as ``InPieces`` (decoded from the raw mail as it is read): on SQLite it is
written piece by piece and never exists decoded whole; elsewhere it is decoded before the INSERT.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, func, insert
from sqlalchemy.orm import Session

from models.db import SWOLLEN
from models.mail import InboundRaw

LARGE = 256 * 1024
PIECE = 1024 * 1024


class InPieces(Protocol):
    """A value that need not exist whole: its size, its bytes in pieces, or whole (intake/large_parts.py's
    ``Base64Body``, an attachment decoded from the raw mail as it is written)."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def pieces(self, size: int) -> Iterable[bytes]: ...


def insert_raw(connection: Connection, inbound_id: int, raw: bytes) -> None:
    """A received mail's bytes into ``inbound_raw``: as ``zeroblob(n)``, then written in pieces,
    where that saves the copies (statements built once: this runs for every mail stored)."""
    _note_size(connection, len(raw))
    if _in_pieces(connection, raw):
        connection.execute(_RAW_ZEROBLOB, {"inbound_id": inbound_id, "size": len(raw)})
        write_pieces(connection, InboundRaw.__tablename__, "raw", inbound_id, raw)
    else:
        connection.execute(_RAW, {"inbound_id": inbound_id, "raw": raw})


_RAW = insert(InboundRaw)
_RAW_ZEROBLOB = insert(InboundRaw).values(raw=func.zeroblob(bindparam("size")))


def write_pieces(connection: Connection, table: str, column: str, row_id: int, value: bytes | InPieces) -> None:
    """Fill a row's ``zeroblob`` with `value`, in pieces (SQLite, for a large value)."""
    if isinstance(value, bytes):
        view = memoryview(value)
        pieces: Iterable[bytes | memoryview] = (view[start:start + PIECE] for start in range(0, len(value), PIECE))
    else:
        pieces = value.pieces(PIECE)
    with _driver(connection).blobopen(table, column, row_id) as blob:
        for piece in pieces:
            blob.write(piece)


def stored_raw(session: Session, inbound_id: int) -> bytes | None:
    """A stored mail's bytes, read whole into one ``bytes`` (None: no such mail)."""
    connection = session.connection()
    driver = _driver(connection)
    if connection.dialect.name == "sqlite":
        try:
            with driver.blobopen(InboundRaw.__tablename__, "raw", inbound_id, readonly=True) as blob:
                return blob.read()
        except driver.OperationalError:    # no such row (or a NULL value)
            return None
    with driver.cursor(binary=True) as cursor:
        row = cursor.execute("SELECT raw FROM inbound_raw WHERE inbound_id = %s", (inbound_id,)).fetchone()
    if row is None:
        return None
    _note_size(connection, len(row[0]))
    return row[0]


def _driver(connection: Connection) -> Any:
    """The driver's own connection (sqlite3's, psycopg's): blob handles and binary cursors are not SQLAlchemy's."""
    driver = connection.connection.driver_connection
    assert driver is not None, "a checked-out connection has its driver connection"
    return driver


def _in_pieces(connection: Connection, value: bytes | InPieces) -> bool:
    return connection.dialect.name == "sqlite" and len(value) >= LARGE


def _note_size(connection: Connection, size: int) -> None:
    """A large value through a PostgreSQL connection: the pool closes it when it comes back (models/db.py)."""
    if size >= LARGE and connection.dialect.name != "sqlite":
        connection.connection.info[SWOLLEN] = True


def written_in_pieces(connection: Connection, value: bytes | InPieces) -> bool:
    """Whether a value for a binary column goes in as ``zeroblob(n)`` and then `write_pieces`
    (models/inserts.py); noted on a PostgreSQL connection when large."""
    _note_size(connection, len(value))
    return _in_pieces(connection, value)


def bound(value: bytes | InPieces) -> bytes:
    """A value for a binary column bound whole: one that comes in pieces is decoded first."""
    return value if isinstance(value, bytes) else bytes(value)

