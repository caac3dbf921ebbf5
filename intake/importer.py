"""`intake import PATH`: an mbox file or a Maildir folder through the same pipeline (a migration).

Safe to run twice: the store stage recognises a message it has (same bytes or Message-ID).
Imported mail gets no automatic answer unless asked for (`send_acks`): its senders wrote to
another system, possibly long ago, and a wave of acknowledgments would only confuse them.
"""
from __future__ import annotations

import logging
import mailbox
from dataclasses import dataclass, fields
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from intake.logs import log_event
from intake.pipeline import Result, Services, ingest
from intake.store import Envelope
from models import Outcome

log = logging.getLogger("intake.import")

_COUNTERS = {Outcome.TICKET: "tickets", Outcome.REPLY: "replies", Outcome.REJECTED: "rejected",
             Outcome.HELD: "held", Outcome.BOUNCE: "bounces"}


@dataclass
class Summary:
    """What a run of mail became: the line `intake import` and `intake poll --once` print."""
    fetched: int = 0
    tickets: int = 0
    replies: int = 0
    rejected: int = 0
    held: int = 0
    bounces: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed: int = 0         # could not be read (import) or fetched whole (IMAP)

    def add(self, result: Result) -> None:
        self.fetched += 1
        if result.duplicate:
            self.duplicates += 1
        elif result.outcome is None:
            self.quarantined += 1
        else:
            name = _COUNTERS[result.outcome]
            setattr(self, name, getattr(self, name) + 1)

    def line(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class ImportSourceError(Exception):
    """PATH is neither an mbox file nor a Maildir folder."""


Progress = Callable[[int, int], None]


def import_mail(services: Services, path: Path, mailbox_address: str, send_acks: bool = False,
                progress: Progress | None = None) -> Summary:
    """Ingest every message of `path` in order (mbox: file order; Maildir: by Date header)."""
    source = open_source(path)
    summary = Summary()
    keys = _ordered_keys(source)
    for done, (key, raw) in enumerate(_messages(source, keys, summary), start=1):
        envelope = Envelope.from_headers(raw, "import", mailbox_address, auto_answer=send_acks)
        summary.add(ingest(services, raw, envelope))
        if progress is not None:
            progress(done + summary.failed, len(keys))
    return summary


def open_source(path: Path) -> mailbox.Mailbox[Any]:
    if path.is_dir():
        if not ((path / "cur").is_dir() and (path / "new").is_dir()):
            raise ImportSourceError(f"{path}: a folder, but not a Maildir (no cur/ and new/)")
        return mailbox.Maildir(path, factory=None, create=False)
    if path.is_file():
        return mailbox.mbox(path, create=False)
    raise ImportSourceError(f"{path}: no such file or folder")


def _ordered_keys(source: mailbox.Mailbox[Any]) -> list[str]:
    """Replies should come after what they answer, so they thread: an mbox is already in arrival
    order; a Maildir has no order, so its messages are sorted by their Date header."""
    keys = list(source.keys())
    if isinstance(source, mailbox.mbox):
        return keys
    return sorted(keys, key=lambda key: (_date_of(source, key), key))


def _date_of(source: mailbox.Mailbox[Any], key: str) -> float:
    try:
        with source.get_file(key) as handle:
            value = BytesHeaderParser().parsebytes(handle.read(65536)).get("Date")
        return parsedate_to_datetime(str(value)).timestamp() if value else 0.0
    except (OSError, ValueError, TypeError):
        return 0.0


def _messages(source: mailbox.Mailbox[Any], keys: list[str], summary: Summary) -> Iterator[tuple[str, bytes]]:
    for key in keys:
        try:
            yield key, source.get_bytes(key)
        except (OSError, KeyError) as exc:     # vanished or unreadable: counted, the rest goes on
            summary.failed += 1
            log_event(log, "import.unreadable", logging.WARNING, key=key, error=str(exc))


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; `intake import` uses it only on a TTY."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
