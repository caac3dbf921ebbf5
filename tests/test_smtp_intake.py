"""End to end over real SMTP: a customer's mail becomes a case and an acknowledgment, or a
reasoned rejection or hold. State is read through the CLI's JSON (PRODUCT.md §8)."""
from __future__ import annotations

import re

import pytest

from tests.conftest import CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration


def test_tagged_mail_opens_a_case_and_acknowledges_requester_and_cc(service: RunningService,
                                                                    capture: CaptureServer) -> None:
    raw = make_mail(subject="[SEV-2] Replication lag on prod", cc="Bob <bob@acme.example>, support@example.com")
    code, reply = service.send(raw, sender="ann@acme.example")
    assert code == 250, reply

    [ticket] = service.cli_json("tickets", "list")
    assert ticket["ref"] == "CASE-1"
    assert (ticket["severity"], ticket["status"], ticket["queue"]) == (2, "open", "triage")
    assert ticket["requester"] == "ann@acme.example"
    assert ticket["participants"] == ["ann@acme.example", "bob@acme.example"]
    assert ticket["subject"] == "[SEV-2] Replication lag on prod"
    assert ticket["first_response_due"] is not None and re.search(r"[+-]\d\d:\d\d$", ticket["created_at"])

    [ack] = capture.wait_for(1)
    assert sorted(ack.recipients) == ["ann@acme.example", "bob@acme.example"]
    message = ack.message
    assert message["From"] == "support@example.com"
    assert message["Subject"].startswith("[CASE-1] ")
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"].strip("<>") in raw.decode()
    assert re.fullmatch(r"support\+[a-z2-7]{16}@example\.com", message["Reply-To"])
    body = message.get_body(("plain",)).get_content()
    assert "High" in body and "CASE-1" in body


def test_critical_mail_is_routed_to_oncall_with_a_two_hour_target(service: RunningService) -> None:
    assert service.send(make_mail(subject="Database down [P1]"))[0] == 250
    [ticket] = service.cli_json("tickets", "list")
    assert (ticket["severity"], ticket["queue"]) == (1, "oncall")
    show = service.cli_json("tickets", "show", ticket["ref"])
    created = next(e for e in show["events"] if e["kind"] == "created")
    assert created["data"]["rule"] == "critical-to-oncall"
    from datetime import datetime
    due = datetime.fromisoformat(ticket["first_response_due"]) - datetime.fromisoformat(ticket["created_at"])
    assert due.total_seconds() == pytest.approx(2 * 3600, abs=1)


@pytest.mark.parametrize(("subject", "reason"), [
    ("Replication lag on prod", "untagged"),
    ("High CPU usage on node 3", "untagged"),
    ("SEV-5 everything is on fire", "invalid_level"),
    ("[SEV-1] db down, Priority: Low", "ambiguous"),
])
def test_mail_without_a_valid_tag_is_rejected_with_the_protocol_explained(
        service: RunningService, capture: CaptureServer, subject: str, reason: str) -> None:
    assert service.send(make_mail(subject=subject))[0] == 250
    assert service.cli_json("tickets", "list") == []
    [record] = service.cli_json("rejected", "list")
    assert record["reason"] == reason
    assert record["subject"] == subject and record["sender"] == "ann@acme.example"
    assert set(record) >= {"id", "reason", "sender", "subject", "message_id", "received_at"}
    [answer] = capture.wait_for(1)
    assert answer.recipients == ["ann@acme.example"]
    body = answer.message.get_body(("plain",)).get_content()
    for name in ("Critical", "High", "Medium", "Low"):
        assert name in body


def test_encoded_word_subject_is_read_for_its_tag(service: RunningService) -> None:
    raw = make_mail(subject="=?iso-8859-1?q?[SEV-3]_F=F6rfr=E5gan_om_licens?=")
    assert service.send(raw)[0] == 250
    [ticket] = service.cli_json("tickets", "list")
    assert ticket["severity"] == 3 and ticket["subject"] == "[SEV-3] Förfrågan om licens"


