"""Real-world and standard-library test mails, sent with a tag, each end as a case, a
rejection or a hold, and the listener keeps serving."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import select

import test as stdlib_tests
from models import InboundMail, InboundStatus
from tests.conftest import RunningService

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
STDLIB_DATA = Path(stdlib_tests.__file__).parent / "test_email" / "data"


def _tagged(raw: bytes) -> bytes:
    """Put [SEV-3] in front of the first Subject (or add one), leaving the rest byte for byte."""
    if re.search(rb"(?im)^subject:", raw):
        return re.sub(rb"(?im)^subject:[ \t]*", b"Subject: [SEV-3] ", raw, count=1)
    return b"Subject: [SEV-3] no subject\r\n" + raw


def _mails() -> list[Path]:
    found = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.suffix in (".eml", ".bin"))
    found += sorted(STDLIB_DATA.glob("msg_*.txt")) if STDLIB_DATA.is_dir() else []
    return found


def test_every_sample_mail_ends_with_an_outcome(service: RunningService) -> None:
    mails = _mails()
    if not mails:
        pytest.skip("no sample mails on this machine")
    for path in mails:
        code, reply = service.send(_tagged(path.read_bytes()), sender="ann@acme.example")
        assert code == 250, (path.name, reply)
    assert service.cli_json("quarantine", "list") == []
    with service.services.sessions() as session:
        rows = session.execute(select(InboundMail.status, InboundMail.outcome)).all()
    assert all(status is InboundStatus.PROCESSED and outcome is not None for status, outcome in rows), rows
    distinct = len({_tagged(p.read_bytes()) for p in mails})
    assert len(rows) == distinct - _duplicate_ids(mails)
    assert service.send(b"Subject: [SEV-4] still alive\r\nFrom: ann@acme.example\r\n\r\nhi\r\n")[0] == 250


def _duplicate_ids(mails: list[Path]) -> int:
    """Mails sharing a Message-ID with an earlier one are recognised as duplicates, by design."""
    ids = [m.group(1) for p in mails if (m := re.search(rb"(?im)^message-id:\s*(\S+)", p.read_bytes()))]
    return len(ids) - len(set(ids))
