"""Staff command lines at the top of a reply (PROTOCOL.md "Staff command lines").

Parsing is all-or-nothing: either every command line is valid and a tuple of commands comes
back, or a `CommandError` names the first offending line and nothing is applied.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection

STATUSES = ("open", "pending", "resolved", "closed")
_ADDRESS = re.compile(r"[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+")
_LEVEL = re.compile(r"[0-9]{1,9}")
HELP = ("#status open|pending|resolved|closed", "#pending", "#severity N", "#assign ADDRESS", "#take",
        "#queue NAME", "#note", "#close [reason]", "#reopen", "#cc ADDRESS", "#uncc ADDRESS")


@dataclass(frozen=True)
class Command:
    name: str          # status | severity | assign | queue | note | close | reopen | cc | uncc
    argument: str = ""


@dataclass(frozen=True)
class CommandError:
    line: str
    problem: str


@dataclass(frozen=True)
class Vocabulary:
    """What the arguments may be, from config."""
    levels: Collection[int]
    staff: Collection[str]
    queues: Collection[str]


@dataclass(frozen=True)
class ParsedCommands:
    commands: tuple[Command, ...]
    body: str          # the text after the command lines: what a relay sends on


def parse_commands(body: str, sender: str, vocabulary: Vocabulary) -> ParsedCommands | CommandError:
    """Read the command block: the '#' lines before any other non-blank line."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line and not line.startswith("#"):
            break
        if line:
            parsed = _one(line, sender, vocabulary)
            if isinstance(parsed, CommandError):
                return parsed
            commands.append(parsed)
        index += 1
    return ParsedCommands(tuple(commands), "\n".join(lines[index:]).strip("\n"))


def _one(line: str, sender: str, vocabulary: Vocabulary) -> Command | CommandError:
    word, _, rest = line[1:].partition(" ")
    name, argument = word.lower(), rest.strip()
    if name in ("pending", "take", "note", "reopen"):
        if argument:
            return CommandError(line, f"#{name} takes no argument")
        return {"pending": Command("status", "pending"), "take": Command("assign", sender.lower())}.get(
            name, Command(name))
    if name == "close":
        return Command("close", argument)
    check = _CHECKS.get(name)
    if check is None:
        return CommandError(line, f"unknown command #{word}" if word else "empty command")
    problem = check(argument, vocabulary)
    if problem:
        return CommandError(line, problem)
    canonical = {"sev": "severity"}.get(name, name)
    return Command(canonical, argument.lower() if canonical in ("status", "assign", "cc", "uncc") else argument)


def _status(argument: str, _: Vocabulary) -> str | None:
    return None if argument.lower() in STATUSES else f"status must be one of {', '.join(STATUSES)}"


def _severity(argument: str, vocabulary: Vocabulary) -> str | None:
    levels = sorted(vocabulary.levels)
    if _LEVEL.fullmatch(argument) and int(argument) in levels:   # not isdigit(): "²" is a digit int() refuses
        return None
    return f"severity must be one of {', '.join(map(str, levels))}"


def _assign(argument: str, vocabulary: Vocabulary) -> str | None:
    return None if argument.lower() in vocabulary.staff else f"{argument or '(nothing)'} is not a staff member"


def _queue(argument: str, vocabulary: Vocabulary) -> str | None:
    return None if argument in vocabulary.queues else f"queue must be one of {', '.join(vocabulary.queues)}"


def _address(argument: str, _: Vocabulary) -> str | None:
    return None if _ADDRESS.fullmatch(argument) else f"{argument or '(nothing)'} is not an email address"


_CHECKS = {"status": _status, "severity": _severity, "sev": _severity, "assign": _assign,
           "queue": _queue, "cc": _address, "uncc": _address}
