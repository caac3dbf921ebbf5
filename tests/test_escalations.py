"""SLA warnings and breach notices (each once, to the right people), SEV-1 update reminders, and the
SLA as `tickets show` and `intake sla report` tell it; all with a hand-set clock."""
from __future__ import annotations

import json
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import update

from intake.sla_report import sla_report
from models import Direction, Message, Ticket, TicketStatus
from models.db import unit_of_work
from tests.clocked import Desk, at, make_desk
from tests.conftest import CaptureServer, Captured, make_mail, run_cli

pytestmark = pytest.mark.integration

ALICE, ONCALL = "alice@example.com", "oncall@example.com"


@pytest.fixture
def desk(tmp_path: Path, db_url: str, capture: CaptureServer) -> Desk:
    return make_desk(tmp_path, db_url, capture, at(3, 14, 10))


def _kinds(desk: Desk, when: datetime) -> list[str]:
    return [a.kind for a in desk.sweep(when)]


def _notices(mails: list[Captured], to: str) -> list[str]:
    """Subjects of the SLA and reminder notices among `mails` to `to` (not the per-mail staff notifications)."""
    return [m.message["Subject"] for m in mails
            if to in m.recipients and m.message["Subject"].startswith(("[SLA", "[UPDATE"))]


def _respond(desk: Desk, case: int, when: datetime) -> None:
    """What a relayed staff reply records: the first response, and an update to the customer."""
    with unit_of_work(desk.services.sessions) as session:
        session.execute(update(Ticket).where(Ticket.id == case, Ticket.first_response_at.is_(None))
                        .values(first_response_at=when))
        session.add(Message(ticket_id=case, direction=Direction.OUT, author=ALICE, kind="staff_reply",
                            subject="Re: case", body_text="Looking into it.", created_at=when))


def test_warning_at_75_percent_and_breach_past_100_each_once(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-2] Replication lag"), at(3, 14, 10))   # Saturday; 4 h around the clock
    assert _kinds(desk, at(3, 14, 12, 59)) == []
    assert _kinds(desk, at(3, 14, 13)) == ["sla_warning"]
    assert _kinds(desk, at(3, 14, 13, 30)) == [] and _kinds(desk, at(3, 14, 14)) == []   # on time until 14:00
    assert _kinds(desk, at(3, 14, 14, 1)) == ["sla_breach"]
    assert _kinds(desk, at(3, 14, 18)) == [] and _kinds(desk, at(3, 16, 9)) == []
    mails = [m for m in desk.deliver(ALICE) if m.message["Subject"].startswith("[SLA")]
    assert [m.message["Subject"] for m in mails] == [
        f"[SLA WARNING] [CASE-{case}] SEV-2 [SEV-2] Replication lag: 75 % of the response time used",
        f"[SLA BREACH] [CASE-{case}] SEV-2 [SEV-2] Replication lag: no response in time"]
    assert all(m.message["Reply-To"].startswith("support+s") for m in mails)     # a staff token, not the case's
    assert "Time left: 1 h 00 min, due Sat 14 Mar 2026 14:00 CET" in mails[0].message.get_body(("plain",)).get_content()
    sla = desk.show(case)["sla"]
    assert (sla["breached"], sla["target"], sla["clock"], sla["left"]) == (True, "4h", "24x7", -43 * 3600)
    assert sla["warned_at"] == "2026-03-14T13:00:00+01:00" and sla["breach_notified_at"] == "2026-03-14T14:01:00+01:00"


def test_notices_go_to_the_rules_notify_list_and_the_assignee(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-1] Production down"), at(3, 14, 10))   # critical-to-oncall: notify oncall
    with unit_of_work(desk.services.sessions) as session:
        session.execute(update(Ticket).where(Ticket.id == case).values(assignee="bob@example.com"))
    [warning] = desk.sweep(at(3, 14, 11, 30))
    assert warning.recipients == (ONCALL, "bob@example.com")
    mails = desk.deliver()
    assert _notices(mails, ONCALL) == _notices(mails, "bob@example.com") == [
        f"[SLA WARNING] [CASE-{case}] SEV-1 [SEV-1] Production down: 75 % of the response time used"]
    assert _notices(mails, ALICE) == []


