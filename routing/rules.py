"""Routing rules: first match wins, every evaluation explainable.

A rule's conditions are checked in a fixed order and the first one that does not hold is
named, so `intake routing explain` can say why a rule did not match. Rules with
`stop = false` contribute their tags and go on to the next rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Mapping

from routing.policy import domain_matches


@dataclass(frozen=True)
class Facts:
    """What a rule can look at; built once per mail."""
    mailbox: str
    recipients: tuple[str, ...]
    sender: str
    sender_domain: str
    organization: str | None
    tier: str | None
    severity: int | None
    subject: str
    body: str
    has_attachment: bool
    headers: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Actions:
    queue: str | None = None
    assignee: str | None = None
    tags: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()
    severity_floor: int | None = None
    severity_ceiling: int | None = None
    on_untagged: str | None = None
    on_unknown_sender: str | None = None


@dataclass(frozen=True)
class Match:
    mailbox: tuple[str, ...] = ()
    recipient: tuple[str, ...] = ()
    sender: tuple[str, ...] = ()
    sender_domain: tuple[str, ...] = ()
    organization: tuple[str, ...] = ()
    tier: tuple[str, ...] = ()
    severity: tuple[int, ...] = ()
    subject: re.Pattern[str] | None = None
    body: re.Pattern[str] | None = None
    has_attachment: bool | None = None
    header: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def first_failure(self, facts: Facts) -> str | None:
        """The name of the first condition that does not hold, or None when all hold."""
        for name, holds in self._conditions(facts):
            if not holds():
                return name
        return None

    def _conditions(self, f: Facts):  # type: ignore[no-untyped-def]
        def listed(values: tuple[str, ...], fact: str | None) -> bool:
            return fact is not None and fact.lower() in {v.lower() for v in values}

        checks = [
            ("mailbox", bool(self.mailbox), lambda: listed(self.mailbox, f.mailbox)),
            ("recipient", bool(self.recipient),
             lambda: any(listed(self.recipient, _without_plus(r)) or listed(self.recipient, r) for r in f.recipients)),
            ("sender", bool(self.sender), lambda: listed(self.sender, f.sender)),
            ("sender_domain", bool(self.sender_domain),
             lambda: any(domain_matches(f.sender_domain, d) for d in self.sender_domain)),
            ("organization", bool(self.organization), lambda: listed(self.organization, f.organization)),
            ("tier", bool(self.tier), lambda: listed(self.tier, f.tier)),
            ("severity", bool(self.severity), lambda: f.severity in self.severity),
            ("subject", self.subject is not None, lambda: bool(self.subject and self.subject.search(f.subject))),
            ("body", self.body is not None, lambda: bool(self.body and self.body.search(f.body))),
            ("has_attachment", self.has_attachment is not None, lambda: f.has_attachment == self.has_attachment),
        ]
        for name, present, holds in checks:
            if present:
                yield name, holds
        for header, pattern in self.header:
            yield f"header.{header}", (lambda h=header, p=pattern: any(
                p.search(v) for v in f.headers.get(h.lower(), ())))


def _without_plus(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


@dataclass(frozen=True)
class Rule:
    name: str
    match: Match
    actions: Actions
    stop: bool = True


@dataclass(frozen=True)
class RuleTrace:
    name: str
    matched: bool
    failed: str | None


@dataclass(frozen=True)
class Routing:
    rule: str              # the deciding rule, or "default"
    actions: Actions
    trace: tuple[RuleTrace, ...] = field(default=())


def route(facts: Facts, rules: tuple[Rule, ...], default: Actions) -> Routing:
    """Evaluate rules in order; the first matching rule with `stop` decides, defaults fill the gaps."""
    trace: list[RuleTrace] = []
    tags: list[str] = []
    for rule in rules:
        failed = rule.match.first_failure(facts)
        trace.append(RuleTrace(rule.name, failed is None, failed))
        if failed is not None:
            continue
        tags.extend(t for t in rule.actions.tags if t not in tags)
        if rule.stop:
            return Routing(rule.name, _merged(rule.actions, default, tags), tuple(trace))
    return Routing("default", _merged(Actions(), default, tags), tuple(trace))


def _merged(chosen: Actions, default: Actions, tags: list[str]) -> Actions:
    fill = {name: getattr(default, name) for name in ("queue", "assignee", "on_untagged", "on_unknown_sender")
            if getattr(chosen, name) is None}
    all_tags = tuple(tags) + tuple(t for t in default.tags if t not in tags)
    return replace(chosen, tags=all_tags, notify=chosen.notify or default.notify, **fill)


def clamp_severity(severity: int, actions: Actions) -> int:
    """Apply a rule's bounds: a floor of 2 makes a case at least as urgent as SEV-2, a ceiling of 3
    at most as urgent as SEV-3 (level 1 is the most urgent)."""
    if actions.severity_floor is not None:
        severity = min(severity, actions.severity_floor)
    if actions.severity_ceiling is not None:
        severity = max(severity, actions.severity_ceiling)
    return severity
