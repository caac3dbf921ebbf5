"""Nothing lost, nothing twice: a relay outage, a failing step."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from intake import service as service_module
from intake.service import outbox_worker
from notifications.delivery import CLAIM_BATCH
from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration


# Kills at every named point of the pipeline, with senders retrying: tests/test_crash_points.py.


def test_relay_outage_delays_acknowledgments_and_loses_none(service: RunningService,
                                                            capture: CaptureServer) -> None:
    capture.stop()
    for n in range(3):
        assert service.send(make_mail(subject=f"[SEV-3] outage {n}"))[0] == 250
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pending = service.cli_json("outbox", "list", "--status", "pending")
        if len(pending) == 6 and all(p["attempts"] >= 1 and p["last_error"] for p in pending):
            break
        time.sleep(0.1)
    # three acknowledgments and three staff notifications, each tried and waiting
    assert len(pending) == 6 and all(p["last_error"] for p in pending), pending
    capture.start()
    code, out = service.cli("outbox", "retry")     # an administrator need not wait for the backoff
    assert code == 0, out
    mails = capture.wait_for(3)
    assert sorted(m.message["Subject"][:8] for m in mails) == ["[CASE-1]", "[CASE-2]", "[CASE-3]"]
    assert len(capture.wait_for(3, staff=True)) == 3
    capture.wait_for(4, timeout=1.5)
    assert len(capture.all_mails) == 6
    assert len(service.cli_json("outbox", "list", "--status", "sent")) == 6


def test_a_relay_without_smtputf8_fails_only_the_mail_that_needs_it(service: RunningService,
                                                                    capture: CaptureServer) -> None:
    """Mail to an address outside ASCII needs SMTPUTF8: refused by the relay, that one mail fails
    (shown on its case; `intake outbox retry` sends it once the relay offers it) and the queue goes on."""
    capture.stop()
    capture.start(smtputf8=False)
    raw = ("From: Jörg <jörg@acme.example>\r\nTo: support@example.com\r\nSubject: [SEV-3] Umlaute\r\n"
           "Message-ID: <utf8-relay@acme.example>\r\n\r\nGrüße\r\n").encode()
    assert service.send(raw, sender="j@acme.example")[0] == 250
    assert service.send(make_mail(subject="[SEV-3] plain"))[0] == 250
    [ann] = capture.wait_for(1)
    assert ann.recipients == ["ann@acme.example"] and len(capture.wait_for(2, staff=True)) == 2
    [failed] = service.cli_json("outbox", "list", "--status", "failed")
    assert failed["recipients"] == ["jörg@acme.example"] and "SMTPUTF8" in failed["last_error"]
    [event] = [e for e in service.cli_json("tickets", "show", "CASE-1")["events"] if e["kind"] == "delivery_failed"]
    assert event["data"]["mail"] == "acknowledgment" and event["data"]["to"] == ["jörg@acme.example"]
    assert event["data"]["outbox"] == failed["id"] and "SMTPUTF8" in event["data"]["error"]
    capture.stop()
    capture.start()
    assert service.cli("outbox", "retry")[0] == 0
    assert [m.recipients for m in capture.wait_for(2)][1] == ["jörg@acme.example"]


def test_a_backlog_is_delivered_in_back_to_back_passes(start_service, capture: CaptureServer,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that leased a full batch is followed at once by the next: the pause that gathers
    mail on its way applies only after a pass that found less, or delivery would lag behind intake."""
    service = start_service(worker=False)
    mails = CLAIM_BATCH // 2 + 5        # an acknowledgment and a staff notification each: over one batch
    for n in range(mails):
        assert service.send(make_mail(subject=f"[SEV-3] backlog {n}", sender=f"u{n}@acme.example"))[0] == 250
    monkeypatch.setattr(service_module, "GATHER_SECONDS", 60)
    stopping = threading.Event()
    worker = threading.Thread(target=outbox_worker, args=(service.services, stopping, 60), daemon=True)
    worker.start()
    try:
        assert len(capture.wait_for(mails, timeout=10)) == mails
        assert len(capture.wait_for(mails, timeout=10, staff=True)) == mails
    finally:
        stopping.set()
        worker.join(5)


def test_a_failing_step_quarantines_the_mail_and_replay_finishes_it(
        start_service, tmp_path: Path, capture: CaptureServer) -> None:  # type: ignore[no-untyped-def]
    overrides = tmp_path / "overrides"
    (overrides / "acknowledgment").mkdir(parents=True)
    (overrides / "acknowledgment" / "subject.txt").write_text("[{{ ticket.ref }}] {{ no_such_variable }}")
    svc = start_service(replace={'templates_dir = ""': f'templates_dir = "{overrides}"'})
    assert svc.send(make_mail())[0] == 250        # stored: the sender is done
    [quarantined] = svc.cli_json("quarantine", "list")
    assert "no_such_variable" in quarantined["reason"]
    assert svc.cli_json("tickets", "list") == []
    (overrides / "acknowledgment" / "subject.txt").unlink()   # the administrator fixes the template
    code, out = svc.cli("quarantine", "replay")
    assert code == 0, out
    assert svc.cli_json("quarantine", "list") == []
    assert len(svc.cli_json("tickets", "list")) == 1
    assert len(capture.wait_for(1)) == 1
