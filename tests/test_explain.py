"""`intake routing explain`: the facts, every rule's verdict and the decision, as text and as the
JSON of PRODUCT.md section 8; it opens no database and stores nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_mail, run_cli
from tests.test_routing_rules import RULE_NAMES, mail_with_attachment, write_rules_config


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The dozen-rule config, with a database nobody may open: explain must not try."""
    return write_rules_config(tmp_path, db_url=f"sqlite:///{tmp_path}/never/created.db")


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("routing explain opened a database")
    monkeypatch.setattr("models.db.make_engine", refuse)
    monkeypatch.setattr("intake.service.make_engine", refuse)


def explain(config_path: Path, raw: bytes, *extra: str) -> tuple[int, str]:
    mail = config_path.parent / "mail.eml"
    mail.write_bytes(raw)
    return run_cli("--config", str(config_path), "routing", "explain", str(mail), *extra)


def explain_json(config_path: Path, raw: bytes, *extra: str) -> dict:  # type: ignore[type-arg]
    code, out = explain(config_path, raw, "--json", *extra)
    assert code == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def test_json_has_the_facts_every_rule_and_the_decision(config_path: Path) -> None:
    report = explain_json(config_path, make_mail("Re: [SEV-2] CVE in the parser", "Ann <ann@acme.example>"))
    assert report["facts"] == {
        "sender": "ann@acme.example", "domain": "acme.example", "organization": "Acme", "tier": "enterprise",
        "severity": 2, "severity_tag": "[SEV-2]", "severity_source": "tag",
        "severity_reading": 'tag "[SEV-2]" -> level 2', "mailbox": "support@example.com",
        "recipients": ["support@example.com"], "subject": "Re: [SEV-2] CVE in the parser", "has_attachment": False}
    assert [r["name"] for r in report["rules"]] == RULE_NAMES
    assert report["rules"][:3] == [
        {"name": "tag-attachments", "matched": False, "failed": "has_attachment", "reached": True, "stop": False},
        {"name": "tag-enterprise", "matched": True, "failed": None, "reached": True, "stop": False},
        {"name": "security-subject", "matched": True, "failed": None, "reached": True, "stop": True}]
    assert all(not r["reached"] for r in report["rules"][3:])
    assert report["decision"] == {
        "rule": "security-subject", "queue": "security", "assignee": "bob@example.com",
        "tags": ["enterprise", "email"], "notify": ["am@example.com"], "severity": 2,
        "policy": {"on_untagged": "reject", "on_unknown_sender": "hold"},
        "matched": ["tag-enterprise", "security-subject"]}


@pytest.mark.parametrize(("raw", "extra", "rule", "failures"), [
    (make_mail("[SEV-3] sync", "pat@eu.partner.example"), (), "partner-domains",
     ["has_attachment", "tier", "subject", "severity", "mailbox", "recipient", "sender", None]),
    (make_mail("[SEV-4] copy", "ann@acme.example", to="support+billing@example.com"), (), "billing-plus",
     ["has_attachment", None, "subject", "severity", "mailbox", None]),
    (make_mail("[SEV-3] a", "gus@globex.example"), ("--to", "legal@example.com"), "legal-mailbox",
     ["has_attachment", "tier", "subject", "severity", None]),
    (mail_with_attachment("[SEV-3] logs", "gus@globex.example"), (), "default",
     [None, "tier", "subject", "severity", "mailbox", "recipient", "sender", "sender_domain", "severity", "body",
      "header.X-Priority", "header.X-Ticket-System"]),
])
def test_each_reached_rule_says_which_condition_failed(config_path: Path, raw: bytes, extra: tuple[str, ...],
                                                       rule: str, failures: list[str | None]) -> None:
    report = explain_json(config_path, raw, *extra)
    assert report["decision"]["rule"] == rule
    assert [r["failed"] for r in report["rules"] if r["reached"]] == failures


def test_a_rule_past_the_deciding_one_is_shown_as_not_reached_with_what_it_would_say(config_path: Path) -> None:
    report = explain_json(config_path, make_mail("[SEV-1] invoice", "ann@acme.example", body="invoice #7\n"))
    invoice = next(r for r in report["rules"] if r["name"] == "invoice-body")
    assert (report["decision"]["rule"], invoice["reached"], invoice["matched"]) == ("critical-to-oncall", False, True)


def test_an_untagged_mail_shows_the_policy_that_will_apply(config_path: Path) -> None:
    report = explain_json(config_path, make_mail("no tag", "ann@acme.example"))
    assert (report["facts"]["severity"], report["facts"]["severity_tag"], report["facts"]["severity_source"]) == (
        None, None, None)
    assert report["facts"]["severity_reading"] == "no severity tag"
    assert (report["decision"]["severity"], report["decision"]["policy"]["on_untagged"]) == (None, "reject")


def test_text_report_reads_facts_rules_and_decision(config_path: Path) -> None:
    code, out = explain(config_path, make_mail("[P1] down", "ann@acme.example"))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "Facts" and "Rules" in lines and "Decision" in lines
    assert "  severity        1 (tag \"[P1]\")" in lines
    assert "  organization    Acme" in lines
    assert "   1. tag-attachments     not matched: has_attachment" in lines
    assert "   2. tag-enterprise      matched, adds its tags and notify, goes on" in lines
    assert "   4. critical-to-oncall  matched, decides" in lines
    assert "   5. legal-mailbox       not reached (would fail: mailbox)" in lines
    assert "  12. from-ticket-system  not reached (would fail: header.X-Ticket-System)" in lines
    assert "  rule            critical-to-oncall" in lines
    assert "  notify          am@example.com, oncall@example.com" in lines
    assert "  assignee        -" in lines


def test_nothing_is_stored(config_path: Path) -> None:
    assert explain(config_path, make_mail())[0] == 0
    assert not (config_path.parent / "never").exists()


def test_a_missing_or_unparseable_file_is_an_error(config_path: Path) -> None:
    code, out = run_cli("--config", str(config_path), "routing", "explain", str(config_path.parent / "absent.eml"))
    assert code == 1 and "absent.eml: No such file or directory" in out
    code, out = explain(config_path, b"   \n")
    assert code == 1 and "not a mail: empty" in out
