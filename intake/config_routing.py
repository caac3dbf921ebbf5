"""[routing] of config.toml: queues, the default actions and the rules.

Beyond types and unknown keys, every name a rule uses is checked against the rest of the file
(queues, staff, severity levels, tiers, organizations, mailboxes), regular expressions are
compiled, and a rule that an earlier stopping rule always takes first is refused. Each of these
would otherwise fail silently in production: mail routed somewhere nobody expected.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from routing.rules import STRING_CONDITIONS, Actions, Match, Rule

if TYPE_CHECKING:
    from intake.config import _Builder, _Section

# Actions a rule with stop = false cannot take: only the deciding rule's count.
DECIDING_ACTIONS = ("queue", "assignee", "severity_floor", "severity_ceiling", "on_untagged", "on_unknown_sender")
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+")
_DOMAIN = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")
_HEADER_NAME = re.compile(r"[!-9;-~]+")
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def policy_problem(key: str, value: str, levels: set[int]) -> str | None:
    """What is wrong with a mailbox policy value (`on_untagged`, `on_unknown_sender`), if anything."""
    if key == "on_untagged":
        default = re.fullmatch(r"default:\s*(\d+)", value)
        if value in ("reject", "hold") or (default and int(default.group(1)) in levels):
            return None
        return f"{value!r}: expected reject, hold or default:N with N a configured level"
    return None if value in ("hold", "reject", "accept") else f"{value!r}: expected hold, reject or accept"


@dataclass(frozen=True)
class _Known:
    """The names elsewhere in the file that routing may refer to (lower-cased where matched so)."""
    queues: tuple[str, ...]
    staff: frozenset[str]
    levels: frozenset[int]
    tiers: frozenset[str]
    organizations: frozenset[str]
    mailboxes: frozenset[str]


def read_routing(b: _Builder, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The routing part of Config; `parts` are the sections read before it."""
    r = b.section("routing")
    r.locate = lambda key: b.locator.table("routing", key)
    queues = _queues(r)
    reader = _RuleReader(b, _Known(
        queues, frozenset(m.address for m in parts["staff"]), frozenset(lv.level for lv in parts["levels"]),
        frozenset(t.lower() for t in parts["tiers"]), frozenset(o.name.lower() for o in parts["organizations"]),
        frozenset(box.address for box in parts["mailboxes"])))
    d = b.table("routing.default", r.get("default", dict, {}),
                locate=lambda key: b.locator.table("routing.default", key) or b.locator.table("routing", "default"))
    default = reader.actions(d)
    if default.queue is None and "queue" not in d.data:
        d.problem("queue", "is required: mail no rule decides goes to the default queue")
    d.finish()
    rules = [reader.rule(i, entry) for i, entry in enumerate(r.get("rules", list, []))]
    r.finish()
    reader.check_reachable(rules)
    _check_staff_queues(b, parts["staff"], queues)
    return {"queues": queues, "default_actions": default, "rules": tuple(rules)}


def _check_staff_queues(b: _Builder, staff: Any, queues: tuple[str, ...]) -> None:
    """A staff member listening to a queue that does not exist would silently hear nothing."""
    for i, member in enumerate(staff):
        for queue in member.queues:
            if queue not in queues:
                b.problem(f"staff.members.{i}", "queues", f"{queue!r} is not in [routing] queues")


def _queues(r: _Section) -> tuple[str, ...]:
    queues = r.get("queues", list, [])
    if not queues:
        r.problem("queues", "at least one queue is required")
    if any(not isinstance(q, str) or not q.strip() for q in queues):
        r.problem("queues", "expected non-empty strings")
    names = tuple(q for q in queues if isinstance(q, str))
    for dup in sorted({q for q in names if names.count(q) > 1}):
        r.problem("queues", f"{dup!r} is listed twice")
    return names