def test_a_service_down_past_the_deadline_sends_only_the_breach_notice(desk: Desk) -> None:
    desk.mail(make_mail(subject="[SEV-2] Replication lag"), at(3, 14, 10))
    assert _kinds(desk, at(3, 14, 20)) == ["sla_breach"]
    assert _kinds(desk, at(3, 14, 20, 1)) == []
    assert [s.split("]")[0] for s in _notices(desk.deliver(), ALICE)] == ["[SLA BREACH"]


def _notifications(desk: Desk) -> dict[int, EmailMessage]:
    """Alice's new-case notifications by case, each with its secret reply address."""
    return {int(m.message["Subject"].split("[CASE-")[1].split("]")[0]): m.message for m in desk.deliver(ALICE)
            if m.message["Reply-To"].startswith("support+s")}


def _staff_reply(desk: Desk, notification: EmailMessage, body: str, when: datetime) -> None:
    """Alice answers a notification at `when`, through the pipeline."""
    token_address = notification["Reply-To"]
    desk.mail(make_mail(subject=f"Re: {notification['Subject']}", sender=ALICE, to=token_address, body=body,
                        headers={"In-Reply-To": notification["Message-ID"]}), when, sender=ALICE, to=token_address)


def test_set_pending_after_the_deadline_before_the_sweep_still_tells_the_breach(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-2] Replication lag"), at(3, 14, 10))   # due 14:00
    _staff_reply(desk, _notifications(desk)[case], "#pending\n", at(3, 14, 14, 30))     # no sweep since 10:00
    assert desk.show(case)["status"] == "pending"
    assert [s.split("]")[0] for s in _notices(desk.deliver(), ALICE)] == ["[SLA BREACH"]
    assert _kinds(desk, at(3, 14, 14, 31)) == [] and _kinds(desk, at(3, 16, 9)) == []
    sla = desk.show(case)["sla"]
    assert (sla["breached"], sla["breach_notified_at"]) == (True, "2026-03-14T14:30:00+01:00")


def test_set_pending_before_the_deadline_or_answered_late_sends_no_breach_notice(desk: Desk) -> None:
    early = desk.mail(make_mail(subject="[SEV-2] Replication lag"), at(3, 14, 10))
    late = desk.mail(make_mail(subject="[SEV-2] Disk full", message_id="<disk@acme.example>"), at(3, 14, 10))
    notifications = _notifications(desk)
    _staff_reply(desk, notifications[early], "#pending\n", at(3, 14, 13, 59))
    _staff_reply(desk, notifications[late], "#pending\nFreed 20 GB, please check.\n", at(3, 14, 14, 30))
    assert _notices(desk.deliver(), ALICE) == []
    assert desk.show(early)["sla"]["breached"] is False
    late_sla = desk.show(late)["sla"]
    assert (late_sla["breached"], late_sla["breach_notified_at"]) == (True, None)     # answered late, as the report says


def test_the_first_response_stops_the_clock(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-2] Replication lag"), at(3, 14, 10))
    _respond(desk, case, at(3, 14, 11))
    assert _kinds(desk, at(3, 14, 13)) == [] and _kinds(desk, at(3, 15, 9)) == []
    sla = desk.show(case)["sla"]
    assert (sla["breached"], sla["paused"], sla["used"], sla["responded_at"]) == (
        False, False, 3600, "2026-03-14T11:00:00+01:00")


