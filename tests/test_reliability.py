"""Nothing lost, nothing twice: crashes around the commit, a relay outage, a failing step."""
from __future__ import annotations

import os
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CaptureServer, RunningService, crlf, free_port, make_mail, run_cli, write_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def _serve(config: Path, crash_at: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "INTAKE_CRASH_AT"}
    if crash_at:
        env["INTAKE_CRASH_AT"] = crash_at
    proc = subprocess.Popen([sys.executable, "-m", "intake", "--config", str(config), "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode() if proc.stdout else "serve exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("listener did not start")


def _send(port: int, raw: bytes) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.ehlo()
        smtp.mail("ann@acme.example")
        smtp.rcpt("support@example.com")
        return smtp.data(crlf(raw))[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("crash_at", ["before_commit", "after_commit", "before_process_commit"])
def test_killed_around_the_commit_then_resent_gives_one_case_and_one_acknowledgment(
        tmp_path: Path, db_url: str, capture: CaptureServer, crash_at: str) -> None:
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port)
    raw = make_mail(message_id="<crash-test@acme.example>")
    proc = _serve(config, crash_at)
    try:
        _wait_listening(port, proc)
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError)):
            _send(port, raw)           # the client never sees a 250
        assert proc.wait(10) == -9
    finally:
        _stop(proc)
    proc = _serve(config)
    try:
        _wait_listening(port, proc)
        assert _send(port, raw) == 250  # the sender's retry
        capture.wait_for(1)
        code, out = run_cli("--config", str(config), "tickets", "list", "--json")
        assert code == 0 and out.count('"ref"') == 1, out
        capture.wait_for(2, timeout=2)
        assert len(capture.mails) == 1
    finally:
        _stop(proc)


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
