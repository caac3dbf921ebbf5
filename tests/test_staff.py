"""Staff work a case by email: notifications with secret reply addresses, commands applied
all-or-nothing, replies relayed to the customer, notes kept internal, spoofing refused."""
from __future__ import annotations

import pytest

from tests.conftest import TRUSTED_AR, CaptureServer, RunningService, make_mail

pytestmark = pytest.mark.integration

TWO_STAFF = {'members = [{ address = "alice@example.com", name = "Alice" }]':
             'members = [{ address = "alice@example.com", name = "Alice" }, { address = "bob@example.com", name = "Bob" }]'}


@pytest.fixture
def staffed(start_service) -> RunningService:  # type: ignore[no-untyped-def]
    return start_service(replace=TWO_STAFF)


def _case(service: RunningService, capture: CaptureServer) -> dict:
    """A new case: returns the ack, the customer's Message-ID and alice's notification."""
    raw = make_mail(cc="carl@acme.example", message_id="<first@acme.example>")
    assert service.send(raw)[0] == 250
    [ack] = capture.wait_for(1)
    notes = capture.wait_for(2, staff=True)
    alice = next(m for m in notes if m.recipients == ["alice@example.com"]).message
    return {"ack": ack.message, "alice": alice}


def _staff_reply(service: RunningService, notification, body: str, sender: str = "alice@example.com",
                 to: str | None = None, headers: dict[str, str] | None = None) -> None:
    to = to or notification["Reply-To"]
    raw = make_mail(subject=f"Re: {notification['Subject']}", sender=sender, to=to, body=body,
                    headers={"In-Reply-To": notification["Message-ID"], **(headers or {})})
    assert service.send(raw, sender=sender, recipients=(to,))[0] == 250


