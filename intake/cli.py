"""The `intake` command. Exit codes: 0 ok, 1 failure, 2 usage or configuration error (docs/cli.md)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from intake.cli_help import annotate
from intake.cli_sla import add_commands as add_sla_commands, sla_line
from intake.config import Config, ConfigError, default_config_path, load_config
from intake.explain import as_json, as_text, explain
from intake.imap_poller import ImapPoller, PollFailed
from intake.importer import ImportSourceError, ProgressBar, import_mail
from intake.logs import Redactor, setup_logging
from intake.metrics import MetricsUnavailable
from intake.parse import UnparseableMail
from intake.pipeline import release, replay
from intake.service import build_services, renderer_for, serve
from intake.staff import revoke_tokens
from intake.views import list_inbound, list_outbox, list_tickets, parse_ref, show_ticket
from models import InboundStatus, OutboxMail, OutboxStatus, Outcome, Ticket, utcnow
from models.db import unit_of_work
from models.migrate import upgrade

TEMPLATES = ("acknowledgment", "rejection", "community", "quota_exceeded", "staff_notification", "staff_reply",
             "command_error", "followup", "closing_notice", "sla_warning", "sla_breach", "sev1_reminder")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    configure_logging(config, serving=args.command == "serve")
    try:
        return int(args.run(config, args) or 0)
    except LookupError as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    except (MetricsUnavailable, OperationalError) as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1


def configure_logging(config: Config, serving: bool) -> None:
    """`intake serve` logs at `service.log_level`; the one-shot commands only warnings and errors."""
    level = config.log_level if serving or config.log_level in ("warning", "error") else "warning"
    notify = [address for actions in (config.default_actions, *(rule.actions for rule in config.rules))
              for address in actions.notify]
    known = [*config.own_addresses, *(member.address for member in config.staff), *notify]   # not customers
    setup_logging(config.log_format, level, Redactor(known, enabled=config.redact_addresses))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intake", description="Support mail intake service.")
    parser.add_argument("--config", default=str(default_config_path()),
                        help="path to config.toml (default: $INTAKE_CONFIG or ./config.toml)")
    commands = parser.add_subparsers(dest="command")
    _command(commands, "serve", "run the SMTP listener, the IMAP pollers, the outbox worker, the scheduler "
             "and the metrics and health endpoint until SIGTERM; SIGHUP reloads config.toml", _serve)
    poll = _command(commands, "poll", "process what waits in the IMAP mailboxes and print a summary", _poll)
    poll.add_argument("--once", action="store_true", required=True,
                      help="one pass, then exit (`intake serve` watches the mailboxes continuously)")
    poll.add_argument("--mailbox", help="only this mailbox address (default: every mailbox with an imap table)")
    imp = _command(commands, "import", "ingest an mbox file or a Maildir folder (a migration)", _import)
    imp.add_argument("path", type=Path)
    imp.add_argument("--mailbox", help="the mailbox the mail was sent to (default: the first one)")
    imp.add_argument("--send-acks", action="store_true",
                     help="send acknowledgments and rejection answers (default: none for imported mail)")
    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    _command(db, "upgrade", "apply Alembic migrations up to head", _db_upgrade)
    cfg = commands.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    _command(cfg, "check", "validate config.toml and the templates", _config_check)
    routing = commands.add_parser("routing", help="routing rules").add_subparsers(dest="r_command", required=True)
    explain = _command(routing, "explain", "show how the rules route a mail file (stores and sends nothing)",
                       _routing_explain, json_flag=True)
    explain.add_argument("file", type=Path, help="the mail, as a .eml file")
    explain.add_argument("--to", action="append", default=[], metavar="ADDRESS",
                         help="an envelope recipient (repeatable; default: the To and Cc addresses)")
    tickets = commands.add_parser("tickets", help="cases").add_subparsers(dest="tickets_command", required=True)
    _command(tickets, "list", "list cases", _tickets_list, json_flag=True).add_argument("--status")
    _command(tickets, "show", "show one case", _tickets_show, json_flag=True).add_argument("ref")
    rejected = commands.add_parser("rejected", help="rejection records").add_subparsers(dest="rej", required=True)
    _command(rejected, "list", "list rejected mail", _listing(Outcome.REJECTED, None), json_flag=True)
    revoke = _command(tickets, "revoke-tokens", "invalidate the staff reply addresses of a case", _revoke_tokens)
    revoke.add_argument("ref")
    revoke.add_argument("--staff", help="only this staff member's (default: every member's)")
    held = commands.add_parser("held", help="held mail").add_subparsers(dest="held_command", required=True)
    _command(held, "list", "list held mail", _listing(Outcome.HELD, None), json_flag=True)
    rel = _command(held, "release", "open a case from a held mail", _held_release)
    rel.add_argument("id", type=int)
    rel.add_argument("--severity", type=int, help="the level to give it (default: its tag, else the least urgent)")
    quarantine = commands.add_parser("quarantine", help="mail whose processing failed").add_subparsers(
        dest="q_command", required=True)
    _command(quarantine, "list", "list quarantined mail", _listing(None, InboundStatus.QUARANTINED), json_flag=True)
    _command(quarantine, "replay", "process quarantined mail again", _quarantine_replay).add_argument(
        "ids", type=int, nargs="*", help="ids to replay (default: all)")
    outbox = commands.add_parser("outbox", help="outgoing mail").add_subparsers(dest="o_command", required=True)
    _command(outbox, "list", "list outgoing mail", _outbox_list, json_flag=True).add_argument("--status")
    _command(outbox, "retry", "send failed or waiting mail again now", _outbox_retry).add_argument(
        "ids", type=int, nargs="*", help="ids to retry (default: all failed and pending)")
    add_sla_commands(commands, _command)
    annotate(parser)
    return parser


def _command(group: Any, name: str, help_text: str, run: Callable[[Config, argparse.Namespace], int | None],
             json_flag: bool = False) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    sub.set_defaults(run=run)
    if json_flag:
        sub.add_argument("--json", action="store_true", help="print JSON")
    return sub


def _print(rows: list[dict[str, Any]] | dict[str, Any], as_json: bool, columns: Sequence[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    for row in rows if isinstance(rows, list) else [rows]:
        print("  ".join(str(row.get(c, "")) for c in columns))


def _serve(config: Config, args: argparse.Namespace) -> int:
    upgrade(config.database_url)
    serve(config)
    return 0


def _poll(config: Config, args: argparse.Namespace) -> int:
    wanted = args.mailbox.lower() if args.mailbox else None
    boxes = [box for box in config.mailboxes if box.imap is not None and wanted in (None, box.address)]
    if not boxes:
        print(f"{config.path}: no mailbox with an imap table" + (f" is {args.mailbox}" if args.mailbox else ""),
              file=sys.stderr)
        return 2
    services = build_services(config)
    failed = False
    for box in boxes:
        try:
            summary = ImapPoller(services, box).poll_once()
        except PollFailed as exc:
            print(f"{box.address}: gave up: {exc}", file=sys.stderr)
            summary, failed = exc.summary, True
        print(f"{box.address}: {summary.line()}")
    return 1 if failed else 0


def _import(config: Config, args: argparse.Namespace) -> int:
    address = args.mailbox.lower() if args.mailbox else config.mailboxes[0].address
    if address not in {box.address for box in config.mailboxes}:
        print(f"{config.path}: no mailbox is {args.mailbox}", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        summary = import_mail(build_services(config), args.path, address, args.send_acks, bar)
    except ImportSourceError as exc:
        print(exc, file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(f"{args.path}: {summary.line()}")
    return 1 if summary.failed else 0


def _db_upgrade(config: Config, args: argparse.Namespace) -> int:
    upgrade(config.database_url)
    print("database is at the latest schema")
    return 0


def _config_check(config: Config, args: argparse.Namespace) -> int:
    problems = renderer_for(config).check(TEMPLATES)
    for problem in problems:
        print(f"{config.path}: templates: {problem}", file=sys.stderr)
    if not problems:
        print(f"{config.path}: ok")
    return 2 if problems else 0


def _routing_explain(config: Config, args: argparse.Namespace) -> int:
    try:
        explanation = explain(args.file.read_bytes(), config, tuple(args.to))
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UnparseableMail as exc:
        print(f"{args.file}: not a mail: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _print(as_json(explanation), True, ())
    else:
        print(as_text(explanation))
    return 0


def _tickets_list(config: Config, args: argparse.Namespace) -> int:
    with build_services(config).sessions() as session:
        _print(list_tickets(session, config, args.status), args.json,
               ("ref", "status", "severity", "queue", "requester", "subject"))
    return 0


def _tickets_show(config: Config, args: argparse.Namespace) -> int:
    with build_services(config).sessions() as session:
        view = show_ticket(session, config, args.ref)
    if view is None:
        raise LookupError(f"no case {args.ref}")
    if args.json:
        _print(view, True, ())
        return 0
    _print(view, False, ("ref", "status", "severity", "queue", "requester", "subject"))
    if sla_line(view):
        print(sla_line(view))
    for m in view["messages"]:
        print(f"\n--- {m['created_at']} {m['direction']} {m['kind']} {m['author']}\n{m['body_text']}")
    return 0


def _listing(outcome: Outcome | None, status: InboundStatus | None) -> Callable[[Config, argparse.Namespace], int]:
    def run(config: Config, args: argparse.Namespace) -> int:
        with build_services(config).sessions() as session:
            _print(list_inbound(session, config, outcome, status), args.json,
                   ("id", "received_at", "reason", "sender", "subject"))
        return 0
    return run


def _revoke_tokens(config: Config, args: argparse.Namespace) -> int:
    number = parse_ref(args.ref, config.case_prefix)
    with unit_of_work(build_services(config).sessions) as session:
        if number is None or session.get(Ticket, number) is None:
            raise LookupError(f"no case {args.ref}")
        count = revoke_tokens(session, number, utcnow(), args.staff)
    print(f"{args.ref}: {count} staff reply address(es) revoked")
    return 0


def _held_release(config: Config, args: argparse.Namespace) -> int:
    result = release(build_services(config), args.id, args.severity)
    if result.outcome is not Outcome.TICKET:
        print(f"mail {args.id}: {result.outcome.value if result.outcome else 'quarantined'} ({result.reason})")
        return 1
    print(f"mail {args.id}: opened {config.case_prefix}-{result.ticket_id}")
    return 0


def _quarantine_replay(config: Config, args: argparse.Namespace) -> int:
    services = build_services(config)
    ids = args.ids
    if not ids:
        with services.sessions() as session:
            ids = [row["id"] for row in list_inbound(session, config, None, InboundStatus.QUARANTINED)]
    failed = 0
    for inbound_id in ids:
        result = replay(services, inbound_id)
        failed += result.outcome is None
        print(f"mail {inbound_id}: {result.outcome.value if result.outcome else 'still quarantined'}")
    return 1 if failed else 0


def _outbox_list(config: Config, args: argparse.Namespace) -> int:
    with build_services(config).sessions() as session:
        _print(list_outbox(session, config, args.status), args.json,
               ("id", "status", "kind", "attempts", "recipients", "subject", "last_error"))
    return 0


def _outbox_retry(config: Config, args: argparse.Namespace) -> int:
    query = update(OutboxMail).where(OutboxMail.status != OutboxStatus.SENT)
    if args.ids:
        query = query.where(OutboxMail.id.in_(args.ids))
    with unit_of_work(build_services(config).sessions) as session:
        count = session.execute(query.values(status=OutboxStatus.PENDING, next_attempt_at=utcnow())).rowcount
    print(f"{count} mail(s) due for delivery now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