class _RuleReader:
    def __init__(self, b: _Builder, known: _Known) -> None:
        self.b, self.known = b, known
        self.names: list[str] = []
        self.sections: list[_Section] = []
        self.clean: list[bool] = []       # match and stop read without problems: fit for the reachability check

    def rule(self, index: int, entry: Any) -> Rule:
        given = entry.get("name") if isinstance(entry, dict) else None
        named = isinstance(given, str) and bool(given.strip())
        name = given if named else f"#{index + 1}"
        s = self.b.table(f"routing.rules.{name}", entry,
                         locate=lambda key: self.b.locator.rule(index, given if named else None, key))
        if isinstance(s.get("name", str), str) and not named:
            s.problem("name", "must not be empty")
        if named and name in self.names:
            s.problem("name", f"{name!r} names an earlier rule too; rule names must be unique")
        before = len(self.b.problems)
        match, stop = self.match(s), s.get("stop", bool, True)
        clean = len(self.b.problems) == before
        actions = self.actions(s)
        for key in () if stop else DECIDING_ACTIONS:
            if key in s.data:
                s.problem(key, "has no effect with stop = false (such a rule only adds tags and notify)")
        s.finish()
        self.names.append(name)
        self.sections.append(s)
        self.clean.append(clean)
        return Rule(name, match, actions, stop)

    def match(self, rule: _Section) -> Match:
        m = self.b.table(rule.name, rule.get("match", dict, {}), prefix="match.", locate=rule.locate)
        strings = {key: self._condition(m, key) for key in STRING_CONDITIONS}
        match = Match(**strings, severity=self._severity(m), subject=_regex(m, "subject"), body=_regex(m, "body"),
                      has_attachment=m.get("has_attachment", bool, None), header=self._headers(m))
        m.finish()
        return match

    def _condition(self, m: _Section, key: str) -> tuple[str, ...]:
        values = _strings(m, key)
        known = {"mailbox": (self.known.mailboxes, "is not a [[mailboxes]] address"),
                 "organization": (self.known.organizations, "is not an [[organizations]] name"),
                 "tier": (self.known.tiers, "is not a tier in [tiers]")}
        for value in values:
            if key in known and value not in known[key][0]:
                m.problem(key, f"{value!r} {known[key][1]}")
            elif key in ("recipient", "sender") and not _ADDRESS.fullmatch(value):
                m.problem(key, f"{value!r} is not an email address")
            elif key == "sender_domain" and not _DOMAIN.fullmatch(value.lstrip(".")):
                m.problem(key, f"{value!r} is not a domain (subdomains are included anyway)")
        return tuple(v.lstrip(".") if key == "sender_domain" else v for v in values)

    def _severity(self, m: _Section) -> tuple[int, ...]:
        raw = m.get("severity", (int, list, str), None)
        if raw is None:
            return ()
        if isinstance(raw, str):
            bounds = _RANGE.fullmatch(raw)
            if not bounds or int(bounds.group(1)) > int(bounds.group(2)):
                m.problem("severity", f"{raw!r}: expected a range like \"1-2\", a level or a list of levels")
                return ()
            levels = list(range(int(bounds.group(1)), int(bounds.group(2)) + 1))
        else:
            levels = raw if isinstance(raw, list) else [raw]
        if not levels or any(isinstance(lv, bool) or not isinstance(lv, int) for lv in levels):
            m.problem("severity", f"{raw!r}: expected a level, a list of levels or a range like \"1-2\"")
            return ()
        unknown = [lv for lv in levels if lv not in self.known.levels]
        if unknown:
            m.problem("severity", f"{', '.join(map(str, unknown))}: not a configured level")
        return tuple(levels)

    def _headers(self, m: _Section) -> tuple[tuple[str, re.Pattern[str] | None], ...]:
        headers: list[tuple[str, re.Pattern[str] | None]] = []
        for name, pattern in m.get("header", dict, {}).items():
            key = f"header.{name}"
            if not _HEADER_NAME.fullmatch(name):
                m.problem(key, f"{name!r} is not a header field name")
            elif not isinstance(pattern, str):
                m.problem(key, f"expected a string (a regular expression, or \"\" for present), got {pattern!r}")
            elif pattern == "":
                headers.append((name, None))
            elif (compiled := m.convert(key, pattern, _compile)) is not None:
                headers.append((name, compiled))
        return tuple(headers)

    def actions(self, s: _Section) -> Actions:
        queue, assignee = s.get("queue", str, None), s.get("assignee", str, None)
        if queue is not None and queue not in self.known.queues:
            s.problem("queue", f"{queue!r} is not in [routing] queues")
        if assignee is not None and assignee.lower() not in self.known.staff:
            s.problem("assignee", f"{assignee!r} is not a [staff] member")
        notify = _strings(s, "notify")
        for address in notify:
            if not _ADDRESS.fullmatch(address):
                s.problem("notify", f"{address!r} is not an email address")
        bounds = {key: s.get(key, int, None) for key in ("severity_floor", "severity_ceiling")}
        for key, level in bounds.items():
            if level is not None and level not in self.known.levels:
                s.problem(key, f"{level} is not a configured level")
        floor, ceiling = bounds["severity_floor"], bounds["severity_ceiling"]
        if floor is not None and ceiling is not None and floor < ceiling:
            s.problem("severity_floor", f"{floor} is more urgent than severity_ceiling {ceiling}: no level is both")
        policy = {key: s.get(key, str, None) for key in ("on_untagged", "on_unknown_sender")}
        for key, value in policy.items():
            problem = None if value is None else policy_problem(key, value, set(self.known.levels))
            if problem:
                s.problem(key, problem)
        return Actions(queue, assignee.lower() if assignee else None, _strings(s, "tags", lower=False), notify,
                       floor, ceiling, policy["on_untagged"], policy["on_unknown_sender"])

    def check_reachable(self, rules: list[Rule]) -> None:
        """A rule is unreachable when an earlier stopping rule matches every mail it matches."""
        for n, later in enumerate(rules):
            earlier = next((r for i, r in enumerate(rules[:n])
                            if r.stop and self.clean[i] and r.match.covers(later.match)), None)
            if earlier is not None and self.clean[n]:
                what = "matches every mail" if earlier.match.is_catch_all else "matches every mail this rule matches"
                self.sections[n].problem("match", f"unreachable: the earlier rule {earlier.name!r} {what} and stops")


def _strings(s: _Section, key: str, lower: bool = True) -> tuple[str, ...]:
    """A string or a list of strings; an empty list is refused (leave the key out instead)."""
    raw = s.get(key, (str, list), None)
    if raw is None:
        return ()
    values = raw if isinstance(raw, list) else [raw]
    if not values or any(not isinstance(v, str) or not v.strip() for v in values):
        s.problem(key, f"{raw!r}: expected a non-empty string or a non-empty list of them")
        return ()
    return tuple(v.strip().lower() if lower else v.strip() for v in values)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None


def _regex(s: _Section, key: str) -> re.Pattern[str] | None:
    pattern = s.get(key, str, None)
    return None if pattern is None else s.convert(key, pattern, _compile)
