"""The one path both doors share: store, then process the stored mail in one transaction.

`ingest` is the entry point of the SMTP listener, the IMAP poller and `intake import`.
Errors in processing are translated here, at one boundary: the stored mail is quarantined
with its error (listed and replayable), the door still answers success, nothing loops.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Sequence, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from intake import metrics
from intake.apply import (SYSTEM, Context, add_event, add_reply, open_case, record_bounce, refuse,
                          within_reopen_window)
from intake.config import Config
from intake.correlate import Thread, find_thread
from intake.crashpoints import crash_point
from intake.decide import NewCase, decide_new
from intake.logs import log_event
from intake.parse import ParsedEmail, UnparseableMail, parse_mail
from intake.screen import Screening, screen
from intake.staff import StaffMail, apply_staff_mail, classify, notify_staff, record_suspect
from intake.store import Envelope, Stored, header_message_id, store
from intake.sweep_mail import breach_left_unnoticed
from intake.timetable import reschedule
from models import InboundMail, InboundStatus, Message, Outcome, Ticket, blobs, utcnow
from models.db import first_in_line, unit_of_work
from notifications.outbox import Outbox
from routing.policy import Organization
from routing.severity import read_severity

log = logging.getLogger("intake.pipeline")


@dataclass(frozen=True)
class Services:
    """What the stages need, built once by the composition root."""
    config: Config
    sessions: sessionmaker[Session]
    outbox: Outbox
    clock: Callable[[], datetime] = utcnow
    mail_enqueued: threading.Event | None = None    # wakes the outbox worker


@dataclass(frozen=True)
class Result:
    inbound_id: int
    outcome: Outcome | None         # None when quarantined
    reason: str | None = None
    ticket_id: int | None = None
    duplicate: bool = False
    sla_breaches: int = 0           # breach notices the processing enqueued (intake_sla_breaches)

    @property
    def metric_outcome(self) -> str:
        """The `outcome` label of intake_mails_received."""
        return "duplicate" if self.duplicate else self.outcome.value if self.outcome else "quarantined"


def ingest(services: Services, raw: bytes, envelope: Envelope) -> Result:
    """Store durably, then process (the IMAP door and `intake import`). Raises when the database
    fails: before the store (nothing kept) or while processing (the mail is kept as `received`;
    a retry finishes it)."""
    started = time.monotonic()
    return finish(services, accept(services, raw, envelope), envelope, raw, started)


def accept(services: Services, raw: bytes, envelope: Envelope) -> Stored:
    """Stage 1 alone, the durability point: what the SMTP door answers `250` on. Raises when the
    database fails (nothing kept, the sender retries)."""
    with first_in_line():
        stored = store(services.sessions, raw, envelope, services.clock())
    crash_point("after_commit")
    if stored.duplicate:
        log_event(log, "mail.duplicate", message_id=header_message_id(raw), mailbox=envelope.mailbox,
                  door=envelope.door, inbound=stored.inbound_id)
    return stored


def finish(services: Services, stored: Stored, envelope: Envelope, raw: bytes | None, started: float) -> Result:
    """Stages 2-6 on an accepted mail (`finish_together` of one)."""
    return finish_together(services, [(stored, envelope, raw, started)])[0]


def finish_together(services: Services, mails: Sequence[tuple[Stored, Envelope, bytes | None, float]]) -> list[Result]:
    """Stages 2-6 on accepted mails (each: stored, envelope, bytes, when its DATA ended), in the order
    given, in one transaction (`process_together`). A duplicate is processed too: a no-op unless an
    outage cut the first processing short. A new mail is parsed before the transaction opens, so
    SQLite's write lock is not held while mail-parser runs; its bytes are read back from the store
    when they are not at hand (`raw` None: a large mail, or a backlog past the processor's budget)."""
    batch = [(stored.inbound_id, _read_stored(services, stored, envelope, raw)) for stored, envelope, raw, _ in mails]
    results = []
    for (stored, envelope, _, started), result in zip(mails, process_together(services, batch)):
        if stored.duplicate:
            result = Result(stored.inbound_id, None, "duplicate", duplicate=True)
        metrics.received(envelope.door, result.metric_outcome, time.monotonic() - started)
        results.append(result)
    return results


def _read_stored(services: Services, stored: Stored, envelope: Envelope,
                 raw: bytes | None) -> ParsedEmail | UnparseableMail | None:
    if stored.duplicate:
        return None
    if raw is None:
        raw = _stored_raw(services, stored.inbound_id)
    return None if raw is None else read_mail(services.config, raw, envelope.sender)


def _raw_of(session: Session, inbound: InboundMail) -> bytes:
    """The mail's bytes; stored with its row in one transaction, so missing only from a damaged
    database: the mail is then quarantined with this error, not rejected as empty."""
    raw = blobs.stored_raw(session, inbound.id)
    if raw is None:
        raise LookupError(f"the bytes of inbound mail {inbound.id} are missing from inbound_raw")
    return raw


def _stored_raw(services: Services, inbound_id: int) -> bytes | None:
    """A stored mail's bytes, read outside any write transaction."""
    with services.sessions() as session:
        return blobs.stored_raw(session, inbound_id)


def read_mail(config: Config, raw: bytes, envelope_sender: str | None) -> ParsedEmail | UnparseableMail:
    """Stage 2, parse, under the config's limits: the parsed mail, or why it is not one."""
    try:
        return parse_mail(raw, envelope_sender=envelope_sender, max_attachment_bytes=config.max_attachment_bytes,
                          max_attachments=config.max_attachments, limits=config.parse_limits)
    except UnparseableMail as exc:
        return exc


def process(services: Services, inbound_id: int, *, releasing: bool = False,
            released_severity: int | None = None, parsed: ParsedEmail | UnparseableMail | None = None) -> Result:
    """Run stages 2-6 on a stored mail in one transaction (stage 2 may have run already: `parsed`);
    quarantine it on any failure but the database's own (OperationalError, re-raised)."""
    return process_together(services, [(inbound_id, parsed)], releasing=releasing,
                            released_severity=released_severity)[0]


def process_together(services: Services, mails: Sequence[tuple[int, ParsedEmail | UnparseableMail | None]], *,
                     releasing: bool = False, released_severity: int | None = None) -> list[Result]:
    """Run stages 2-6 on stored mails (each: its id, and its parse if done already), one after the
    other in one transaction: one commit, and on SQLite one wait for the write lock and one sync,
    for all of them (the processor hands over what queued up behind a mail). A fault in one rolls
    back all; each is then processed again on its own, where the faulty one is quarantined. A
    database failure (OperationalError) is re-raised: every mail of it stays `received`."""
    try:
        with unit_of_work(services.sessions) as session:
            done = []
            for n, (inbound_id, parsed) in enumerate(mails):
                if n:   # the next mail reads what the ones before it wrote, as in a transaction of its own
                    session.flush()
                    session.expunge_all()
                done.append(_process_in(session, services, inbound_id, releasing, released_severity, parsed))
            crash_point("before_process_commit")
    except OperationalError as exc:
        # The database is away, full or deadlocked: not the mail's fault, so no quarantine. The mail
        # stays `received`; the sender's retry (a duplicate) or resume_received finishes it.
        for inbound_id, _ in mails:
            log_event(log, "mail.deferred", logging.WARNING, inbound=inbound_id,
                      error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        raise
    except Exception as exc:    # the boundary: any fault becomes a quarantined mail, never a lost one
        if len(mails) > 1:      # rolled back together: which one failed is found by taking each alone
            return [process(services, inbound_id, releasing=releasing, released_severity=released_severity,
                            parsed=parsed) for inbound_id, parsed in mails]
        return [_quarantined(services, mails[0][0], exc)]
    if any(ctx is not None for _, ctx in done):     # something was processed, not only found done
        crash_point("after_process_commit")
        if services.mail_enqueued is not None:
            services.mail_enqueued.set()
    return [_processed(services, inbound_id, inbound, ctx) for (inbound_id, _), (inbound, ctx) in zip(mails, done)]


def _process_in(session: Session, services: Services, inbound_id: int, releasing: bool,
                released_severity: int | None,
                parsed: ParsedEmail | UnparseableMail | None) -> tuple[InboundMail | None, Context | None]:
    """One mail's processing in the open transaction: its row as processing left it, and its
    context (None when it was not waiting: processed meanwhile, by another instance or a retry)."""
    inbound = _inbound_for_update(session, inbound_id)
    waiting = inbound is not None and (
        inbound.outcome is Outcome.HELD if releasing else inbound.status is InboundStatus.RECEIVED)
    if inbound is None or not waiting:
        return inbound, None
    ctx = Context(services.config, services.outbox, services.clock())
    ticket = _process(session, services, ctx, inbound, releasing, released_severity, parsed)
    if ticket is not None and inbound.outcome is not Outcome.TICKET:
        # The mail may have moved its clocks: store their next times now. A case it opened
        # went in with its times (intake/apply.py open_case).
        reschedule(session, services.config, ticket, services.clock())
    inbound.status, inbound.processed_at = InboundStatus.PROCESSED, services.clock()
    session.connection().execute(_RECORD_OUTCOME, {"row_id": inbound.id, **{
        key: getattr(inbound, key) for key in _SET_BY_PROCESSING}})
    return inbound, ctx


def _processed(services: Services, inbound_id: int, inbound: InboundMail | None, ctx: Context | None) -> Result:
    """A committed mail's result, counted and logged."""
    if ctx is None or inbound is None:
        return _result(inbound_id, inbound)
    result = replace(_result(inbound_id, inbound), sla_breaches=len(ctx.breaches))
    metrics.SLA_BREACHES.inc(result.sla_breaches)
    ref = f"{services.config.case_prefix}-{result.ticket_id}" if result.ticket_id is not None else None
    log_event(log, "mail.processed", ref=ref, message_id=inbound.message_id, mailbox=inbound.mailbox,
              outcome=result.outcome.value if result.outcome else None, reason=result.reason, door=inbound.door,
              sender=inbound.sender, inbound=inbound_id)
    return result


def _quarantined(services: Services, inbound_id: int, exc: Exception) -> Result:
    facts: dict[str, str | None] = {}
    try:
        facts = _quarantine(services, inbound_id, exc)
    finally:                # a real fault: logged with its stack trace, even when quarantining failed too
        log_event(log, "mail.quarantined", logging.ERROR, exc_info=exc, **facts, inbound=inbound_id,
                  error=f"{type(exc).__name__}: {exc}")
    return Result(inbound_id, None, "quarantined")


def _inbound_for_update(session: Session, inbound_id: int) -> InboundMail | None:
    """The stored mail's row, locked, as a plain object outside the session: processing sets its
    outcome on it, and `process` writes what it set with one UPDATE (`_SET_BY_PROCESSING`). The
    ORM's load and its flush of the change cost ~0.4 ms of CPU more per mail."""
    row = session.connection().execute(_INBOUND_FOR_UPDATE, {"id": inbound_id}).first()
    return None if row is None else InboundMail(**row._mapping)


_INBOUND = cast(Table, InboundMail.__table__)
_INBOUND_FOR_UPDATE = select(_INBOUND).where(_INBOUND.c.id == bindparam("id")).with_for_update()
_SET_BY_PROCESSING = ("status", "processed_at", "outcome", "reason", "detail", "sender", "subject", "ticket_id")
_RECORD_OUTCOME = update(_INBOUND).where(_INBOUND.c.id == bindparam("row_id"))


def _result(inbound_id: int, inbound: InboundMail | None) -> Result:
    if inbound is None:
        return Result(inbound_id, None, "missing")
    return Result(inbound_id, inbound.outcome, inbound.reason, inbound.ticket_id)


def _quarantine(services: Services, inbound_id: int, exc: Exception) -> dict[str, str | None]:
    """Mark the stored mail quarantined; returns what the log line says about it."""
    with unit_of_work(services.sessions) as session:
        inbound = session.get(InboundMail, inbound_id)
        if inbound is None:
            return {}
        inbound.status = InboundStatus.QUARANTINED
        inbound.error = f"{type(exc).__name__}: {exc}"[:4000]
        return {"message_id": inbound.message_id, "mailbox": inbound.mailbox, "door": inbound.door}


def _process(session: Session, services: Services, ctx: Context, inbound: InboundMail, releasing: bool,
             released_severity: int | None, parsed: ParsedEmail | UnparseableMail | None) -> Ticket | None:
    """Returns the case the mail was recorded on: held here, it stays in the session's identity map
    (which holds clean objects only weakly), so rescheduling it needs no second SELECT."""
    config = services.config
    mail = parsed if parsed is not None else read_mail(config, _raw_of(session, inbound), inbound.envelope_sender)
    if isinstance(mail, UnparseableMail):
        inbound.outcome, inbound.reason, inbound.detail = Outcome.REJECTED, mail.reason, str(mail)
        return None
    ticket = _dispatch(session, services, ctx, inbound, mail, releasing, released_severity)
    # Set last, after any autoflush a query may cause: the row is written once, with the outcome, at the commit.
    inbound.sender, inbound.subject = mail.sender.email or inbound.envelope_sender, mail.subject
    return ticket


def _dispatch(session: Session, services: Services, ctx: Context, inbound: InboundMail, mail: ParsedEmail,
              releasing: bool, released_severity: int | None) -> Ticket | None:
    """Stages 3-6 for a parsed mail: a bounce, a staff mail, a reply, an automatic mail or a new request."""
    config = services.config
    screening = screen(mail, inbound.envelope_sender, config.own_addresses)
    if screening.own:
        inbound.outcome, inbound.reason, inbound.detail = Outcome.REJECTED, "own_address", "sent by our own address"
        return None
    if screening.bounce:
        return _bounce(session, ctx, inbound, mail)
    recipients = tuple(inbound.envelope_recipients)
    thread = None if releasing else find_thread(session, mail, recipients, config.reply_domain, config.case_prefix)
    staff = None if screening.automatic else classify(session, config, mail, recipients, thread)
    if staff is not None:
        _lock_case(session, staff.ticket)
        _staff(session, ctx, inbound, mail, staff)
        return staff.ticket
    if thread is not None:
        _lock_case(session, thread.ticket)
        if within_reopen_window(thread.ticket, ctx.now, config.reopen_window):
            _reply(session, ctx, inbound, mail, screening, thread)
            return thread.ticket
    if screening.automatic:
        inbound.outcome, inbound.reason = Outcome.REJECTED, screening.reason
        inbound.detail = "automatic mail opens no case and gets no answer"
        return None
    return _new_request(session, services, ctx, inbound, mail, screening, thread, releasing, released_severity)


def _lock_case(session: Session, ticket: Ticket) -> None:
    """One mail at a time changes a case: on PostgreSQL, where several processing processes (and
    instances) write side by side, the case's row is locked and read again before this mail acts
    on it. (FOR NO KEY UPDATE: rows that merely refer to the case, events and messages, still go
    in.) On SQLite, BEGIN IMMEDIATE made this transaction the only writer already."""
    if session.get_bind().dialect.name == "postgresql":
        session.refresh(ticket, with_for_update={"key_share": True})


def _reply(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, screening: Screening,
           thread: Thread) -> None:
    reading = read_severity(mail.subject, ctx.config.levels)
    message = add_reply(session, ctx, thread.ticket, inbound, mail, screening, reading)
    inbound.outcome, inbound.reason = Outcome.REPLY, thread.via
    if not screening.automatic:
        changes_severity = reading.outcome == "tagged" and reading.level != thread.ticket.severity
        notify_staff(session, ctx, thread.ticket, inbound, message,
                     "severity_change_requested" if changes_severity else "customer_reply")


def _staff(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail, staff: StaffMail) -> None:
    if staff.trusted:
        apply_staff_mail(session, ctx, inbound, mail, staff)
        breach_left_unnoticed(session, ctx, staff.ticket)
    else:
        record_suspect(session, ctx, inbound, mail, staff)
    inbound.outcome, inbound.reason = Outcome.REPLY, "staff" if staff.trusted else staff.why


def _bounce(session: Session, ctx: Context, inbound: InboundMail, mail: ParsedEmail) -> Ticket | None:
    """A delivery report: recorded on the case whose mail bounced, and staff are told."""
    ticket = _bounced_ticket(session, mail)
    message = record_bounce(session, ctx, inbound, mail, ticket)
    if ticket is not None and message is not None:
        notify_staff(session, ctx, ticket, inbound, message, "bounce")
    return ticket


def _new_request(session: Session, services: Services, ctx: Context, inbound: InboundMail, mail: ParsedEmail,
                 screening: Screening, previous: Thread | None, releasing: bool,
                 released_severity: int | None) -> Ticket | None:
    """A new case, a rejection or a hold; a late reply to a closed case opens a new one that refers to it."""
    mailbox = ctx.config.mailbox(inbound.mailbox)
    if previous is not None and released_severity is None and read_severity(mail.subject, ctx.config.levels).level is None:
        released_severity = previous.ticket.severity   # the follow-up case keeps the old severity
    decision = decide_new(mail, mailbox, tuple(inbound.envelope_recipients), ctx.config, ctx.now,
                          lambda org: _incidents_used(session, org, ctx.now), released_severity, releasing)
    if not isinstance(decision, NewCase):
        refuse(session, ctx, inbound, mail, decision, screening)
        return None
    ticket, message = open_case(session, ctx, inbound, mail, decision, screening,
                                previous.ticket if previous else None)
    crash_point("mid_processing")      # the case row is written, the transaction still open
    add_event(session, ticket, "routed", ctx.now, SYSTEM, decision.routing.record())
    notify_staff(session, ctx, ticket, inbound, message, "new_case")
    if previous is not None:
        add_event(session, previous.ticket, "followed_up_by", ctx.now, mail.sender.email,
                  {"ref": ticket.ref(ctx.config.case_prefix)})
    inbound.outcome, inbound.reason = Outcome.TICKET, decision.routing.rule
    return ticket


def _incidents_used(session: Session, org: Organization, now: datetime) -> int:
    start = org.contract_year_start(now)
    since = datetime(start.year, start.month, start.day, tzinfo=now.tzinfo)
    # count(*), not count(id): PostgreSQL then answers from ix_tickets_organization_created_at alone
    return session.scalar(select(func.count()).select_from(Ticket).where(
        Ticket.organization == org.name, Ticket.created_at >= since)) or 0


def _bounced_ticket(session: Session, mail: ParsedEmail) -> Ticket | None:
    if not mail.dsn_original_message_id:
        return None
    return session.scalar(select(Ticket).join(Message).where(
        Message.message_id == mail.dsn_original_message_id.strip("<>")).limit(1))


def resume_received(services: Services, older_than: timedelta = timedelta(0)) -> int:
    """Process mail stored but never processed (a crash between commit and processing)."""
    cutoff = services.clock() - older_than
    with services.sessions() as session:
        ids = list(session.scalars(select(InboundMail.id).where(
            InboundMail.status == InboundStatus.RECEIVED, InboundMail.received_at <= cutoff).order_by(InboundMail.id)))
    for inbound_id in ids:
        process(services, inbound_id)
    return len(ids)


def replay(services: Services, inbound_id: int) -> Result:
    """Run a quarantined mail through processing again (after a fix)."""
    with unit_of_work(services.sessions) as session:
        inbound = session.get(InboundMail, inbound_id, with_for_update=True)
        if inbound is None or inbound.status is not InboundStatus.QUARANTINED:
            raise LookupError(f"inbound mail {inbound_id} is not quarantined")
        inbound.status, inbound.error = InboundStatus.RECEIVED, None
    return process(services, inbound_id)


def release(services: Services, inbound_id: int, severity: int | None = None) -> Result:
    """Open a case from a held mail, bypassing the hold (an administrator's decision)."""
    with services.sessions() as session:
        inbound = session.get(InboundMail, inbound_id)
        if inbound is None or inbound.outcome is not Outcome.HELD:
            raise LookupError(f"inbound mail {inbound_id} is not held")
    return process(services, inbound_id, releasing=True, released_severity=severity)