def test_pending_pauses_the_warning_and_resuming_works_out_the_new_times(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-3] Export fails"), at(3, 12, 10))   # Thursday; due Friday 10:00
    desk.set_status(case, TicketStatus.PENDING, at(3, 12, 11))
    assert _kinds(desk, at(3, 12, 16)) == [] and _kinds(desk, at(3, 13, 11)) == []
    desk.set_status(case, TicketStatus.OPEN, at(3, 16, 10))       # not through the pipeline: only a "look now"
    assert _kinds(desk, at(3, 16, 10, 1)) == []
    show = desk.show(case)
    assert show["first_response_due"] == show["sla"]["due"] == "2026-03-16T17:00:00+01:00"
    assert _kinds(desk, at(3, 16, 14, 59)) == []
    assert _kinds(desk, at(3, 16, 15)) == ["sla_warning"]


def test_sev1_staff_reminder_when_no_customer_update_for_the_interval(desk: Desk) -> None:
    case = desk.mail(make_mail(subject="[SEV-1] Production down"), at(3, 18, 10))   # updates every 4 h

    def reminders(when: datetime) -> int:
        return [a.kind for a in desk.sweep(when)].count("sev1_reminder")

    assert reminders(at(3, 18, 13, 59)) == 0
    assert reminders(at(3, 18, 14)) == 1 and reminders(at(3, 18, 14, 30)) == 0
    assert reminders(at(3, 18, 18)) == 1                        # still no update: again after 4 h
    _respond(desk, case, at(3, 18, 18, 30))
    assert reminders(at(3, 18, 22, 29)) == 0 and reminders(at(3, 18, 22, 30)) == 1
    desk.set_status(case, TicketStatus.PENDING, at(3, 18, 23))     # waiting on the customer: no reminders
    assert reminders(at(3, 19, 9)) == 0
    mails = desk.deliver()
    assert [s for s in _notices(mails, ONCALL) if s.startswith("[UPDATE")] == [
        f"[UPDATE DUE] [CASE-{case}] SEV-1 [SEV-1] Production down"] * 3
    assert _notices(mails, ALICE) == []


def test_tickets_show_and_sla_report(desk: Desk) -> None:
    met = desk.mail(make_mail(subject="[SEV-3] One"), at(3, 12, 10))
    late = desk.mail(make_mail(subject="[SEV-3] Two"), at(3, 12, 11))
    desk.mail(make_mail(subject="[SEV-3] Three"), at(3, 12, 12))           # never answered
    sev1 = desk.mail(make_mail(subject="[SEV-1] Four"), at(3, 12, 13))
    _respond(desk, met, at(3, 12, 12))                                      # 2 business hours
    _respond(desk, late, at(3, 13, 15))                                     # 12 business hours, due after 8
    _respond(desk, sev1, at(3, 12, 14, 30))                                 # 1.5 h of 2
    with desk.services.sessions() as session:
        rows = [r.as_dict() for r in sla_report(session, desk.services.config, at(3, 20))]
        since = sla_report(session, desk.services.config, at(3, 20), at(3, 12, 12, 30))
    assert rows == [
        {"tier": "enterprise", "severity": 1, "target": "2h", "cases": 1, "met": 1, "breached": 0,
         "median_seconds": 5400, "p90_seconds": 5400},
        {"tier": "enterprise", "severity": 3, "target": "1bd", "cases": 3, "met": 1, "breached": 2,
         "median_seconds": 7 * 3600, "p90_seconds": 12 * 3600}]
    assert [(r.severity, r.cases) for r in since] == [(1, 1)]
    code, out = run_cli("--config", str(desk.config_path), "sla", "report", "--json", "--since", "2026-03-12")
    assert code == 0 and [r["cases"] for r in json.loads(out)] == [1, 3]
    code, out = run_cli("--config", str(desk.config_path), "sla", "report")
    assert code == 0 and out.splitlines()[2].split()[:6] == ["enterprise", "SEV-3", "1bd", "3", "1", "2"]
    code, out = run_cli("--config", str(desk.config_path), "tickets", "show", f"CASE-{met}")
    assert code == 0 and "SLA 1bd (business): met, due 2026-03-13T10:00:00+01:00, used 2 h 00 min" in out
