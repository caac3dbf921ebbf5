"""Stage 5, decide: what a new request becomes. Pure: no I/O, every reason recorded."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Callable

from intake.config import Config, MailboxConfig
from intake.parse import ParsedEmail
from models import Outcome
from routing.policy import Organization, Tier, domain_of, find_organization
from routing.rules import Facts, Routing, clamp_severity, route
from routing.severity import SeverityReading, read_severity
from routing.sla import due_at


@dataclass(frozen=True)
class NewCase:
    severity: int
    reading: SeverityReading
    routing: Routing
    organization: Organization | None
    tier: Tier | None
    due: datetime | None


@dataclass(frozen=True)
class Refusal:
    outcome: Outcome               # REJECTED or HELD
    reason: str                    # untagged, invalid_level, ambiguous, unknown_sender, no_email_support, quota_exceeded
    detail: str
    answer: str | None = None      # the template to answer the sender with, if any
    reading: SeverityReading | None = None
    organization: Organization | None = None
    incidents_used: int = 0


Decision = NewCase | Refusal


@dataclass(frozen=True)
class RoutedMail:
    """Who sent a new request and where the rules send it; `intake routing explain` shows the same."""
    organization: Organization | None
    tier: Tier | None
    reading: SeverityReading
    facts: Facts
    routing: Routing
    on_untagged: str               # the mailbox policies in effect, after a rule's overrides
    on_unknown_sender: str
    severity_source: str | None    # "tag", "given" (a release, a follow-up case), "on_untagged", or None


def route_mail(mail: ParsedEmail, mailbox: MailboxConfig, recipients: tuple[str, ...], config: Config,
               severity: int | None = None) -> RoutedMail:
    """Build the facts and run the rules. `severity` stands in for the subject's level; an untagged
    mail under `on_untagged = "default:N"` is routed again as level N, as it will be opened."""
    org = find_organization(mail.sender.email, config.organizations)
    tier = config.tiers.get(org.tier) if org else None
    reading = read_severity(mail.subject, config.levels)
    facts = _facts(mail, mailbox, recipients, org, tier, severity or reading.level)
    source = "given" if severity else ("tag" if reading.level else None)
    routing = route(facts, config.rules, config.default_actions)
    on_untagged = routing.actions.on_untagged or mailbox.on_untagged
    on_unknown = routing.actions.on_unknown_sender or mailbox.on_unknown_sender
    if facts.severity is None and reading.outcome == "untagged" and on_untagged.startswith("default:"):
        facts, source = replace(facts, severity=int(on_untagged.partition(":")[2])), "on_untagged"
        routing = route(facts, config.rules, config.default_actions)
    return RoutedMail(org, tier, reading, facts, routing, on_untagged, on_unknown, source)


def decide_new(mail: ParsedEmail, mailbox: MailboxConfig, recipients: tuple[str, ...], config: Config,
               now: datetime, incidents_used: Callable[[Organization], int],
               released_severity: int | None = None, releasing: bool = False) -> Decision:
    """Sender -> organization -> tier, severity grammar, routing, mailbox policy, quota."""
    routed = route_mail(mail, mailbox, recipients, config, released_severity)
    org, tier, reading, routing = routed.organization, routed.tier, routed.reading, routed.routing
    if org is None and routed.on_unknown_sender != "accept" and not releasing:
        return Refusal(Outcome.HELD if routed.on_unknown_sender == "hold" else Outcome.REJECTED, "unknown_sender",
                       f"{domain_of(mail.sender.email) or 'no sender domain'} belongs to no organization",
                       reading=reading)
    if tier is not None and not tier.email_tickets:
        return Refusal(Outcome.REJECTED, "no_email_support", f"tier {tier.name} has no email support",
                       answer="community", reading=reading, organization=org)
    severity = routed.facts.severity
    if severity is None:
        refusal = _untagged(reading, routed.on_untagged, releasing, config)
        if isinstance(refusal, Refusal):
            return refusal
        severity = refusal
        routing = route(replace(routed.facts, severity=severity), config.rules, config.default_actions)
    if org is not None and tier is not None and tier.incidents_per_year is not None and not releasing:
        used = incidents_used(org)
        if used >= tier.incidents_per_year:
            return Refusal(Outcome.HELD, "quota_exceeded",
                           f"{org.name} used {used} of {tier.incidents_per_year} incidents this contract year",
                           reading=reading, organization=org, incidents_used=used)
    severity = clamp_severity(severity, routing.actions)
    return NewCase(severity, reading, routing, org, tier, _due(now, severity, tier, config))


def _untagged(reading: SeverityReading, policy: str, releasing: bool, config: Config) -> int | Refusal:
    """The level to use for a mail without a valid tag (`default:N` is applied by route_mail), or
    the refusal that policy demands."""
    if reading.outcome in ("invalid_level", "ambiguous"):
        return Refusal(Outcome.REJECTED, reading.outcome, reading.describe(), answer="rejection", reading=reading)
    if releasing:   # an administrator released it without naming a level: the least urgent one
        return config.levels[-1].level
    if policy == "hold":
        return Refusal(Outcome.HELD, "untagged", reading.describe(), reading=reading)
    return Refusal(Outcome.REJECTED, "untagged", reading.describe(), answer="rejection", reading=reading)


def _facts(mail: ParsedEmail, mailbox: MailboxConfig, recipients: tuple[str, ...], org: Organization | None,
           tier: Tier | None, severity: int | None) -> Facts:
    return Facts(mailbox=mailbox.address, recipients=recipients, sender=mail.sender.email,
                 sender_domain=domain_of(mail.sender.email), organization=org.name if org else None,
                 tier=tier.name if tier else None, severity=severity, subject=mail.subject,
                 body=mail.body_text, has_attachment=bool(mail.attachments), headers=mail.headers)


def _due(now: datetime, severity: int, tier: Tier | None, config: Config) -> datetime | None:
    if tier is None or severity not in tier.response:
        return None
    return due_at(now, tier.response[severity], tier.clock_for(severity), config.calendars[tier.calendar])
