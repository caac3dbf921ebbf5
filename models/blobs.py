"""Large binary values (a mail's bytes, an attachment) written and read without whole copies.

SQLite: an INSERT of a large value cost two copies of it besides the caller's: the bound value
(the driver binds it as transient, and the cached statement keeps it until its next use) and the
row's record, built whole before its overflow pages are written; a read built the value whole in
SQLite before the driver copied it. So a large value is inserted as ``zeroblob(n)`` and written
into the row in pieces of ``PIECE`` bytes, in the same transaction (incremental blob I/O), and read
back straight into its ``bytes``.

PostgreSQL: psycopg sends a value in binary, but reads ``bytea`` as text (hex: twice the size, and
the driver keeps the last result until the next query): a read asks for a binary result on a cursor
of its own, closed at once.

Values under ``LARGE`` take the plain path: a blob handle costs more than the copy it saves.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, event, func
from sqlalchemy.orm import Session

from models.mail import InboundRaw
from models.ticket import Attachment

LARGE = 256 * 1024
PIECE = 1024 * 1024


def insertable(connection: Connection, value: bytes) -> Any:
    """What to insert for `value`: ``zeroblob(n)`` for a large value on SQLite (then `write` it), else the value."""
    return func.zeroblob(len(value)) if _in_pieces(connection, value) else value


def write(connection: Connection, table: str, column: str, row_id: int, value: bytes) -> None:
    """Fill a row's ``zeroblob`` with `value`, in pieces (SQLite, where `insertable` gave one)."""
    if not _in_pieces(connection, value):
        return
    view = memoryview(value)
    with connection.connection.driver_connection.blobopen(table, column, row_id) as blob:
        for start in range(0, len(value), PIECE):
            blob.write(view[start:start + PIECE])


def stored_raw(session: Session, inbound_id: int) -> bytes | None:
    """A stored mail's bytes, read whole into one ``bytes`` (None: no such mail)."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    if connection.dialect.name == "sqlite":
        try:
            with driver.blobopen(InboundRaw.__tablename__, "raw", inbound_id, readonly=True) as blob:
                return blob.read()
        except driver.OperationalError:    # no such row (or a NULL value)
            return None
    with driver.cursor(binary=True) as cursor:
        row = cursor.execute("SELECT raw FROM inbound_raw WHERE inbound_id = %s", (inbound_id,)).fetchone()
        return None if row is None else row[0]


def _in_pieces(connection: Connection, value: bytes) -> bool:
    return connection.dialect.name == "sqlite" and len(value) >= LARGE


@event.listens_for(Attachment, "before_insert")
def _attachment_as_zeroblob(_mapper: Any, connection: Connection, target: Attachment) -> None:
    value = target.data
    if isinstance(value, (bytes, bytearray)) and _in_pieces(connection, value):
        target.__dict__["_value"] = value
        target.data = func.zeroblob(len(value))


@event.listens_for(Attachment, "after_insert")
def _attachment_written(_mapper: Any, connection: Connection, target: Attachment) -> None:
    value = target.__dict__.pop("_value", None)
    if value is not None:
        write(connection, Attachment.__tablename__, "data", target.id, value)
