"""The scheduled sweeps (stage 8): follow-ups and auto-close, SLA warnings and breaches, SEV-1
update reminders. `intake serve` runs them every minute; `intake sweep --once` runs them once.

Each sweep looks only at cases whose stored time has come (notifications/sweeps.py claims
them), works out from the case's history what is really due (intake/timetable.py), acts, and
stores the next time, all in one transaction. Outbox dedupe keys name the case and the step,
so a step can never produce its mail twice.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import Session

from intake.apply import SYSTEM, Context, add_event, reopen_until
from intake.config import Config
from intake.lifecycle import change_status
from intake.pipeline import Services
from intake.sweep_mail import customer_mail, describe_span, record_breach, staff_notice
from intake.timetable import followup_step, load_history, most_urgent, sev1_reminder_due, sla_of, store_sla
from models import Ticket, TicketStatus
from notifications.outbox import Outbox
from notifications.sweeps import Action, Sweep, run_sweep
from routing.followup import FollowupStep
from routing.sla_state import SlaState

SWEEP_SECONDS = 60          # how often `intake serve` runs the sweeps


def run_sweeps(services: Services, now: datetime, dry_run: bool = False) -> list[Action]:
    """Every sweep once, as of `now`; wakes the outbox worker when mail was enqueued."""
    actions = [action for sweep in sweeps(services.config, services.outbox)
               for action in run_sweep(services.sessions, sweep, now, dry_run)]
    if actions and not dry_run and services.mail_enqueued is not None:
        services.mail_enqueued.set()
    return actions


def sweeps(config: Config, outbox: Outbox) -> tuple[Sweep, ...]:
    return FollowupSweep(config, outbox), SlaSweep(config, outbox), Sev1Sweep(config, outbox)


def _stamp(when: datetime) -> str:
    return f"{when.timestamp():.0f}"


class FollowupSweep:
    """Pending cases: attempt after attempt on separate business days, then the closing notice."""
    name = "followups"

    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config, self.outbox = config, outbox

    def due(self, now: datetime) -> ColumnElement[bool]:
        return and_(Ticket.status == TicketStatus.PENDING, Ticket.next_followup_at <= now)

    def act(self, session: Session, ticket: Ticket, now: datetime) -> Action | None:
        step = followup_step(self.config, ticket, load_history(session, ticket))
        if step is None or step.due > now:
            ticket.next_followup_at = step.due if step else None
            return None
        ctx = Context(self.config, self.outbox, now)
        if step.action == "close":
            return self._close(session, ctx, ticket, step)
        of = self.config.followup_attempts
        ticket.followup_attempts = step.attempt
        add_event(session, ticket, "followup_sent", now, SYSTEM,
                  {"attempt": step.attempt, "of": of, "due": step.due.isoformat()})
        session.flush()
        after = followup_step(self.config, ticket, load_history(session, ticket))
        assert after is not None
        ticket.next_followup_at = after.due
        to = customer_mail(session, ctx, ticket, "followup", f"followup:{ticket.id}:{step.attempt}:{_stamp(step.due)}",
                           {"attempt": step.attempt, "attempts": of, "last": step.attempt == of,
                            "closes_at": ctx.local(after.due) if after.action == "close" else None})
        return Action(self.name, ticket.id, "followup", step.due, to, f"attempt {step.attempt} of {of}")

    def _close(self, session: Session, ctx: Context, ticket: Ticket, step: FollowupStep) -> Action:
        window = self.config.reopen_window
        change_status(session, ticket, TicketStatus.CLOSED, SYSTEM, ctx.now, "no answer to follow-ups",
                      attempts=step.attempt)
        to = customer_mail(session, ctx, ticket, "closing_notice", f"closing_notice:{ticket.id}:{_stamp(step.due)}",
                           {"attempts": step.attempt, "reopen_window": window.describe(),
                            "reopen_until": ctx.local(reopen_until(ctx.now, window))})
        return Action(self.name, ticket.id, "closing_notice", step.due, to, f"closed after {step.attempt} attempts")


class SlaSweep:
    """Open, unanswered cases: a warning at `sla.warn_at` of the target, a breach notice past it; each once."""
    name = "sla"

    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config, self.outbox = config, outbox

    def due(self, now: datetime) -> ColumnElement[bool]:
        return and_(Ticket.status == TicketStatus.OPEN, Ticket.first_response_at.is_(None), or_(
            and_(Ticket.sla_warn_at <= now, Ticket.sla_warned_at.is_(None)),
            and_(Ticket.first_response_due <= now, Ticket.sla_breached_at.is_(None))))

    def act(self, session: Session, ticket: Ticket, now: datetime) -> Action | None:
        state = sla_of(self.config, ticket, load_history(session, ticket).changes, now)
        action = None
        if state is not None and ticket.sla_breached_at is None:
            ctx = Context(self.config, self.outbox, now)
            if state.breached and state.due is not None:
                action = self._breach(session, ctx, ticket, state, state.due)
            elif state.warn_due is not None and state.warn_due <= now and ticket.sla_warned_at is None:
                action = self._warn(session, ctx, ticket, state, state.warn_due)
        store_sla(ticket, state)
        return action

    def _breach(self, session: Session, ctx: Context, ticket: Ticket, state: SlaState, due: datetime) -> Action:
        to = record_breach(session, ctx, ticket, due)
        return Action(self.name, ticket.id, "sla_breach", due, to, f"target {state.target.duration}")

    def _warn(self, session: Session, ctx: Context, ticket: Ticket, state: SlaState, due: datetime) -> Action:
        ticket.sla_warned_at = ctx.now
        used = round(100 * state.used / state.target.amount) if state.target.amount else 100
        add_event(session, ticket, "sla_warning", ctx.now, SYSTEM, {"used_percent": used})
        to = staff_notice(session, ctx, ticket, "sla_warning", f"sla_warning:{ticket.id}",
                          {"used_percent": used, "left": describe_span(state.left)})
        return Action(self.name, ticket.id, "sla_warning", due, to, f"{used} % of {state.target.duration} used")


class Sev1Sweep:
    """Open most-urgent cases: staff are reminded when no update went to the customer for a while."""
    name = "sev1"

    def __init__(self, config: Config, outbox: Outbox) -> None:
        self.config, self.outbox = config, outbox

    def due(self, now: datetime) -> ColumnElement[bool]:
        return and_(Ticket.status == TicketStatus.OPEN, Ticket.severity == most_urgent(self.config),
                    or_(Ticket.next_sev1_reminder_at.is_(None), Ticket.next_sev1_reminder_at <= now))

    def act(self, session: Session, ticket: Ticket, now: datetime) -> Action | None:
        history = load_history(session, ticket)
        due = sev1_reminder_due(self.config, ticket, history)
        if due is None or due > now:
            ticket.next_sev1_reminder_at = due
            return None
        add_event(session, ticket, "sev1_reminder", now, SYSTEM, {"due": due.isoformat()})
        ctx = Context(self.config, self.outbox, now)
        to = staff_notice(session, ctx, ticket, "sev1_reminder", f"sev1_reminder:{ticket.id}:{_stamp(due)}",
                          {"last_update": ctx.local(history.last_update_at),
                           "every": self.config.sev1_update_every.describe()})
        session.flush()
        ticket.next_sev1_reminder_at = sev1_reminder_due(self.config, ticket, load_history(session, ticket))
        return Action(self.name, ticket.id, "sev1_reminder", due, to, f"no update for {self.config.sev1_update_every}")
