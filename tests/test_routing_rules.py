"""Routing rules, table-driven: a dozen rules and a set of mails, asserting the queue, assignee,
tags, notify addresses and severity each mail gets, and that the case records why."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest

from intake.config import Config, load_config
from intake.decide import NewCase, Refusal, decide_new
from intake.parse import parse_mail
from routing.rules import Actions, Facts, Match, Rule, route
from tests.conftest import EXTRA_CONFIG, SHIPPED_CONFIG, RunningService, make_mail

ROUTING = r"""
[routing]
queues = ["triage", "oncall", "billing", "security", "vip", "legal", "partners"]
default = { queue = "triage", tags = ["email"] }

[[routing.rules]]
name = "tag-attachments"
match = { has_attachment = true }
tags = ["has-files"]
stop = false

[[routing.rules]]
name = "tag-enterprise"
match = { tier = "enterprise" }
tags = ["enterprise"]
notify = ["am@example.com"]
stop = false

[[routing.rules]]
name = "security-subject"
match = { subject = '\b(cve|vulnerability)\b' }
queue = "security"
assignee = "Bob@example.com"
severity_floor = 2

[[routing.rules]]
name = "critical-to-oncall"
match = { severity = [1] }
queue = "oncall"
notify = ["oncall@example.com"]

[[routing.rules]]
name = "legal-mailbox"
match = { mailbox = "legal@example.com" }
queue = "legal"
on_unknown_sender = "accept"

[[routing.rules]]
name = "billing-plus"
match = { recipient = "support+billing@example.com" }
queue = "billing"

[[routing.rules]]
name = "ceo"
match = { sender = "ceo@globex.example" }
queue = "vip"
assignee = "alice@example.com"

[[routing.rules]]
name = "partner-domains"
match = { sender_domain = "partner.example" }
queue = "partners"

[[routing.rules]]
name = "globex-high"
match = { organization = "Globex", severity = "1-2" }
queue = "vip"

[[routing.rules]]
name = "invoice-body"
match = { body = 'invoice\s+#?\d+' }
queue = "billing"
severity_ceiling = 3

[[routing.rules]]
name = "priority-header"
match = { header = { "X-Priority" = '^1' } }
tags = ["x-priority"]
stop = false

