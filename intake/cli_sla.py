"""`intake sweep --once` and `intake sla report`: the scheduled work and the SLA, from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from typing import Any, Callable
from zoneinfo import ZoneInfo

from intake.config import Config
from intake.service import build_services
from intake.sla_report import sla_report
from intake.sweep import run_sweeps
from intake.sweep_mail import describe_span
from models import utcnow

def add_commands(commands: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the commands on the `intake` parser (`command` is its helper for one subcommand)."""
    sweep = command(commands, "sweep", "run every scheduled sweep (follow-ups, SLA, SEV-1 reminders) once",
                    _sweep, json_flag=True)
    sweep.add_argument("--once", action="store_true", required=True,
                       help="one pass, then exit (`intake serve` runs the sweeps every minute)")
    sweep.add_argument("--now", metavar="TIMESTAMP", help="act as of this ISO 8601 time (default: now; "
                       "without an offset it is read in service.timezone)")
    sweep.add_argument("--dry-run", action="store_true", help="print what would be done; change and send nothing")
    sla = commands.add_parser("sla", help="response SLAs").add_subparsers(dest="sla_command", required=True)
    command(sla, "report", "per tier and severity: cases, met, breached, median and p90 time to first response",
            _report, json_flag=True).add_argument("--since", metavar="DATE", help="only cases opened since this date")


def parse_time(text: str, timezone: str) -> datetime:
    """ISO 8601; a date is its midnight, and a time without an offset is local to `timezone`."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date or time, like 2026-03-16T09:00") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=ZoneInfo(timezone))


def _sweep(config: Config, args: argparse.Namespace) -> int:
    try:
        now = parse_time(args.now, config.timezone) if args.now else utcnow().replace(microsecond=0)
    except ValueError as exc:
        print(f"--now: {exc}", file=sys.stderr)
        return 2
    services = build_services(config)
    actions = run_sweeps(services, now, dry_run=args.dry_run)
    services.sessions.kw["bind"].dispose()
    zone, ref = ZoneInfo(config.timezone), f"{config.case_prefix}-"
    rows = [{"sweep": a.sweep, "ticket": f"{ref}{a.ticket_id}", "kind": a.kind,
             "due": a.due.astimezone(zone).isoformat(), "recipients": list(a.recipients), "detail": a.detail}
            for a in actions]
    if args.json:
        print(json.dumps({"now": now.astimezone(zone).isoformat(), "dry_run": args.dry_run, "actions": rows},
                         indent=2, ensure_ascii=False))
        return 0
    verb = "would send" if args.dry_run else "sent"
    for row in rows:
        print(f"{row['ticket']}  {row['sweep']}: {verb} {row['kind']} ({row['detail']}), due {row['due']}, "
              f"to {', '.join(row['recipients'])}")
    summary = f"{len(rows)} action{'' if len(rows) == 1 else 's'}" if rows else "nothing due"
    print(f"as of {now.astimezone(zone).isoformat()}: {summary}{' (dry run: nothing changed)' if args.dry_run else ''}")
    return 0


def _report(config: Config, args: argparse.Namespace) -> int:
    try:
        since = parse_time(args.since, config.timezone) if args.since else None
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return 2
    services = build_services(config)
    with services.sessions() as session:
        rows = sla_report(session, config, utcnow(), since)
    services.sessions.kw["bind"].dispose()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return 0
    print(f"{'tier':<14}{'severity':>8}{'target':>8}{'cases':>7}{'met':>6}{'breached':>10}{'median':>14}{'p90':>14}")
    for row in rows:
        print(f"{row.tier:<14}{'SEV-' + str(row.severity):>8}{row.target:>8}{row.cases:>7}{row.met:>6}"
              f"{row.breached:>10}{_span(row.median):>14}{_span(row.p90):>14}")
    if not rows:
        print("no cases with a response target" + (f" opened since {args.since}" if args.since else ""))
    return 0


def sla_line(view: dict[str, Any]) -> str | None:
    """One line of `tickets show` text output."""
    sla = view.get("sla")
    if not sla:
        return None
    state = ("breached" if sla["breached"] else "met" if sla["responded_at"]
             else "paused" if sla["paused"] else "running")
    left = timedelta(seconds=sla["left"])
    return (f"SLA {sla['target']} ({sla['clock']}): {state}, due {sla['due'] or 'when the clock runs again'}, "
            f"used {describe_span(timedelta(seconds=sla['used']))}, "
            f"{'left ' + describe_span(left) if left >= timedelta(0) else 'over by ' + describe_span(-left)}")


def _span(value: timedelta | None) -> str:
    return "-" if value is None else describe_span(value)

