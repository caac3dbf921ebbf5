"""Config validation of [routing]: one test per kind of error, each asserting that the message
names the file, the line, the rule and the field; all errors are reported at once. And
[database] processing_processes."""
from __future__ import annotations

from pathlib import Path

import pytest

from intake.config import ConfigError, load_config
from tests.conftest import run_cli, write_config
from tests.test_routing_rules import ROUTING, rules_config_text

HEAD = """
[routing]
queues = ["triage", "oncall", "billing"]
default = { queue = "triage" }
"""


def problems_of(tmp_path: Path, routing: str) -> tuple[list[str], str, Path]:
    """The problems load_config reports for the shipped config with this [routing] section."""
    path = tmp_path / "config.toml"
    text = rules_config_text(routing=routing)
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems, text, path


def line_of(text: str, snippet: str) -> int:
    [number] = [n for n, line in enumerate(text.splitlines(), 1) if snippet in line]
    return number


def only_problem(tmp_path: Path, routing: str, snippet: str) -> str:
    """The single problem, after checking that it starts with file:line of `snippet`."""
    problems, text, path = problems_of(tmp_path, routing)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line_of(text, snippet)}: "), (problems[0], line_of(text, snippet))
    return problems[0]


def rule(body: str, name: str = "r1") -> str:
    return f'\n[[routing.rules]]\nname = "{name}"\n{body}\n'


