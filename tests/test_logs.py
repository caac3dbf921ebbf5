"""Log lines: one per event, key=value or JSON, with the case reference, Message-ID, mailbox and
outcome; customer addresses redacted at INFO; a stack trace only for real faults."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from intake.logs import JsonFormatter, Line, Redactor, TextFormatter, log_event, render
from tests.conftest import CaptureServer, free_port, make_mail, write_config
from tests.harness import Database, Serve, smtp_send

KNOWN = ("support@example.com", "alice@example.com")


def record(level: int, event: str, exc: BaseException | None = None, **fields: Any) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("intake.test", level, __file__, 1, Line(event, fields), None, exc_info)


def raised() -> ValueError:
    try:
        raise ValueError("the database said no to ann@acme.example")
    except ValueError as exc:
        return exc


def test_an_event_renders_as_key_value_with_quoting() -> None:
    line = render("mail.processed", {"ref": "CASE-7", "reason": None, "error": 'a "b" c', "ok": True,
                                     "to": ["x@y.example", "z@y.example"]})
    assert line == 'mail.processed ref=CASE-7 reason=- error="a \\"b\\" c" ok=yes to=x@y.example,z@y.example'


def test_the_text_line_carries_time_level_logger_and_fields() -> None:
    text = TextFormatter(Redactor(KNOWN)).format(record(logging.INFO, "mail.processed", ref="CASE-7",
                                                        message_id="m1@acme.example", outcome="ticket"))
    stamp, level, logger, rest = text.split(" ", 3)
    assert stamp.endswith("+00:00") and (level, logger) == ("INFO", "intake.test")
    assert rest == "mail.processed ref=CASE-7 message_id=m1@acme.example outcome=ticket"


def test_the_json_line_carries_the_fields_at_the_top_level() -> None:
    line = json.loads(JsonFormatter(Redactor(KNOWN)).format(record(
        logging.INFO, "mail.processed", ref="CASE-7", message_id="m1@acme.example", mailbox="support@example.com",
        outcome="ticket", sender="ann@acme.example", inbound=3)))
    assert line.pop("ts").endswith("+00:00")
    assert line == {"level": "info", "logger": "intake.test", "event": "mail.processed", "ref": "CASE-7",
                    "message_id": "m1@acme.example", "mailbox": "support@example.com", "outcome": "ticket",
                    "sender": "a***@acme.example", "inbound": 3}


def test_customer_addresses_are_redacted_at_info_and_ours_and_the_staffs_are_not() -> None:
    fmt = TextFormatter(Redactor(KNOWN))
    text = fmt.format(record(logging.INFO, "outbox.sent", to=["ann@acme.example", "alice@example.com"],
                             sender="Bob.Smith@sub.acme.example", message_id="ann@acme.example",
                             reply="support+k2j4h5@example.com", mailbox="Support@Example.com"))
    assert "to=a***@acme.example,alice@example.com" in text
    assert "sender=B***@sub.acme.example" in text
    assert "message_id=ann@acme.example" in text        # an identifier, not an address
    assert "reply=support+***@example.com" in text      # the token lets replies in: never logged
    assert "mailbox=Support@Example.com" in text
    assert "ann@acme.example" not in text.replace("message_id=ann@acme.example", "")


def test_addresses_outside_ascii_are_redacted_too() -> None:
    text = TextFormatter(Redactor(KNOWN)).format(record(
        logging.WARNING, "outbox.not_addressable", left_out=["jörg@bücher.example", "ünal.k@acme.example"]))
    assert "left_out=j***@bücher.example,ü***@acme.example" in text


def test_debug_lines_and_a_disabled_redactor_keep_addresses_whole() -> None:
    assert "sender=ann@acme.example" in TextFormatter(Redactor(KNOWN)).format(
        record(logging.DEBUG, "x", sender="ann@acme.example"))
    assert "sender=ann@acme.example" in TextFormatter(Redactor(KNOWN, enabled=False)).format(
        record(logging.INFO, "x", sender="ann@acme.example"))


def test_a_real_fault_carries_its_traceback_and_an_expected_outcome_none() -> None:
    fmt, json_fmt = TextFormatter(Redactor(KNOWN)), JsonFormatter(Redactor(KNOWN))
    fault = record(logging.ERROR, "mail.quarantined", raised(), inbound=4)
    text = fmt.format(fault)
    assert text.splitlines()[0].endswith("mail.quarantined inbound=4")
    assert "Traceback (most recent call last)" in text and "ValueError: the database said no to a***@acme.example" in text
    assert "Traceback" in json.loads(json_fmt.format(fault))["exception"]
    expected = record(logging.INFO, "mail.processed", outcome="rejected")
    assert "\n" not in fmt.format(expected) and "exception" not in json.loads(json_fmt.format(expected))


def test_lines_from_below_intake_use_extra_fields_and_library_lines_a_message() -> None:
    fields = logging.LogRecord("intake.delivery", logging.INFO, __file__, 1, "outbox.sent", None, None)
    fields.fields = {"outbox": 1, "to": ["ann@acme.example"]}
    assert json.loads(JsonFormatter(Redactor(KNOWN)).format(fields))["to"] == ["a***@acme.example"]
    assert TextFormatter(Redactor(KNOWN)).format(fields).endswith("outbox.sent outbox=1 to=a***@acme.example")
    library = logging.LogRecord("mail.log", logging.INFO, __file__, 1, "peer %s said MAIL FROM:<%s>",
                                ("1.2.3.4", "ann@acme.example"), None)
    line = json.loads(JsonFormatter(Redactor(KNOWN)).format(library))
    assert line["message"] == "peer 1.2.3.4 said MAIL FROM:<a***@acme.example>" and "event" not in line


def test_log_event_keeps_the_readable_line_as_the_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "intake.test")
    log_event(logging.getLogger("intake.test"), "imap.state", state="connected", mailbox="support@example.com")
    assert caplog.records[0].getMessage() == "imap.state state=connected mailbox=support@example.com"


# ---------------------------------------------------------------- a running service

@pytest.mark.integration
def test_a_running_service_logs_one_json_line_per_event(tmp_path: Path, db_url: str, capture: CaptureServer) -> None:
    overrides = tmp_path / "overrides" / "community"
    overrides.mkdir(parents=True)
    (overrides / "body.txt").write_text("{{ no_such_variable }}\n")      # a real fault while processing
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port, replace={
        'log_format = "text"': 'log_format = "json"', 'templates_dir = ""': 'templates_dir = "overrides"'})
    serve = Serve(config, port, tmp_path / "serve.log")
    try:
        ticket = make_mail("[SEV-2] Replication lag", message_id="<t1@acme.example>")
        for raw in (ticket, make_mail("no tag", message_id="<r1@acme.example>"), ticket,
                    make_mail("[SEV-3] hi", sender="Hal <hal@hobby.example>", message_id="<q1@hobby.example>")):
            assert smtp_send(port, raw, "ann@acme.example", ("support@example.com",)) == 250
        capture.wait_for(2)
        lines = wait_for_events(tmp_path / "serve.log", {"mail.processed": 2, "mail.duplicate": 1,
                                                          "mail.quarantined": 1, "outbox.sent": 2})
    finally:
        serve.kill()
    events = [line for line in lines if "event" in line]
    processed = {line["message_id"]: line for line in events if line["event"] == "mail.processed"}
    # the case's number: on PostgreSQL a transaction rolled back for the faulty mail may have used ids before it
    database = Database(db_url)
    try:
        case_id = database.scalar("SELECT id FROM tickets")
    finally:
        database.close()
    assert processed["t1@acme.example"].items() >= {"ref": f"CASE-{case_id}", "mailbox": "support@example.com",
                                                    "outcome": "ticket", "sender": "a***@acme.example"}.items()
    assert processed["r1@acme.example"].items() >= {"ref": None, "outcome": "rejected", "reason": "untagged"}.items()
    [duplicate] = [line for line in events if line["event"] == "mail.duplicate"]
    assert duplicate["message_id"] == "t1@acme.example"
    [fault] = [line for line in events if line["event"] == "mail.quarantined"]
    assert fault["level"] == "error" and fault["message_id"] == "q1@hobby.example"
    assert "Traceback" in fault["exception"] and "no_such_variable" in fault["exception"]
    assert [line["event"] for line in events if "exception" in line] == ["mail.quarantined"]
    assert "ann@acme.example" not in (tmp_path / "serve.log").read_text()


def wait_for_events(path: Path, wanted: dict[str, int], timeout: float = 20) -> list[dict[str, Any]]:
    """The log's lines (every one must be JSON) once it holds at least `wanted` events of each kind."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        counts = {event: sum(1 for line in lines if line.get("event") == event) for event in wanted}
        if all(counts[event] >= n for event, n in wanted.items()):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{counts} after {timeout} s:\n{path.read_text()}")
        time.sleep(0.1)
