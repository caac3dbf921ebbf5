"""`intake import`: an mbox file and a Maildir folder through the pipeline, twice, one record each."""
from __future__ import annotations

import io
import mailbox
import re
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from intake.importer import ProgressBar
from models import Event, InboundMail, OutboxMail
from models.db import make_engine
from tests.conftest import CaptureServer, free_port, make_mail, run_cli, write_config

pytestmark = pytest.mark.integration


def conversation() -> list[bytes]:
    """A request, the customer's follow-up to it, an untagged mail and a robot's auto-reply."""
    return [make_mail(message_id="<request@acme.example>"),
            make_mail(subject="Re: [SEV-2] Replication lag on prod", headers={"In-Reply-To": "<request@acme.example>"},
                      body="Still lagging.\n"),
            make_mail(subject="How do I export my data?"),
            make_mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"})]


def dated(raw: bytes, when: datetime) -> bytes:
    return re.sub(rb"(?m)^Date: .*$", f"Date: {format_datetime(when)}".encode(), raw, count=1)


def counts(db_url: str) -> tuple[int, int, int]:
    """(inbound records, outgoing answers, suppressed acknowledgments)"""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            inbound = conn.execute(select(func.count(InboundMail.id)).where(InboundMail.door == "import")).scalar_one()
            answers = conn.execute(select(func.count(OutboxMail.id)).where(
                OutboxMail.kind.in_(("acknowledgment", "rejection")))).scalar_one()
            suppressed = conn.execute(select(func.count(Event.id)).where(
                Event.kind == "acknowledgment_suppressed")).scalar_one()
        return inbound, answers, suppressed
    finally:
        engine.dispose()


def summary(out: str) -> dict[str, int]:
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", out.strip().splitlines()[-1])}


@pytest.fixture
def config(tmp_path: Path, db_url: str, capture: CaptureServer) -> Path:
    return write_config(tmp_path, db_url, free_port(), capture.port)


def test_an_mbox_imported_twice_gives_one_record_per_message_and_no_answers(
        tmp_path: Path, db_url: str, config: Path) -> None:
    path = tmp_path / "export.mbox"
    box = mailbox.mbox(path)
    for raw in conversation():
        box.add(raw)
    box.close()
    code, out = run_cli("--config", str(config), "import", str(path))
    assert code == 0, out
    assert summary(out).items() >= {"fetched": 4, "tickets": 1, "replies": 1, "rejected": 2}.items(), out
    assert "\r" not in out                   # no progress bar when not on a terminal
    assert counts(db_url) == (4, 0, 1)       # the acknowledgment was suppressed, the rejection not answered

    code, out = run_cli("--config", str(config), "import", str(path))
    assert code == 0 and summary(out).items() >= {"fetched": 4, "duplicates": 4, "tickets": 0}.items(), out
    assert counts(db_url) == (4, 0, 1)
    rejected = run_cli("--config", str(config), "rejected", "list", "--json")[1]
    assert "not answered (imported)" in rejected


def test_a_maildir_imported_twice_gives_one_record_per_message_in_date_order(
        tmp_path: Path, db_url: str, config: Path) -> None:
    start = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
    request, follow_up, untagged, _ = conversation()
    box = mailbox.Maildir(tmp_path / "Maildir")
    for raw, hours in ((follow_up, 5), (untagged, 9), (request, 1)):   # stored out of order on purpose
        box.add(dated(raw, start + timedelta(hours=hours)))
    maildir = str(tmp_path / "Maildir")
    code, out = run_cli("--config", str(config), "import", maildir, "--mailbox", "Support@example.com")
    assert code == 0, out
    assert summary(out).items() >= {"fetched": 3, "tickets": 1, "replies": 1, "rejected": 1}.items(), out
    code, out = run_cli("--config", str(config), "import", maildir)
    assert code == 0 and summary(out)["duplicates"] == 3, out
    assert counts(db_url)[0] == 3


def test_send_acks_answers_imported_mail_as_if_it_had_just_arrived(
        tmp_path: Path, db_url: str, config: Path) -> None:
    path = tmp_path / "export.mbox"
    box = mailbox.mbox(path)
    for raw in conversation()[:3]:
        box.add(raw)
    box.close()
    code, out = run_cli("--config", str(config), "import", "--send-acks", str(path))
    assert code == 0, out
    assert counts(db_url) == (3, 2, 0)       # an acknowledgment and a rejection


def test_a_path_that_is_no_mailbox_or_an_unknown_mailbox_is_a_usage_error(tmp_path: Path, config: Path) -> None:
    (tmp_path / "folder").mkdir()
    code, out = run_cli("--config", str(config), "import", str(tmp_path / "folder"))
    assert code == 2 and "not a Maildir" in out
    code, out = run_cli("--config", str(config), "import", str(tmp_path / "missing.mbox"))
    assert code == 2 and "no such file" in out
    code, out = run_cli("--config", str(config), "import", str(tmp_path / "folder"), "--mailbox", "nobody@example.com")
    assert code == 2 and "no mailbox is nobody@example.com" in out


def test_the_progress_bar_redraws_one_line_and_ends_it() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    for done in range(1, 5):
        bar(done, 4)
    bar.close()
    assert stream.getvalue().split("\r")[-1] == "[##########] 4/4\n"
    assert stream.getvalue().count("\n") == 1