def test_the_shipped_config_and_the_dozen_rule_config_are_valid(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(rules_config_text())
    assert len(load_config(tmp_path / "config.toml").rules) == 12
    code, out = run_cli("--config", str(tmp_path / "config.toml"), "config", "check")
    assert (code, out.strip()) == (0, f"{tmp_path / 'config.toml'}: ok")


def test_a_queue_that_does_not_exist(tmp_path: Path) -> None:
    message = only_problem(tmp_path, HEAD + rule('match = { severity = [1] }\nqueue = "nightshift"',
                                                 "critical-to-oncall"), 'queue = "nightshift"')
    assert message.endswith(": [routing.rules.critical-to-oncall] queue: 'nightshift' is not in [routing] queues")


def test_an_assignee_who_is_not_staff(tmp_path: Path) -> None:
    message = only_problem(tmp_path, HEAD + rule('assignee = "eve@example.com"'), "assignee =")
    assert "[routing.rules.r1] assignee: 'eve@example.com' is not a [staff] member" in message


def test_an_unknown_key_in_a_rule_and_in_its_match(tmp_path: Path) -> None:
    problems, text, path = problems_of(tmp_path, HEAD + rule('queu = "oncall"\nmatch = { subjet = "x" }'))
    assert problems == [f"{path}:{line_of(text, 'subjet')}: [routing.rules.r1] match.subjet: unknown key",
                        f"{path}:{line_of(text, 'queu =')}: [routing.rules.r1] queu: unknown key"]


@pytest.mark.parametrize(("body", "snippet", "expected"), [
    ('stop = "no"', "stop =", "[routing.rules.r1] stop: expected a boolean, got a string"),
    ('match = { has_attachment = "yes" }', "has_attachment", "match.has_attachment: expected a boolean, got a string"),
    ('match = { severity = true }', "severity =", "match.severity: True: expected a level"),
    ("tags = \"vip\"\nnotify = [1]", "notify =", "notify: [1]: expected a non-empty string or a non-empty list"),
    ('match = "all"', "match =", "[routing.rules.r1] match: expected a table, got a string"),
    ('severity_floor = "2"', "severity_floor", "severity_floor: expected an integer, got a string"),
])
def test_a_wrong_type(tmp_path: Path, body: str, snippet: str, expected: str) -> None:
    assert expected in only_problem(tmp_path, HEAD + rule(body), snippet)


@pytest.mark.parametrize("key", ["subject", "body"])
def test_an_invalid_regular_expression(tmp_path: Path, key: str) -> None:
    message = only_problem(tmp_path, HEAD + rule(f"match = {{ {key} = '(unclosed' }}"), "(unclosed")
    assert f"[routing.rules.r1] match.{key}: '(unclosed' is not a valid regular expression: missing )" in message


def test_an_invalid_header_regular_expression_and_header_name(tmp_path: Path) -> None:
    problems, text, _ = problems_of(tmp_path, HEAD + rule(
        'match = { header = { "X-Priority" = "[1" } }') + rule('match = { header = { "X Bad" = "" } }', "r2"))
    assert len(problems) == 2, problems
    assert "[routing.rules.r1] match.header.X-Priority: '[1' is not a valid regular expression" in problems[0]
    assert "[routing.rules.r2] match.header.X Bad: 'X Bad' is not a header field name" in problems[1]


@pytest.mark.parametrize(("match", "expected"), [
    ('severity = [1, 7]', "match.severity: 7: not a configured level"),
    ('severity = "3-1"', "match.severity: '3-1': expected a range like \"1-2\""),
    ('severity = "2-6"', "match.severity: 5, 6: not a configured level"),
    ('tier = "platinum"', "match.tier: 'platinum' is not a tier in [tiers]"),
    ('organization = ["Acme", "Initech"]', "match.organization: 'initech' is not an [[organizations]] name"),
    ('mailbox = "sales@example.com"', "match.mailbox: 'sales@example.com' is not a [[mailboxes]] address"),
    ('sender = "ceo"', "match.sender: 'ceo' is not an email address"),
    ('recipient = "support"', "match.recipient: 'support' is not an email address"),
    ('sender_domain = "@acme.example"', "match.sender_domain: '@acme.example' is not a domain"),
    ('sender = []', "match.sender: []: expected a non-empty string or a non-empty list"),
])
def test_a_condition_naming_something_that_does_not_exist(tmp_path: Path, match: str, expected: str) -> None:
    message = only_problem(tmp_path, HEAD + rule(f"match = {{ {match} }}\nqueue = \"oncall\""), "match =")
    assert f"[routing.rules.r1] {expected}" in message


@pytest.mark.parametrize(("body", "snippet", "expected"), [
    ("severity_floor = 9", "severity_floor", "severity_floor: 9 is not a configured level"),
    ("severity_floor = 1\nseverity_ceiling = 3", "severity_floor",
     "severity_floor: 1 is more urgent than severity_ceiling 3: no level is both"),
    ('on_untagged = "default:9"', "default:9", "on_untagged: 'default:9': expected reject, hold or default:N"),
    ('on_unknown_sender = "drop"', "drop", "on_unknown_sender: 'drop': expected hold, reject or accept"),
    ('notify = ["oncall"]', "notify", "notify: 'oncall' is not an email address"),
])
def test_an_action_that_cannot_be_taken(tmp_path: Path, body: str, snippet: str, expected: str) -> None:
    assert f"[routing.rules.r1] {expected}" in only_problem(tmp_path, HEAD + rule(body), snippet)


def test_a_rule_after_a_catch_all_is_unreachable_and_both_are_named(tmp_path: Path) -> None:
    routing = HEAD + rule('match = {}\nqueue = "billing"', "everything") + rule(
        'match = { severity = [1] }\nqueue = "oncall"', "critical")
    problems, text, path = problems_of(tmp_path, routing)
    assert problems == [f"{path}:{line_of(text, 'severity = [1]')}: [routing.rules.critical] match: "
                        "unreachable: the earlier rule 'everything' matches every mail and stops"]


def test_a_catch_all_that_only_collects_tags_shadows_nothing(tmp_path: Path) -> None:
    routing = HEAD + rule('tags = ["all"]\nstop = false', "tag-all") + rule('match = { severity = [1] }', "critical")
    (tmp_path / "config.toml").write_text(rules_config_text(routing=routing))
    assert [r.name for r in load_config(tmp_path / "config.toml").rules] == ["tag-all", "critical"]


def test_a_rule_covered_by_an_earlier_narrower_looking_rule_is_unreachable(tmp_path: Path) -> None:
    routing = HEAD + rule('match = { severity = "1-2" }\nqueue = "oncall"', "urgent") + rule(
        'match = { severity = [1], tier = "enterprise" }\nqueue = "billing"', "enterprise-critical")
    message = only_problem(tmp_path, routing, 'tier = "enterprise" }')
    assert message.endswith("[routing.rules.enterprise-critical] match: unreachable: the earlier rule 'urgent' "
                            "matches every mail this rule matches and stops")


def test_duplicate_and_missing_rule_names(tmp_path: Path) -> None:
    routing = HEAD + rule('queue = "oncall"\nmatch = { tier = "enterprise" }', "same") + rule(
        'queue = "billing"\nmatch = { tier = "advanced" }', "same") + '\n[[routing.rules]]\nqueue = "billing"\n'
    problems, text, path = problems_of(tmp_path, routing)
    second = [n for n, line in enumerate(text.splitlines(), 1) if line == 'name = "same"'][1]
    third = [n for n, line in enumerate(text.splitlines(), 1) if line == "[[routing.rules]]"][2]
    assert problems == [f"{path}:{second}: [routing.rules.same] name: 'same' names an earlier rule too; "
                        "rule names must be unique",
                        f"{path}:{third}: [routing.rules.#3] name: is required"]


def test_a_rule_that_goes_on_cannot_decide(tmp_path: Path) -> None:
    message = only_problem(tmp_path, HEAD + rule('tags = ["x"]\nqueue = "oncall"\nstop = false'), 'queue = "oncall"')
    assert "[routing.rules.r1] queue: has no effect with stop = false" in message


def test_the_default_must_name_an_existing_queue_and_take_only_actions(tmp_path: Path) -> None:
    routing = '\n[routing]\nqueues = ["triage", "triage"]\ndefault = { assignee = "alice@example.com", stop = true }\n'
    problems, text, path = problems_of(tmp_path, routing)
    default = line_of(text, "default =")
    assert problems == [f"{path}:{line_of(text, 'queues =')}: [routing] queues: 'triage' is listed twice",
                        f"{path}:{default}: [routing.default] queue: is required: mail no rule decides goes to "
                        "the default queue",
                        f"{path}:{default}: [routing.default] stop: unknown key"]


def test_rules_written_inline_are_located_by_their_name(tmp_path: Path) -> None:
    routing = HEAD.replace('default = { queue = "triage" }', 'default = { queue = "triage" }\nrules = [\n'
                           '  { name = "a", match = { severity = [1] }, queue = "oncall" },\n'
                           '  { name = "b", match = { severity = [2] }, queue = "nowhere" },\n]')
    message = only_problem(tmp_path, routing, 'name = "b"')
    assert message.endswith("[routing.rules.b] queue: 'nowhere' is not in [routing] queues")


def test_every_error_is_reported_at_once_by_config_check_and_serve(tmp_path: Path) -> None:
    broken = ROUTING.replace('queue = "security"', 'queue = "sec"').replace(
        'assignee = "alice@example.com"', 'assignee = "mallory@example.com"').replace(
        r"'\b(cve|vulnerability)\b'", "'(cve'")
    path = tmp_path / "config.toml"
    path.write_text(rules_config_text(routing=broken))
    for command in (("config", "check"), ("serve",)):
        code, out = run_cli("--config", str(path), *command)
        assert code == 2, out
        lines = out.strip().splitlines()
        assert len(lines) == 3, lines
        assert all(line.startswith(f"{path}:") for line in lines)
        assert "[routing.rules.security-subject] match.subject: '(cve' is not a valid regular expression" in out
        assert "[routing.rules.security-subject] queue: 'sec' is not in [routing] queues" in out
        assert "[routing.rules.ceo] assignee: 'mallory@example.com' is not a [staff] member" in out


@pytest.mark.parametrize(("url", "setting", "lanes"), [
    ("sqlite:///intake.db", 0, 1), ("postgresql+psycopg://intake@/intake", 0, 2),
    ("postgresql+psycopg://intake@/intake", 3, 3), ("sqlite:///intake.db", 2, 2)])
def test_processing_processes_default_to_what_suits_the_database(tmp_path: Path, url: str, setting: int,
                                                                 lanes: int) -> None:
    config = load_config(write_config(tmp_path, url, 2525, 25,
                                      replace={"processing_processes = 0": f"processing_processes = {setting}"}))
    assert config.processing_lanes == lanes


def test_processing_processes_out_of_range(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sqlite:///intake.db", 2525, 25,
                        replace={"processing_processes = 0": "processing_processes = 17"})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("[database] processing_processes: 17: expected 0" in problem for problem in caught.value.problems), \
        caught.value.problems


def test_a_clock_key_that_is_not_a_configured_level_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    text = rules_config_text(routing=ROUTING)
    shipped = 'clock = { 1 = "24x7",'
    assert shipped in text
    path.write_text(text.replace(shipped, 'clock = { "²" = "24x7", 9 = "business", 1 = "24x7",', 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert any("clock" in p and "invalid literal for int()" in p and "'²'" in p for p in problems), problems
    assert any("clock" in p and "'9' is not a configured severity level" in p for p in problems), problems
