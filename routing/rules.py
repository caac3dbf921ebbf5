"""Routing rules: first match wins, every evaluation explainable.

A rule's conditions are checked in a fixed order and the first one that does not hold is
named, so `intake routing explain` can say why a rule did not match. Rules with
`stop = false` contribute their tags and notify addresses and go on to the next rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

from routing.policy import domain_matches

STRING_CONDITIONS = ("mailbox", "recipient", "sender", "sender_domain", "organization", "tier")


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
    headers: Mapping[str, tuple[str, ...]]     # lower-cased names


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
    """All given conditions must hold; an empty Match matches every mail."""
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
    header: tuple[tuple[str, re.Pattern[str] | None], ...] = ()   # None: the header is present

    @property
    def is_catch_all(self) -> bool:
        return self == Match()

    def first_failure(self, facts: Facts) -> str | None:
        """The name of the first condition that does not hold, or None when all hold."""
        for name, holds in self._conditions(facts):
            if not holds():
                return name
        return None

    def _conditions(self, f: Facts) -> Iterator[tuple[str, Callable[[], bool]]]:
        checks: list[tuple[str, bool, Callable[[], bool]]] = [
            ("mailbox", bool(self.mailbox), lambda: _listed(self.mailbox, f.mailbox)),
            ("recipient", bool(self.recipient), lambda: any(_recipient_listed(self.recipient, r) for r in f.recipients)),
            ("sender", bool(self.sender), lambda: _listed(self.sender, f.sender)),
            ("sender_domain", bool(self.sender_domain),
             lambda: any(domain_matches(f.sender_domain, d) for d in self.sender_domain)),
            ("organization", bool(self.organization), lambda: _listed(self.organization, f.organization)),
            ("tier", bool(self.tier), lambda: _listed(self.tier, f.tier)),
            ("severity", bool(self.severity), lambda: f.severity in self.severity),
            ("subject", self.subject is not None, lambda: bool(self.subject and self.subject.search(f.subject))),
            ("body", self.body is not None, lambda: bool(self.body and self.body.search(f.body))),
            ("has_attachment", self.has_attachment is not None, lambda: f.has_attachment == self.has_attachment),
        ]
        for name, present, holds in checks:
            if present:
                yield name, holds
        for header, pattern in self.header:
            yield f"header.{header}", (lambda h=header, p=pattern: _header_holds(f.headers.get(h.lower(), ()), p))

    def covers(self, other: Match) -> bool:
        """True when every mail `other` matches is matched by this one too, so a rule with `other`
        placed after a stopping rule with this match can never decide. Sound, not complete: it
        compares the conditions as written (regular expressions only when identical)."""
        for name in (*STRING_CONDITIONS, "severity"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine and not (theirs and all(_value_covered(name, mine, v) for v in theirs)):
                return False
        for name in ("subject", "body", "has_attachment"):
            if getattr(self, name) is not None and getattr(self, name) != getattr(other, name):
                return False
        theirs_headers = {(n.lower(), p) for n, p in other.header}
        return all((n.lower(), p) in theirs_headers or (p is None and any(n.lower() == t for t, _ in theirs_headers))
                   for n, p in self.header)


def _listed(values: tuple[str, ...], fact: str | None) -> bool:
    return fact is not None and fact.lower() in {v.lower() for v in values}


def _recipient_listed(values: tuple[str, ...], address: str) -> bool:
    """`support@x` in a rule matches `support+billing@x`; `support+billing@x` matches only itself."""
    return _listed(values, address) or _listed(values, without_plus(address))


def _header_holds(values: tuple[str, ...], pattern: re.Pattern[str] | None) -> bool:
    return bool(values) if pattern is None else any(pattern.search(v) for v in values)


def _value_covered(name: str, mine: tuple[str | int, ...], value: str | int) -> bool:
    if name == "sender_domain":
        return any(domain_matches(str(value).lower(), str(d)) for d in mine)
    if name == "recipient":
        return _recipient_listed(tuple(map(str, mine)), str(value))
    if isinstance(value, str):
        return _listed(tuple(map(str, mine)), value)
    return value in mine


def without_plus(address: str) -> str:
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
    failed: str | None          # the first condition that did not hold
    reached: bool = True        # False: after the deciding rule (shown by explain only)


@dataclass(frozen=True)
class Routing:
    rule: str              # the deciding rule, or "default"
    actions: Actions
    trace: tuple[RuleTrace, ...] = field(default=())

    @property
    def matched(self) -> tuple[str, ...]:
        """Every rule that contributed: tag-collecting rules, then the deciding one."""
        return tuple(t.name for t in self.trace if t.matched)

    def record(self) -> dict[str, Any]:
        """What a case keeps of its routing (the `routed` event): why it went where it went, even
        after the rules have been changed."""
        a = self.actions
        return {"rule": self.rule, "matched": list(self.matched),
                "not_matched": {t.name: t.failed for t in self.trace if not t.matched},
                "queue": a.queue, "assignee": a.assignee, "tags": list(a.tags), "notify": list(a.notify)}


def route(facts: Facts, rules: tuple[Rule, ...], default: Actions) -> Routing:
    """Evaluate rules in order; the first matching rule with `stop` decides, defaults fill the gaps."""
    trace: list[RuleTrace] = []
    collected = Actions()
    for rule in rules:
        failed = rule.match.first_failure(facts)
        trace.append(RuleTrace(rule.name, failed is None, failed))
        if failed is not None:
            continue
        collected = replace(collected, tags=_union(collected.tags, rule.actions.tags),
                            notify=_union(collected.notify, rule.actions.notify))
        if rule.stop:
            return Routing(rule.name, _merged(rule.actions, default, collected), tuple(trace))
    return Routing("default", _merged(Actions(), default, collected), tuple(trace))


def full_trace(facts: Facts, rules: tuple[Rule, ...], routing: Routing) -> tuple[RuleTrace, ...]:
    """The routing trace, plus what every rule after the deciding one would have said (not reached)."""
    rest = [(rule, rule.match.first_failure(facts)) for rule in rules[len(routing.trace):]]
    return routing.trace + tuple(RuleTrace(rule.name, failed is None, failed, reached=False) for rule, failed in rest)


def _merged(chosen: Actions, default: Actions, collected: Actions) -> Actions:
    fill = {name: getattr(default, name) for name in ("queue", "assignee", "on_untagged", "on_unknown_sender")
            if getattr(chosen, name) is None}
    return replace(chosen, tags=_union(collected.tags, default.tags),
                   notify=_union(collected.notify, () if chosen.notify else default.notify), **fill)


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return first + tuple(v for v in second if v not in first)


def clamp_severity(severity: int, actions: Actions) -> int:
    """Apply a rule's bounds: a floor of 2 makes a case at least as urgent as SEV-2, a ceiling of 3
    at most as urgent as SEV-3 (level 1 is the most urgent)."""
    if actions.severity_floor is not None:
        severity = min(severity, actions.severity_floor)
    if actions.severity_ceiling is not None:
        severity = max(severity, actions.severity_ceiling)
    return severity
