"""The `--help` of every `intake` command: examples and exit codes, as the epilog of its parser.

Kept apart from the command definitions (intake/cli.py, intake/cli_sla.py) so those stay short;
`annotate` walks the finished parser tree and refuses a command that has no examples, so a new
command cannot ship without them.
"""
from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from typing import Iterator

EXIT_CODES = "exit codes: 0 ok, 1 failure, 2 usage or configuration error"

# command path -> (examples, what exit codes 1 and 2 mean for it, where there is more to say)
HELP: dict[str, tuple[tuple[str, ...], str]] = {
    "": (("intake --config /etc/intake/config.toml serve", "intake tickets list --status open",
          "INTAKE_CONFIG=/etc/intake/config.toml intake config check"), ""),
    "serve": (("intake --config /etc/intake/config.toml serve",
               "kill -HUP $(pidof -s intake)    # reload config.toml (systemctl reload intake)"),
              "1: a port (SMTP or metrics) cannot be bound; 2: config.toml is invalid"),
    "poll": (("intake poll --once", "intake poll --once --mailbox support@example.com"),
             "1: a mailbox gave up (the reason is on stderr); 2: no mailbox with an imap table matches"),
    "import": (("intake import /srv/old-helpdesk/support.mbox",
                "intake import ~/Maildir/.Support --mailbox support@example.com --send-acks"),
               "1: some messages could not be read; 2: PATH is not an mbox or a Maildir"),
    "db": (("intake db upgrade",), ""),
    "db upgrade": (("intake --config /etc/intake/config.toml db upgrade",),
                   "1: the database cannot be reached or a migration failed"),
    "config": (("intake config check",), ""),
    "config check": (("intake config check", "intake --config /etc/intake/config.toml.new config check"),
                     "2: config.toml or a template has a problem (each is on stderr)"),
    "routing": (("intake routing explain mail.eml",), ""),
    "routing explain": (("intake routing explain mail.eml", "intake routing explain mail.eml --json",
                         "intake routing explain mail.eml --to billing@example.com"),
                        "1: FILE cannot be read or is not a mail"),
    "tickets": (("intake tickets list", "intake tickets show CASE-1042"), ""),
    "tickets list": (("intake tickets list", "intake tickets list --status pending --json"), ""),
    "tickets show": (("intake tickets show CASE-1042", "intake tickets show CASE-1042 --json"),
                     "1: there is no such case"),
    "tickets revoke-tokens": (("intake tickets revoke-tokens CASE-1042",
                               "intake tickets revoke-tokens CASE-1042 --staff alice@example.com"),
                              "1: there is no such case"),
    "rejected": (("intake rejected list",), ""),
    "rejected list": (("intake rejected list", "intake rejected list --json"), ""),
    "held": (("intake held list", "intake held release 17"), ""),
    "held list": (("intake held list", "intake held list --json"), ""),
    "held release": (("intake held release 17", "intake held release 17 --severity 2"),
                     "1: the mail is not held, or did not become a case"),
    "quarantine": (("intake quarantine list", "intake quarantine replay"), ""),
    "quarantine list": (("intake quarantine list", "intake quarantine list --json"), ""),
    "quarantine replay": (("intake quarantine replay", "intake quarantine replay 12 15"),
                          "1: a mail is not quarantined, or still is after the replay"),
    "outbox": (("intake outbox list --status failed", "intake outbox retry"), ""),
    "outbox list": (("intake outbox list", "intake outbox list --status failed --json"), ""),
    "outbox retry": (("intake outbox retry", "intake outbox retry 40 41"), ""),
    "sweep": (("intake sweep --once --dry-run", "intake sweep --once --now 2026-03-16T09:00 --dry-run --json"),
              "2: --now is not an ISO 8601 time"),
    "sla": (("intake sla report",), ""),
    "sla report": (("intake sla report", "intake sla report --since 2026-01-01 --json"),
                   "2: --since is not an ISO 8601 date"),
}


def package_version() -> str:
    try:
        return version("support-intake")
    except PackageNotFoundError:    # run from a source tree that was never installed
        return "unknown"


def annotate(parser: argparse.ArgumentParser) -> None:
    """Give every parser of the tree its examples and exit codes, and `intake` its `--version`."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    for path, sub in walk(parser):
        if path not in HELP:
            raise KeyError(f"intake {path}: no examples in intake/cli_help.py")
        examples, codes = HELP[path]
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        lines = ["examples:", *(f"  {example}" for example in examples), "", EXIT_CODES]
        sub.epilog = "\n".join([*lines, f"  {codes}"] if codes else lines)


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree with its command path (`""` for `intake` itself, `"tickets show"`)."""
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))
