"""Follow-ups end to end with a hand-set clock: pending -> attempt 1 -> attempt 2 on another business
day -> closed with the closing notice; a customer reply cancels the rest and restarts the SLA clock."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from intake.sweep import FollowupSweep
from models import TicketStatus
from notifications.sweeps import run_sweep
from tests.clocked import Desk, at, make_desk
from tests.conftest import CaptureServer, make_mail, run_cli

pytestmark = pytest.mark.integration

THU_OPEN, THU_PENDING = at(3, 12, 10), at(3, 12, 11)       # 1bd after 11:00 Thursday is Friday 11:00
ANN = "ann@acme.example"


@pytest.fixture
def desk(tmp_path: Path, db_url: str, capture: CaptureServer) -> Desk:
    return make_desk(tmp_path, db_url, capture, THU_OPEN)


def _pending_case(desk: Desk) -> tuple[int, str]:
    """A SEV-3 enterprise case (1 business day) opened Thursday 10:00, pending from 11:00."""
    case = desk.mail(make_mail(subject="[SEV-3] Export fails", cc="bob@acme.example"), THU_OPEN)
    [ack] = desk.deliver(ANN)
    desk.set_status(case, TicketStatus.PENDING, THU_PENDING)
    return case, str(ack.message["Message-ID"])


def _kinds(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [a.kind for a in actions]


def test_two_attempts_on_separate_business_days_then_closed(desk: Desk) -> None:
    case, ack_id = _pending_case(desk)
    assert desk.sweep(at(3, 13, 16)) == [] and desk.sweep(at(3, 16, 8, 59)) == []

    [first] = desk.sweep(at(3, 16, 9))                        # Monday, start of the business day
    assert (first.kind, first.detail, first.recipients) == ("followup", "attempt 1 of 2",
                                                             ("ann@acme.example", "bob@acme.example"))
    [mail] = desk.deliver(ANN)
    msg = mail.message
    assert sorted(mail.recipients) == ["ann@acme.example", "bob@acme.example"]
    assert msg["From"] == "support@example.com" and msg["Reply-To"].startswith("support+")
    assert msg["In-Reply-To"] == ack_id and msg["Auto-Submitted"] == "auto-generated"
    assert f"[CASE-{case}]" in msg["Subject"] and "reminder 1 of 2" in msg.get_body(("plain",)).get_content()

    assert desk.sweep(at(3, 16, 16)) == []                    # never twice on one business day
    [second] = desk.sweep(at(3, 17, 9))                       # Tuesday
    assert second.detail == "attempt 2 of 2"
    [mail] = desk.deliver(ANN)
    body = mail.message.get_body(("plain",)).get_content()
    assert "last reminder" in body and "Tue 17 Mar 2026 17:00 CET" in body

    assert desk.sweep(at(3, 17, 16, 59)) == []
    [closing] = desk.sweep(at(3, 17, 17))                     # grace: 1 business day after attempt 2
    assert (closing.kind, closing.detail) == ("closing_notice", "closed after 2 attempts")
    [mail] = desk.deliver(ANN)
    body = mail.message.get_body(("plain",)).get_content()
    assert "Case closed" in mail.message["Subject"] and "reply to this email within 14 days" in body
    assert "Tue 31 Mar 2026 17:00 CEST" in body                # the reopen window's end

    assert desk.sweep(at(3, 18, 9)) == [] and desk.deliver(ANN) == []
    show = desk.show(case)
    assert show["status"] == "closed" and show["followup"] == {"attempts": 2, "next_at": None}
    assert [e["data"]["attempt"] for e in show["events"] if e["kind"] == "followup_sent"] == [1, 2]
    assert show["events"][-1]["data"]["why"] == "no answer to follow-ups"


def test_customer_reply_after_attempt_one_cancels_attempt_two_and_resumes_the_sla(desk: Desk) -> None:
    case, _ = _pending_case(desk)
    assert _kinds(desk.sweep(at(3, 16, 9))) == ["followup"]
    [followup] = desk.deliver(ANN)
    desk.clock.now = at(3, 16, 9, 30)
    sla = desk.show(case)["sla"]
    assert sla["paused"] is True and sla["due"] is None and sla["used"] == 3600

    reply = make_mail(subject="Re: Export fails", body="Here is the log.\n",
                      headers={"In-Reply-To": str(followup.message["Message-ID"])})
    assert desk.mail(reply, at(3, 16, 10)) == case
    show = desk.show(case)
    assert show["status"] == "open" and show["followup"]["next_at"] is None
    # 1 h used before the pause, 7 h left from Monday 10:00: due Monday 17:00, stored as well as computed
    assert show["sla"]["due"] == show["first_response_due"] == "2026-03-16T17:00:00+01:00"
    assert show["sla"]["paused"] is False

    assert _kinds(desk.sweep(at(3, 16, 15))) == ["sla_warning"]   # 75 % of 8 h: 1 h before, 5 h after
    assert _kinds(desk.sweep(at(3, 17, 9))) == ["sla_breach"]     # and no attempt 2
    notices = [m.message["Subject"] for m in desk.deliver("alice@example.com")
               if m.message["Subject"].startswith("[SLA")]
    assert [subject.split("]")[0] for subject in notices] == ["[SLA WARNING", "[SLA BREACH"]
    assert desk.sweep(at(3, 20, 9)) == [] and desk.show(case)["status"] == "open"


def test_a_service_down_for_days_sends_one_attempt_then_keeps_the_schedule(desk: Desk) -> None:
    case, _ = _pending_case(desk)
    [late] = desk.sweep(at(3, 18, 12))                        # first run since Thursday: Wednesday noon
    assert (late.kind, late.detail, late.due) == ("followup", "attempt 1 of 2", at(3, 16, 9))
    assert desk.sweep(at(3, 18, 12, 1)) == []
    assert desk.show(case)["followup"] == {"attempts": 1, "next_at": "2026-03-19T09:00:00+01:00"}
    assert _kinds(desk.sweep(at(3, 19, 9))) == ["followup"]
    assert len(desk.deliver(ANN)) == 2


def test_pending_again_starts_a_new_sequence(desk: Desk) -> None:
    case, _ = _pending_case(desk)
    desk.sweep(at(3, 16, 9))
    desk.mail(make_mail(subject=f"Re: [CASE-{case}] Export fails", body="Still failing.\n"), at(3, 16, 10))
    desk.set_status(case, TicketStatus.PENDING, at(3, 16, 11))
    assert desk.sweep(at(3, 17, 9)) == []                     # 1bd after Monday 11:00 is Tuesday 11:00
    [again] = desk.sweep(at(3, 18, 9))
    assert again.detail == "attempt 1 of 2"
    subject = f"[CASE-{case}] Waiting for your answer: [SEV-3] Export fails"
    assert [m.message["Subject"] for m in desk.deliver(ANN)] == [subject] * 2


def test_dry_run_reports_and_changes_nothing(desk: Desk) -> None:
    case, _ = _pending_case(desk)
    for _ in range(2):
        [would] = desk.sweep(at(3, 16, 9), dry_run=True)
        assert would.kind == "followup"
    assert desk.deliver(ANN) == []
    assert desk.show(case)["followup"]["attempts"] == 0
    assert _kinds(desk.sweep(at(3, 16, 9))) == ["followup"]


def test_sweep_command_once_as_of_a_given_time(desk: Desk) -> None:
    case, _ = _pending_case(desk)
    config = str(desk.config_path)
    assert run_cli("--config", config, "sweep", "--once", "--now", "2026-03-16T08:00") == (
        0, "as of 2026-03-16T08:00:00+01:00: nothing due\n")
    code, out = run_cli("--config", config, "sweep", "--once", "--now", "2026-03-16T09:00", "--dry-run")
    assert code == 0 and out.splitlines() == [
        f"CASE-{case}  followups: would send followup (attempt 1 of 2), due 2026-03-16T09:00:00+01:00, "
        "to ann@acme.example, bob@acme.example",
        "as of 2026-03-16T09:00:00+01:00: 1 action (dry run: nothing changed)"]
    code, out = run_cli("--config", config, "sweep", "--once", "--now", "2026-03-16T08:00:00Z", "--json")
    assert code == 0 and json.loads(out)["actions"][0]["kind"] == "followup"
    assert desk.sweep(at(3, 16, 9, 30)) == []
    assert run_cli("--config", config, "sweep", "--once", "--now", "Monday")[0] == 2


def test_a_sweep_in_small_batches_looks_at_every_due_case_once(desk: Desk) -> None:
    cases = [desk.mail(make_mail(subject=f"[SEV-3] Case {n}", sender=f"customer{n}@acme.example"), THU_OPEN,
                       sender=f"customer{n}@acme.example") for n in range(7)]
    for case in cases:
        desk.set_status(case, TicketStatus.PENDING, THU_PENDING)
    sweep = FollowupSweep(desk.services.config, desk.services.outbox)
    actions = run_sweep(desk.services.sessions, sweep, at(3, 16, 9), batch=3)      # Monday: attempt 1 due
    assert sorted(a.ticket_id for a in actions) == sorted(cases) and set(_kinds(actions)) == {"followup"}
    assert run_sweep(desk.services.sessions, sweep, at(3, 16, 9), batch=3) == []     # done: nothing twice
