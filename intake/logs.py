"""Logging for the service: one line per event, readable `key=value` or JSON, customer addresses redacted.

An event is logged as `log_event(log, "mail.processed", ref=..., message_id=..., ...)`. The record's
message is the readable line (so every handler, and a test's log capture, reads the same text) and
the fields ride along for the JSON formatter. Modules below `intake` cannot import this one; they
log the same shape with `log.info("outbox.sent", extra={"fields": {...}})`.

Redaction happens in the formatters, not in the records: a customer's address is written as
`a***@acme.example` at INFO and above (DEBUG lines, off unless `service.log_level = "debug"`,
keep it whole). Addresses the config names (the service's own, the staff's, routing `notify`
addresses) are not customers' and stay, except for the `+token` part of a reply address, which
is a credential.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
QUIET_LOGGERS = ("mail.log", "apscheduler", "sqlalchemy")   # per connection, job or statement: warnings only
# Local parts and domains outside ASCII too (RFC 6531: `jörg@bücher.example`).
_ADDRESS = re.compile(r"(?<![\w.%+-])([\w.%+-]+)@([\w-]+(?:\.[\w-]+)+)")
_BARE = re.compile(r"[^\s\"'=\\]+")
_NOT_ADDRESSES = frozenset({"message_id", "in_reply_to"})   # look like addresses, are identifiers


class Line:
    """A log message that is an event and its fields; rendered only when a handler formats it."""

    def __init__(self, event: str, fields: Mapping[str, Any]) -> None:
        self.event, self.fields = event, dict(fields)

    def __str__(self) -> str:
        return render(self.event, self.fields)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, exc_info: Any = None,
              **fields: Any) -> None:
    """Log one event. `exc_info` only for real faults: expected outcomes carry no stack trace."""
    if logger.isEnabledFor(level):
        logger.log(level, Line(event, fields), exc_info=exc_info)


def render(event: str, fields: Mapping[str, Any]) -> str:
    """`event key=value ...`: values with spaces or quotes are double-quoted, None is `-`."""
    return " ".join([event, *(f"{key}={_text(value)}" for key, value in fields.items())])


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple, set, frozenset)):
        value = ",".join(str(v) for v in value)
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class Redactor:
    """Masks customer addresses; `known` addresses (ours, the staff's) stay readable."""

    def __init__(self, known: Iterable[str] = (), enabled: bool = True) -> None:
        self.known = frozenset(address.lower() for address in known)
        self.enabled = enabled

    def text(self, text: str) -> str:
        return _ADDRESS.sub(self._mask, text) if self.enabled and "@" in text else text

    def value(self, key: str, value: Any) -> Any:
        if key in _NOT_ADDRESSES:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, (list, tuple)):
            return [self.value(key, v) for v in value]
        return value

    def _mask(self, match: re.Match[str]) -> str:
        local, domain = match.group(1), match.group(2)
        plain, plus, _ = local.partition("+")
        if f"{plain}@{domain}".lower() in self.known:
            return f"{plain}+***@{domain}" if plus else match.group(0)
        return f"{local[0]}***@{domain}"


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor(enabled=False)

    def parts(self, record: logging.LogRecord) -> tuple[str | None, dict[str, Any], str, str | None]:
        """(event, fields, message, traceback), redacted for records at INFO and above."""
        redact = record.levelno >= logging.INFO
        event, fields = _structured(record)
        if redact:
            fields = {key: self.redactor.value(key, value) for key, value in fields.items()}
        message = render(event, fields) if event is not None else record.getMessage()
        if event is None and redact:
            message = self.redactor.text(message)
        trace = self.formatException(record.exc_info) if record.exc_info else None
        if trace and redact:
            trace = self.redactor.text(trace)
        return event, fields, message, trace

    def timestamp(self, record: logging.LogRecord) -> str:
        return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")


def _structured(record: logging.LogRecord) -> tuple[str | None, dict[str, Any]]:
    if isinstance(record.msg, Line):
        return record.msg.event, record.msg.fields
    fields = getattr(record, "fields", None)
    if isinstance(fields, Mapping):
        return str(record.msg), dict(fields)
    return None, {}


class TextFormatter(_Formatter):
    """`2026-03-16T08:05:00.123+00:00 INFO intake.pipeline mail.processed ref=CASE-7 ...`, a
    traceback on the lines after it for real faults."""

    def format(self, record: logging.LogRecord) -> str:
        _, _, message, trace = self.parts(record)
        line = f"{self.timestamp(record)} {record.levelname} {record.name} {message}"
        return f"{line}\n{trace}" if trace else line


class JsonFormatter(_Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `event` and its fields (or `message` for
    lines from libraries), and `exception` with the traceback for real faults."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields, message, trace = self.parts(record)
        line: dict[str, Any] = {"ts": self.timestamp(record), "level": record.levelname.lower(),
                                "logger": record.name}
        line.update({"event": event, **fields} if event is not None else {"message": message})
        if trace:
            line["exception"] = trace
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(log_format: str, redactor: Redactor) -> logging.Formatter:
    return JsonFormatter(redactor) if log_format == "json" else TextFormatter(redactor)


def setup_logging(log_format: str, level: str, redactor: Redactor) -> None:
    """Log to stderr (the journal, under systemd). Like `logging.basicConfig`, it leaves a process
    whose logging is already set up alone (an embedding program, a test runner)."""
    root = logging.getLogger()
    if any(not getattr(handler, "intake", False) for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.intake = True       # type: ignore[attr-defined]
    handler.setFormatter(formatter(log_format, redactor))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