def test_hold_and_default_policies_for_untagged_mail(start_service) -> None:  # type: ignore[no-untyped-def]
    svc = start_service(replace={'on_untagged = "reject"': 'on_untagged = "hold"'})
    assert svc.send(make_mail(subject="No tag here"))[0] == 250
    [held] = svc.cli_json("held", "list")
    assert held["reason"] == "untagged"
    code, out = svc.cli("held", "release", str(held["id"]), "--severity", "3")
    assert code == 0, out
    [ticket] = svc.cli_json("tickets", "list")
    assert ticket["severity"] == 3
    assert svc.cli_json("held", "list") == []


def test_default_level_policy_opens_a_case(start_service) -> None:  # type: ignore[no-untyped-def]
    svc = start_service(replace={'on_untagged = "reject"': 'on_untagged = "default:4"'})
    assert svc.send(make_mail(subject="Question about invoices"))[0] == 250
    [ticket] = svc.cli_json("tickets", "list")
    assert ticket["severity"] == 4


def test_unknown_domain_is_held_without_an_answer(service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(sender="eve@unknown.example"), sender="eve@unknown.example")[0] == 250
    [held] = service.cli_json("held", "list")
    assert (held["reason"], held["sender"]) == ("unknown_sender", "eve@unknown.example")
    assert service.cli_json("tickets", "list") == []
    code, _ = service.cli("held", "release", str(held["id"]))
    assert code == 0
    [ticket] = service.cli_json("tickets", "list")
    assert ticket["severity"] == 2 and ticket["requester"] == "eve@unknown.example"
    assert len(capture.wait_for(1)) == 1      # the released case is acknowledged


def test_community_tier_gets_a_pointer_to_the_forum(service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(sender="kim@hobby.example"), sender="kim@hobby.example")[0] == 250
    [record] = service.cli_json("rejected", "list")
    assert record["reason"] == "no_email_support"
    [answer] = capture.wait_for(1)
    assert "https://community.example.com" in answer.message.get_body(("plain",)).get_content()


def test_incident_quota_holds_the_extra_request_and_tells_the_account(
        start_service, capture: CaptureServer) -> None:  # type: ignore[no-untyped-def]
    svc = start_service(replace={"incidents_per_year = 12": "incidents_per_year = 2"})
    for n in range(3):
        assert svc.send(make_mail(subject=f"[SEV-3] issue {n}", sender="li@globex.example"),
                        sender="li@globex.example")[0] == 250
    assert len(svc.cli_json("tickets", "list")) == 2
    [held] = svc.cli_json("held", "list")
    assert held["reason"] == "quota_exceeded"
    mails = capture.wait_for(3)
    notice = [m for m in mails if m.recipients == ["accounts@globex.example"]]
    assert len(notice) == 1 and "Globex" in notice[0].message.get_body(("plain",)).get_content()


def test_same_message_id_twice_is_stored_once(service: RunningService, capture: CaptureServer) -> None:
    raw = make_mail(message_id="<once@acme.example>")
    assert service.send(raw)[0] == 250
    code, reply = service.send(raw.replace(b"The replica", b"Resent: the replica"))
    assert code == 250 and b"already" in reply
    assert len(service.cli_json("tickets", "list")) == 1
    capture.wait_for(2, timeout=1.5)
    assert len(capture.mails) == 1


def test_identical_bytes_without_message_id_are_stored_once(service: RunningService) -> None:
    raw = b"From: ann@acme.example\r\nTo: support@example.com\r\nSubject: [SEV-4] typo\r\n\r\nA typo.\r\n"
    assert service.send(raw)[0] == 250
    assert service.send(raw)[0] == 250
    assert len(service.cli_json("tickets", "list")) == 1


def test_oversized_mail_is_refused_during_data(start_service) -> None:  # type: ignore[no-untyped-def]
    svc = start_service(replace={"max_message_bytes = 26214400": "max_message_bytes = 20000"})
    code, reply = svc.send(make_mail(body="x" * 30000))
    assert code == 552, reply
    assert svc.cli_json("tickets", "list") == [] and svc.cli_json("rejected", "list") == []


def test_unparseable_mail_is_kept_as_a_rejection_with_250(service: RunningService,
                                                          capture: CaptureServer) -> None:
    from pathlib import Path
    blob = (Path(__file__).resolve().parents[2] / "shared/corpus/public/outlook-msg-binary-not-mime.bin")
    raw = blob.read_bytes() if blob.exists() else b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(range(256)) * 8
    assert service.send(raw)[0] == 250
    [record] = service.cli_json("rejected", "list")
    assert record["reason"] == "unparseable"
    capture.wait_for(1, timeout=1)
    assert capture.mails == []