def test_each_staff_member_gets_a_notification_with_an_own_secret_reply_address(
        staffed: RunningService, capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    notes = capture.staff_mails
    assert sorted(m.recipients[0] for m in notes) == ["alice@example.com", "bob@example.com"]
    tokens = {m.message["Reply-To"] for m in notes}
    assert len(tokens) == 2 and case["ack"]["Reply-To"] not in tokens
    for mail in capture.mails:                     # no staff token ever reaches the customer side
        assert not any(t.split("@")[0] in mail.raw.decode("latin-1") for t in tokens)
    assert "The replica is 20 min behind." in case["alice"].get_body(("plain",)).get_content()


def test_commands_apply_and_the_reply_is_relayed_without_them(staffed: RunningService,
                                                              capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "#pending\n#severity 1\n#take\n\nHi Ann,\nplease send the logs.\n\n"
                 "Alice\n\nOn Mon, Support wrote:\n> New case CASE-1\n")
    show = staffed.cli_json("tickets", "show", "CASE-1")
    assert (show["status"], show["severity"], show["assignee"]) == ("pending", 1, "alice@example.com")
    assert show["first_response_at"] is not None
    actors = {e["kind"]: e["actor"] for e in show["events"]}
    assert actors["status_changed"] == actors["severity_changed"] == "alice@example.com"
    [_, relayed] = capture.wait_for(2)
    assert sorted(relayed.recipients) == ["ann@acme.example", "carl@acme.example"]
    message = relayed.message
    body = message.get_body(("plain",)).get_content()
    assert "please send the logs." in body and "Alice" in body
    assert "#pending" not in body and "#severity" not in body and "New case CASE-1" not in body
    assert message["From"] == "support@example.com" and message["Auto-Submitted"] is None
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert message["Reply-To"] == case["ack"]["Reply-To"]


def test_a_customer_reply_to_the_relayed_mail_threads_and_reopens(staffed: RunningService,
                                                                 capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "#pending\nPlease send logs.")
    [_, relayed] = capture.wait_for(2)
    raw = make_mail(subject="Re: logs", headers={"In-Reply-To": relayed.message["Message-ID"]})
    assert staffed.send(raw)[0] == 250
    show = staffed.cli_json("tickets", "show", "CASE-1")
    assert show["status"] == "open" and show["messages"][-1]["author"] == "ann@acme.example"


def test_a_note_stays_internal_and_goes_to_the_other_staff(staffed: RunningService,
                                                           capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "#note\nCustomer is on the old version; check with dev.")
    show = staffed.cli_json("tickets", "show", "CASE-1")
    assert show["messages"][-1]["kind"] == "note"
    assert "old version" in show["messages"][-1]["body_text"]
    notes = capture.wait_for(3, staff=True)
    assert notes[-1].recipients == ["bob@example.com"] and "old version" in notes[-1].raw.decode()
    capture.wait_for(2, timeout=1)
    assert len(capture.mails) == 1                  # only the acknowledgment reached the customer


def test_one_bad_line_applies_nothing_and_names_the_line(staffed: RunningService,
                                                        capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "#pending\n#severity 7\nFixed it.")
    show = staffed.cli_json("tickets", "show", "CASE-1")
    assert (show["status"], show["severity"]) == ("open", 2)
    [error] = [m for m in capture.wait_for(3, staff=True) if "not applied" in m.message["Subject"]]
    assert error.recipients == ["alice@example.com"]
    body = error.message.get_body(("plain",)).get_content()
    assert "#severity 7" in body and "#status open|pending|resolved|closed" in body
    capture.wait_for(2, timeout=1)
    assert len(capture.mails) == 1


def test_cc_adds_a_participant_who_then_gets_the_relay(staffed: RunningService, capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "#cc dana@acme.example\nLooping in Dana.")
    [_, relayed] = capture.wait_for(2)
    assert "dana@acme.example" in relayed.recipients
    assert "dana@acme.example" in staffed.cli_json("tickets", "show", "CASE-1")["participants"]


def _revoke_all(service: RunningService) -> None:
    code, out = service.cli("tickets", "revoke-tokens", "CASE-1")
    assert code == 0 and "2 staff reply address(es) revoked" in out, out


@pytest.mark.parametrize("attempt", [
    "forged_from_no_token", "untrusted_authserv", "misaligned_dkim", "forged_header_below_trusted_one",
    "revoked_token", "token_for_another_case"])
def test_spoofed_staff_mail_changes_nothing_and_is_flagged(staffed: RunningService, capture: CaptureServer,
                                                           attempt: str) -> None:
    case = _case(staffed, capture)
    body = "#status closed\n#severity 4\nClosing this."
    ack = case["ack"]
    reply_to_ack = {"to": "support@example.com"}
    if attempt == "forged_from_no_token":
        _staff_reply(staffed, ack, body, **reply_to_ack)
    elif attempt == "untrusted_authserv":
        _staff_reply(staffed, ack, body, headers={"Authentication-Results": TRUSTED_AR.replace("mx.", "evil.")},
                     **reply_to_ack)
    elif attempt == "misaligned_dkim":
        _staff_reply(staffed, ack, body, headers={"Authentication-Results":
                     "mx.example.com; dkim=pass header.d=evil.example; spf=fail"}, **reply_to_ack)
    elif attempt == "forged_header_below_trusted_one":
        raw = make_mail(subject="Re: x", sender="alice@example.com", body=body,
                        headers={"Authentication-Results": "mx.example.com; dkim=fail header.d=example.com",
                                 "In-Reply-To": ack["Message-ID"]})
        raw = raw.replace(b"Authentication-Results: mx.example.com; dkim=fail header.d=example.com",
                          b"Authentication-Results: mx.example.com; dkim=fail header.d=example.com\n"
                          b"Authentication-Results: " + TRUSTED_AR.encode())
        assert staffed.send(raw, sender="alice@example.com")[0] == 250
    elif attempt == "revoked_token":
        _revoke_all(staffed)
        _staff_reply(staffed, case["alice"], body)
    elif attempt == "token_for_another_case":
        assert staffed.send(make_mail(subject="[SEV-3] second case", message_id="<second@acme.example>"))[0] == 250
        [_, second_ack] = capture.wait_for(2)
        _staff_reply(staffed, case["alice"], body, headers={"In-Reply-To": second_ack.message["Message-ID"]})
    for ticket in staffed.cli_json("tickets", "list"):
        assert ticket["status"] == "open" and ticket["severity"] in (2, 3)
    flagged = [e for t in staffed.cli_json("tickets", "list")
               for e in staffed.cli_json("tickets", "show", t["ref"])["events"] if e["kind"] == "suspected_spoofing"]
    assert len(flagged) == 1
    assert any("SUSPECTED SPOOFING" in m.message["Subject"] for m in capture.wait_for(10, timeout=1.5, staff=True))


def test_trusted_authentication_results_lets_a_plain_staff_reply_act(staffed: RunningService,
                                                                     capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["ack"], "#resolved\n", to="support@example.com",
                 headers={"Authentication-Results": TRUSTED_AR})
    show = staffed.cli_json("tickets", "show", "CASE-1")
    assert [e for e in show["events"] if e["kind"] == "commands_rejected"]   # '#resolved' is no command
    _staff_reply(staffed, case["ack"], "#status resolved\nAll good now.", to="support@example.com",
                 headers={"Authentication-Results": TRUSTED_AR})
    assert staffed.cli_json("tickets", "show", "CASE-1")["status"] == "resolved"


def test_staff_out_of_office_never_reaches_the_customer(staffed: RunningService, capture: CaptureServer) -> None:
    case = _case(staffed, capture)
    _staff_reply(staffed, case["alice"], "I am away until Monday.", headers={"Auto-Submitted": "auto-replied"})
    capture.wait_for(2, timeout=1)
    assert len(capture.mails) == 1
    assert staffed.cli_json("tickets", "show", "CASE-1")["status"] == "open"


def test_routing_notify_addresses_hear_of_new_cases_without_a_reply_address(
        service: RunningService, capture: CaptureServer) -> None:
    assert service.send(make_mail(subject="[SEV-1] production down"))[0] == 250
    capture.wait_for(1)
    deadline_mails = capture.wait_for(2, staff=True, timeout=2)   # alice only: oncall is no staff member
    assert [m.recipients for m in deadline_mails] == [["alice@example.com"]]
    [pager] = [m for m in capture.all_mails if m.recipients == ["oncall@example.com"]]
    assert pager.message["Reply-To"] is None
    assert "routing rule" in pager.message.get_body(("plain",)).get_content()
