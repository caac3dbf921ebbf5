"""The staff command parser: every PROTOCOL.md command, bad lines, and all-or-nothing."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from routing.commands import Command, CommandError, ParsedCommands, Vocabulary, parse_commands

VOCAB = Vocabulary(levels={1, 2, 3, 4}, staff={"alice@example.com", "bob@example.com"},
                   queues=("triage", "oncall", "billing"))


@pytest.mark.parametrize(("line", "command"), [
    ("#status open", Command("status", "open")),
    ("#status Pending", Command("status", "pending")),
    ("#pending", Command("status", "pending")),
    ("#severity 1", Command("severity", "1")),
    ("#sev 4", Command("severity", "4")),
    ("#assign bob@example.com", Command("assign", "bob@example.com")),
    ("#take", Command("assign", "alice@example.com")),
    ("#queue billing", Command("queue", "billing")),
    ("#note", Command("note")),
    ("#close", Command("close", "")),
    ("#close duplicate of CASE-3", Command("close", "duplicate of CASE-3")),
    ("#reopen", Command("reopen")),
    ("#cc carol@acme.example", Command("cc", "carol@acme.example")),
    ("#uncc carol@acme.example", Command("uncc", "carol@acme.example")),
])
def test_each_command(line: str, command: Command) -> None:
    parsed = parse_commands(f"{line}\n\nHello", "alice@example.com", VOCAB)
    assert parsed == ParsedCommands((command,), "Hello")


@pytest.mark.parametrize(("line", "problem"), [
    ("#status waiting", "status must be one of"),
    ("#severity 5", "severity must be one of 1, 2, 3, 4"),
    ("#sev high", "severity must be one of"),
    ("#severity ²", "severity must be one of"),            # a digit to isdigit(), not to int()
    ("#severity ٣", "severity must be one of"),            # a decimal digit int() reads: not in the grammar
    ("#severity " + "1" * 5000, "severity must be one of"),   # past int()'s limit on digits
    ("#assign mallory@evil.example", "is not a staff member"),
    ("#queue nightshift", "queue must be one of"),
    ("#frobnicate", "unknown command #frobnicate"),
    ("#note please", "#note takes no argument"),
    ("#cc not-an-address", "is not an email address"),
    ("#", "empty command"),
])
def test_a_bad_line_is_named(line: str, problem: str) -> None:
    parsed = parse_commands(f"#pending\n{line}\n#severity 1\nText", "alice@example.com", VOCAB)
    assert isinstance(parsed, CommandError)
    assert parsed.line == line and problem in parsed.problem


def test_commands_stop_at_the_first_text_line() -> None:
    parsed = parse_commands("\n  #pending\n\nPlease send logs.\n#severity 9 is not a command here\n", "a@x.y", VOCAB)
    assert parsed == ParsedCommands((Command("status", "pending"),),
                                    "Please send logs.\n#severity 9 is not a command here")


def test_no_commands_leaves_the_body() -> None:
    assert parse_commands("Hi Ann,\nfixed.", "a@x.y", VOCAB) == ParsedCommands((), "Hi Ann,\nfixed.")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_bodies_never_raise_and_parse_all_or_nothing(body: str) -> None:
    parsed = parse_commands(body, "alice@example.com", VOCAB)
    if isinstance(parsed, CommandError):
        assert parsed.line.startswith("#")
        return
    block = [line.strip() for line in body.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    command_lines = []
    for line in block:
        if line and not line.startswith("#"):
            break
        if line:
            command_lines.append(line)
    assert len(parsed.commands) == len(command_lines)