def test_header_injection_in_subject_does_not_reach_outgoing_headers(
        service: RunningService, capture: CaptureServer) -> None:
    raw = make_mail(subject="=?utf-8?q?[SEV-2]_x=0D=0ABcc:_victim@evil.example?=")
    assert service.send(raw)[0] == 250
    [ack] = capture.wait_for(1)
    assert "victim@evil.example" not in ack.recipients
    assert ack.message["Bcc"] is None and ack.message.get_all("Subject") is not None
    assert len(ack.message.get_all("Subject")) == 1


def test_unknown_recipient_is_refused_at_rcpt(service: RunningService) -> None:
    import smtplib
    with smtplib.SMTP("127.0.0.1", service.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("ann@acme.example")
        code, _ = smtp.rcpt("nobody@elsewhere.example")
    assert code == 550


def test_a_sender_outside_ascii_is_taken_over_smtputf8(service: RunningService, capture: CaptureServer) -> None:
    """RFC 6531: a relay hands such mail on only to a server that offers SMTPUTF8, else it bounces
    it (aiosmtpd's Controller offers it unless told not to)."""
    import smtplib
    raw = ("From: Jörg <jörg@acme.example>\r\nTo: support@example.com\r\nSubject: [SEV-3] Umlaute\r\n"
           "Message-ID: <utf8-1@acme.example>\r\n\r\nGrüße\r\n").encode()
    with smtplib.SMTP("127.0.0.1", service.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("smtputf8")
        assert smtp.sendmail("jörg@acme.example", ["support@example.com"], raw, mail_options=["SMTPUTF8"]) == {}
    assert service.processor.wait_idle()
    case = service.cli_json("tickets", "show", "CASE-1")
    assert case["requester"] == "jörg@acme.example" and case["subject"] == "[SEV-3] Umlaute"
    assert capture.wait_for(1, staff=True)


@pytest.mark.parametrize(("subject", "severity"), [
    ("SEV-1 db down", 1), ("SEV1 db down", 1), ("sev 2 lag", 2), ("Severity 3 slow", 3),
    ("Severity level 4 typo", 4), ("severity: 2 lag", 2), ("SEVERITY-LEVEL-1 down", 1), ("Sev#2 lag", 2),
    ("[S3] slow", 3), ("[P1] down", 1), ("(p2) lag", 2), ("[Critical] down", 1), ("(high) lag", 2),
    ("[URGENT] down", 1), ("[Normal] slow", 3), ("Priority: High lag", 2), ("severity=low typo", 4),
    ("Prio critical down", 1), ("Re: Fwd: AW: [SEV-2] lag", 2), ("[SEV-2] [High] replication lag", 2),
    ("=?utf-8?b?W1NFVi0xXSBEYXRhYmFzZW4gw6RyIG5lcmU=?=", 1),          # utf-8, base64
    ("=?iso-8859-1?q?Prio_critical_l=E4get?=", 1),                       # latin-1, quoted-printable
    ("=?gb2312?b?W1AyXSDK/b7dv+K5ytXP?=", 2),                            # gb2312
    ("=?koi8-r?q?=5BLow=5D_=F0=D2=C9=D7=C5=D4?=", 4),                    # koi8-r
], ids=lambda value: str(value)[:30])
def test_protocol_tag_forms_over_smtp(service: RunningService, subject: str, severity: int) -> None:
    assert service.send(make_mail(subject=subject))[0] == 250
    [ticket] = service.cli_json("tickets", "list")
    assert ticket["severity"] == severity


@pytest.mark.parametrize(("subject", "reason"), [
    ("Low disk warning", "untagged"), ("SEV-1a down", "untagged"), ("[P10] down", "untagged"),
    ("[S12] down", "untagged"), ("SEV-0 down", "invalid_level"), ("SEV-10 down", "invalid_level"),
    ("Severity 12 down", "invalid_level"), ("[SEV-1] down Priority: Low", "ambiguous"),
], ids=lambda value: str(value)[:30])
def test_protocol_near_misses_over_smtp(service: RunningService, subject: str, reason: str) -> None:
    assert service.send(make_mail(subject=subject))[0] == 250
    assert [r["reason"] for r in service.cli_json("rejected", "list")] == [reason]
