"""`intake --help` and `--help` on every command: examples and exit codes; `--version`; usage errors exit 2."""
from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from intake.cli import _parser, main
from intake.cli_help import HELP, walk

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [path for path, _ in walk(_parser())]


def help_of(*words: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([*words, "--help"])
    assert exited.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c or "intake")
def test_every_command_has_help_with_examples_and_exit_codes(command: str) -> None:
    text = help_of(*command.split())
    assert text.startswith(f"usage: intake {command}".rstrip())
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(line.startswith("  ") and "intake" in line for line in examples), text
    assert "exit codes: 0 ok, 1 failure, 2 usage or configuration error" in text


def test_every_example_is_a_valid_command_line() -> None:
    """An example that names an unknown command or option would teach a wrong usage."""
    for command, (examples, _) in HELP.items():
        for example in examples:
            words = example.split("#")[0].split()
            if words[0] != "intake" and "intake" in words:       # INTAKE_CONFIG=... intake ...
                words = words[words.index("intake"):]
            if words[0] != "intake":
                continue                                        # a shell line (kill -HUP ...)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                args = _parser().parse_args(words[1:])
            assert hasattr(args, "run"), example


def test_help_covers_exactly_the_commands_there_are() -> None:
    assert set(HELP) == set(COMMANDS)


def test_version_comes_from_the_installed_package() -> None:
    done = subprocess.run([sys.executable, "-m", "intake", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, f"intake {version('support-intake')}")


@pytest.mark.parametrize("words", [["bogus"], ["tickets"], ["tickets", "show"], ["poll"], ["held", "release", "x"]])
def test_a_usage_error_exits_2(words: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "intake", *words], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done
    assert "usage: intake" in done.stderr


def test_no_command_prints_the_help_and_exits_2(tmp_path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "examples:" in out.getvalue()


def test_a_config_error_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--config", str(tmp_path / "none.toml"), "tickets", "list"]) == 2
    assert "file not found" in err.getvalue()