[[routing.rules]]
name = "from-ticket-system"
match = { header = { "X-Ticket-System" = "" } }
queue = "partners"
tags = ["relayed"]
"""

ORGANIZATIONS = EXTRA_CONFIG + """
[[organizations]]
name = "Partner"
domains = ["partner.example"]
tier = "advanced"
"""

RULE_NAMES = ["tag-attachments", "tag-enterprise", "security-subject", "critical-to-oncall", "legal-mailbox",
              "billing-plus", "ceo", "partner-domains", "globex-high", "invoice-body", "priority-header",
              "from-ticket-system"]


def rules_config_text(db_url: str = "sqlite:///unused.db", routing: str = ROUTING) -> str:
    """The shipped config with a second mailbox, a second staff member and the rules above."""
    text = SHIPPED_CONFIG.read_text().split("[routing]")[0]
    text = text.replace('url = "sqlite:///intake.db"', f'url = "{db_url}"')
    text = text.replace('members = [{ address = "alice@example.com", name = "Alice" }]',
                        'members = [{ address = "alice@example.com", name = "Alice" },\n'
                        '           { address = "bob@example.com", name = "Bob" }]')
    text = text.replace("[severity]", '[[mailboxes]]\naddress = "legal@example.com"\n\n[severity]', 1)
    return text + routing + ORGANIZATIONS


def write_rules_config(tmp_path: Path, db_url: str = "sqlite:///unused.db", routing: str = ROUTING) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(rules_config_text(db_url, routing))
    return path


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_rules_config(tmp_path))


def mail_with_attachment(subject: str, sender: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = sender, "support@example.com", subject, "<a@b>"
    msg.set_content("Logs attached.\n")
    msg.add_attachment(b"log line\n", maintype="text", subtype="plain", filename="app.log")
    return msg.as_bytes()


def decide(config: Config, raw: bytes, to: str = "support@example.com") -> NewCase | Refusal:
    mail = parse_mail(raw)
    return decide_new(mail, config.mailbox(to), (to,), config, datetime(2026, 3, 2, 10, tzinfo=timezone.utc),
                      lambda org: 0)


# (what it proves, mail, recipient) -> (rule, queue, assignee, tags, notify, severity)
CASES = [
    ("no deciding rule: the default, with the tags of the rules that go on",
     make_mail("[SEV-3] question", "ann@acme.example"), "support@example.com",
     ("default", "triage", None, ["enterprise", "email"], ["am@example.com"], 3)),
    ("severity list; notify of a tag rule and the deciding rule",
     make_mail("[SEV-1] prod down", "ann@acme.example"), "support@example.com",
     ("critical-to-oncall", "oncall", None, ["enterprise", "email"], ["am@example.com", "oncall@example.com"], 1)),
    ("subject regex (case-insensitive), assignee, severity floor",
     make_mail("[SEV-3] CVE-2024-1234 in your lib", "ann@acme.example"), "support@example.com",
     ("security-subject", "security", "bob@example.com", ["enterprise", "email"], ["am@example.com"], 2)),
    ("has_attachment tags and goes on",
     mail_with_attachment("[SEV-3] logs", "gus@globex.example"), "support@example.com",
     ("default", "triage", None, ["has-files", "email"], [], 3)),
    ("organization and a severity range",
     make_mail("[SEV-2] slow", "gus@globex.example"), "support@example.com",
     ("globex-high", "vip", None, ["email"], [], 2)),
    ("sender address beats the later organization rule",
     make_mail("[SEV-2] board question", "CEO <ceo@globex.example>"), "support@example.com",
     ("ceo", "vip", "alice@example.com", ["email"], [], 2)),
    ("sender domain includes subdomains",
     make_mail("[SEV-3] sync", "pat@eu.partner.example"), "support@example.com",
     ("partner-domains", "partners", None, ["email"], [], 3)),
    ("recipient with a plus-tag",
     make_mail("[SEV-4] invoice copy", "ann@acme.example", to="support+billing@example.com"),
     "support+billing@example.com",
     ("billing-plus", "billing", None, ["enterprise", "email"], ["am@example.com"], 4)),
    ("first match wins: the severity rule comes before the body rule",
     make_mail("[SEV-1] down", "ann@acme.example", body="About invoice #123.\n"), "support@example.com",
     ("critical-to-oncall", "oncall", None, ["enterprise", "email"], ["am@example.com", "oncall@example.com"], 1)),
    ("body regex and a severity ceiling",
     make_mail("[SEV-2] wrong amount", "ann@acme.example", body="Our invoice 42 is wrong.\n"), "support@example.com",
     ("invoice-body", "billing", None, ["enterprise", "email"], ["am@example.com"], 3)),
    ("header regex tags and goes on",
     make_mail("[SEV-3] hi", "ann@acme.example", headers={"X-Priority": "1 (Highest)"}), "support@example.com",
     ("default", "triage", None, ["enterprise", "x-priority", "email"], ["am@example.com"], 3)),
    ("header presence only",
     make_mail("[SEV-3] relayed", "ann@acme.example", headers={"X-Ticket-System": ""}), "support@example.com",
     ("from-ticket-system", "partners", None, ["enterprise", "relayed", "email"], ["am@example.com"], 3)),
    ("mailbox, with a policy override that accepts an unknown sender",
     make_mail("[SEV-3] subpoena", "clerk@court.example", to="legal@example.com"), "legal@example.com",
     ("legal-mailbox", "legal", None, ["email"], [], 3)),
]


@pytest.mark.parametrize(("mail", "to", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mail_gets_the_queue_assignee_tags_and_severity_of_its_rule(
        config: Config, mail: bytes, to: str, expected: tuple) -> None:  # type: ignore[type-arg]
    decision = decide(config, mail, to)
    assert isinstance(decision, NewCase), decision
    a = decision.routing.actions
    assert (decision.routing.rule, a.queue, a.assignee, list(a.tags), list(a.notify), decision.severity) == expected


def test_an_unknown_sender_is_held_where_no_rule_overrides_the_mailbox_policy(config: Config) -> None:
    decision = decide(config, make_mail("[SEV-3] hello", "clerk@court.example"))
    assert isinstance(decision, Refusal) and decision.reason == "unknown_sender"


def test_an_untagged_mail_under_a_default_level_policy_is_routed_as_that_level(tmp_path: Path) -> None:
    routing = ROUTING.replace('on_unknown_sender = "accept"', 'on_unknown_sender = "accept"\non_untagged = "default:1"')
    config = load_config(write_rules_config(tmp_path, routing=routing))
    decision = decide(config, make_mail("no tag here", "clerk@court.example", to="legal@example.com"),
                      "legal@example.com")
    assert isinstance(decision, NewCase)
    # legal-mailbox set the policy; as a SEV-1 the mail is routed again, and the SEV-1 rule comes first
    assert (decision.severity, decision.routing.rule) == (1, "critical-to-oncall")
    decision = decide(config, make_mail("no tag either", "ann@acme.example"))
    assert isinstance(decision, Refusal) and decision.reason == "untagged"      # support@ keeps reject


def test_the_trace_names_the_first_condition_that_failed(config: Config) -> None:
    decision = decide(config, make_mail("[SEV-3] sync", "pat@eu.partner.example"))
    assert isinstance(decision, NewCase)
    trace = {t.name: t.failed for t in decision.routing.trace}
    assert list(trace) == RULE_NAMES[:8]          # evaluation stops at the deciding rule
    assert trace == {"tag-attachments": "has_attachment", "tag-enterprise": "tier", "security-subject": "subject",
                     "critical-to-oncall": "severity", "legal-mailbox": "mailbox", "billing-plus": "recipient",
                     "ceo": "sender", "partner-domains": None}


def test_conditions_in_one_rule_must_all_hold() -> None:
    match = Match(organization=("Globex",), severity=(1, 2), header=(("X-Priority", None),))
    facts = Facts(mailbox="support@example.com", recipients=(), sender="g@globex.example",
                  sender_domain="globex.example", organization="Globex", tier="advanced", severity=2,
                  subject="", body="", has_attachment=False, headers={})
    assert match.first_failure(facts) == "header.X-Priority"
    assert match.first_failure(Facts(**{**facts.__dict__, "headers": {"x-priority": ("5",)}})) is None
    assert match.first_failure(Facts(**{**facts.__dict__, "severity": 3})) == "severity"


def test_without_rules_the_default_decides_and_fills_what_a_rule_leaves_out() -> None:
    facts = Facts("support@example.com", (), "a@b.example", "b.example", None, None, 3, "", "", False, {})
    default = Actions(queue="triage", assignee="alice@example.com", notify=("lead@example.com",))
    assert route(facts, (), default).rule == "default"
    routed = route(facts, (Rule("r", Match(), Actions(tags=("x",))),), default)
    assert (routed.rule, routed.actions.queue, routed.actions.assignee, routed.actions.notify) == (
        "r", "triage", "alice@example.com", ("lead@example.com",))


@pytest.mark.parametrize(("earlier", "later", "covered"), [
    (Match(), Match(severity=(1,)), True),
    (Match(severity=(1, 2)), Match(severity=(1,), tier=("enterprise",)), True),
    (Match(severity=(1,)), Match(severity=(1, 2)), False),
    (Match(sender_domain=("example.com",)), Match(sender_domain=("eu.example.com",)), True),
    (Match(sender_domain=("eu.example.com",)), Match(sender_domain=("example.com",)), False),
    (Match(recipient=("support@example.com",)), Match(recipient=("support+x@example.com",)), True),
    (Match(header=(("X-A", None),)), Match(header=(("x-a", re.compile("1")),)), True),
    (Match(header=(("X-A", re.compile("1")),)), Match(header=(("X-A", None),)), False),
    (Match(tier=("enterprise",)), Match(), False),
])
def test_a_rule_is_shadowed_only_when_an_earlier_match_covers_it(earlier: Match, later: Match, covered: bool) -> None:
    assert earlier.covers(later) is covered


@pytest.mark.integration
def test_a_case_records_which_rule_routed_it_and_why(start_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc: RunningService = start_service(
        extra="\n[[organizations]]\nname = \"Globex\"\ndomains = [\"globex.example\"]\ntier = \"advanced\"\n"
              "\n[[routing.rules]]\nname = \"tag-enterprise\"\nmatch = { tier = \"enterprise\" }\n"
              "tags = [\"enterprise\"]\nstop = false\n"
              "\n[[routing.rules]]\nname = \"globex-to-billing\"\nmatch = { organization = \"Globex\" }\n"
              "queue = \"billing\"\nassignee = \"alice@example.com\"\n")
    assert svc.send(make_mail("[SEV-3] invoice", "gus@globex.example"), sender="gus@globex.example")[0] == 250
    assert svc.send(make_mail("[SEV-3] question", "ann@acme.example"))[0] == 250
    globex, acme = sorted(svc.cli_json("tickets", "list"), key=lambda t: t["ref"])
    assert (globex["queue"], globex["assignee"], acme["queue"], acme["tags"]) == (
        "billing", "alice@example.com", "triage", ["enterprise"])
    events = {e["kind"]: e["data"] for e in svc.cli_json("tickets", "show", globex["ref"])["events"]}
    assert events["created"]["rule"] == "globex-to-billing"
    assert events["routed"] == {
        "rule": "globex-to-billing", "matched": ["globex-to-billing"],
        "not_matched": {"critical-to-oncall": "severity", "tag-enterprise": "tier"},
        "queue": "billing", "assignee": "alice@example.com", "tags": [], "notify": []}
    routed = next(e["data"] for e in svc.cli_json("tickets", "show", acme["ref"])["events"] if e["kind"] == "routed")
    assert (routed["rule"], routed["matched"]) == ("default", ["tag-enterprise"])
