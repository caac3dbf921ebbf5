"""`intake routing explain`: how the rules route a mail, and why, without storing or sending
anything (no database is opened).

The facts and the decision come from `intake.decide.route_mail`, the function the pipeline
uses, so the explanation cannot drift from what the service does. The mail is treated as a
new request: threading, robot screening and the incident quota are not evaluated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from intake.config import Config, MailboxConfig
from intake.decide import RoutedMail, route_mail
from intake.parse import parse_mail
from routing.rules import RuleTrace, clamp_severity, full_trace, without_plus


@dataclass(frozen=True)
class Explanation:
    routed: RoutedMail
    trace: tuple[RuleTrace, ...]   # every rule, in order
    stops: tuple[bool, ...]        # each rule's `stop`
    severity: int | None           # after the deciding rule's floor and ceiling


def explain(raw: bytes, config: Config, recipients: tuple[str, ...] = ()) -> Explanation:
    """Route `raw` as a new request; `recipients` stand for the envelope (default: To and Cc).
    Raises UnparseableMail for input that is not mail."""
    mail = parse_mail(raw, max_attachment_bytes=config.max_attachment_bytes, max_attachments=config.max_attachments,
                      limits=config.parse_limits)
    recipients = tuple(r.lower() for r in recipients) or tuple(a.email for a in (*mail.to, *mail.cc) if a.email)
    routed = route_mail(mail, _mailbox(config, recipients), recipients, config)
    severity = routed.facts.severity
    return Explanation(routed, full_trace(routed.facts, config.rules, routed.routing),
                       tuple(rule.stop for rule in config.rules),
                       None if severity is None else clamp_severity(severity, routed.routing.actions))


def _mailbox(config: Config, recipients: tuple[str, ...]) -> MailboxConfig:
    """The first recipient that is one of our mailboxes (plus-tags ignored), else the first mailbox."""
    for address in recipients:
        if (box := config.mailbox(address)).address == without_plus(address):
            return box
    return config.mailboxes[0]


def as_json(e: Explanation) -> dict[str, Any]:
    """The stable shape of PRODUCT.md section 8 (with a few more keys)."""
    f, reading, actions = e.routed.facts, e.routed.reading, e.routed.routing.actions
    return {
        "facts": {"sender": f.sender, "domain": f.sender_domain, "organization": f.organization, "tier": f.tier,
                  "severity": f.severity,
                  "severity_tag": ", ".join(reading.tags) if reading.outcome == "tagged" else None,
                  "severity_source": e.routed.severity_source, "severity_reading": reading.describe(),
                  "mailbox": f.mailbox, "recipients": list(f.recipients), "subject": f.subject,
                  "has_attachment": f.has_attachment},
        "rules": [{"name": t.name, "matched": t.matched, "failed": t.failed, "reached": t.reached, "stop": stop}
                  for t, stop in zip(e.trace, e.stops)],
        "decision": {"rule": e.routed.routing.rule, "queue": actions.queue, "assignee": actions.assignee,
                     "tags": list(actions.tags), "notify": list(actions.notify), "severity": e.severity,
                     "policy": {"on_untagged": e.routed.on_untagged,
                                "on_unknown_sender": e.routed.on_unknown_sender},
                     "matched": list(e.routed.routing.matched)},
    }


def as_text(e: Explanation) -> str:
    data = as_json(e)
    facts, decision = data["facts"], data["decision"]
    severity = "none" if facts["severity"] is None else str(facts["severity"])
    if facts["severity_source"] == "tag":
        severity += f' (tag "{facts["severity_tag"]}")'
    elif facts["severity_source"] == "on_untagged":
        severity += f" (no tag; on_untagged = {decision['policy']['on_untagged']})"
    else:
        severity += f" ({facts['severity_reading']})"
    lines = ["Facts", *_rows([
        ("sender", facts["sender"]), ("domain", facts["domain"]), ("organization", facts["organization"]),
        ("tier", facts["tier"]), ("severity", severity), ("mailbox", facts["mailbox"]),
        ("recipients", ", ".join(facts["recipients"])), ("subject", facts["subject"]),
        ("has_attachment", "yes" if facts["has_attachment"] else "no")])]
    lines += ["", "Rules"]
    width, digits = max((len(r["name"]) for r in data["rules"]), default=0), len(str(len(data["rules"])))
    lines += [f"  {n:>{digits}}. {rule['name']:<{width}}  {_verdict(rule, decision['rule'])}"
              for n, rule in enumerate(data["rules"], 1)]
    if not data["rules"]:
        lines.append("  (no rules)")
    policy = decision["policy"]
    lines += ["", "Decision", *_rows([
        ("rule", decision["rule"]), ("queue", decision["queue"]), ("assignee", decision["assignee"]),
        ("tags", ", ".join(decision["tags"])), ("notify", ", ".join(decision["notify"])),
        ("severity", decision["severity"]),
        ("policy", f"on_untagged = {policy['on_untagged']}, on_unknown_sender = {policy['on_unknown_sender']}")])]
    return "\n".join(lines)


def _verdict(rule: dict[str, Any], deciding: str) -> str:
    if not rule["reached"]:
        return "not reached" + (" (would match)" if rule["matched"] else f" (would fail: {rule['failed']})")
    if not rule["matched"]:
        return f"not matched: {rule['failed']}"
    return "matched, decides" if rule["stop"] and rule["name"] == deciding else "matched, adds its tags and notify, goes on"


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return [f"  {name:<15} {'-' if value in (None, '') else value}" for name, value in pairs]
