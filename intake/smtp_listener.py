"""The SMTP door: a thin aiosmtpd handler that answers 250 only after the mail is committed.

The store runs in a worker thread; the stored mail is then handed to processing (in its own
process, intake/processing_process.py), so the answer waits for the commit and nothing else.
The reply codes are constants here; internals never reach the SMTP session (a database outage
is a plain 451, the client retries).
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope as SmtpEnvelope, Session as SmtpSession

from intake.logs import log_event
from intake.pipeline import Services, accept
from intake.processing_process import ProcessingLanes
from intake.processor import Accepted, Processor
from intake.reload import ServicesHolder, holding
from intake.smtp_session import IntakeSMTP, peer_of
from intake.store import Envelope

log = logging.getLogger("intake.smtp")

OK = "250 2.0.0 Ok: stored"
OK_DUPLICATE = "250 2.0.0 Ok: already stored"
RECIPIENT_OK = "250 2.1.5 Ok"
NO_SUCH_MAILBOX = "550 5.1.1 No such mailbox here"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"



class IntakeHandler:
    def __init__(self, services: ServicesHolder, executor: ThreadPoolExecutor,
                 processor: Processor | ProcessingLanes) -> None:
        self.services = services
        self.executor = executor
        self.processor = processor

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self._accepts(address):
            log_event(log, "smtp.recipient_refused", recipient=address, peer=peer_of(session),
                      answer=NO_SUCH_MAILBOX[:3])
            return NO_SUCH_MAILBOX
        envelope.rcpt_tos.append(address)
        return RECIPIENT_OK

    def _accepts(self, address: str) -> bool:
        """Our mailboxes, with or without a +tag (per-case reply addresses)."""
        local, _, domain = address.lower().rpartition("@")
        plain = f"{local.split('+', 1)[0]}@{domain}"
        return any(box.address == plain for box in self.services.current.config.mailboxes)

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        services = self.services.current    # this mail keeps this config, whatever a reload does meanwhile
        raw = envelope.original_content or b""
        mailbox = services.config.mailbox(envelope.rcpt_tos[0] if envelope.rcpt_tos else "").address
        mail_envelope = Envelope(door="smtp", mailbox=mailbox,
                                 sender=envelope.mail_from or "", recipients=tuple(a.lower() for a in envelope.rcpt_tos))
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            stored = await loop.run_in_executor(self.executor, accept, services, raw, mail_envelope)
        except Exception:       # a real fault (the database is away): the client retries
            log_event(log, "smtp.store_failed", logging.ERROR, exc_info=True, mailbox=mailbox,
                      sender=mail_envelope.sender, peer=peer_of(session), answer=TRY_LATER[:3])
            return TRY_LATER
        self.processor.submit(Accepted(services, stored, mail_envelope, raw, started))
        return OK_DUPLICATE if stored.duplicate else OK


class _Controller(Controller):
    def factory(self) -> SMTP:
        return IntakeSMTP(self.handler, **self.SMTP_kwargs)


def start_listener(services: Services | ServicesHolder, executor: ThreadPoolExecutor,
                   processor: Processor | ProcessingLanes, host: str, port: int) -> Controller:
    """Listen in a background thread; the size limit from config makes aiosmtpd answer 552 during DATA
    (bound at start: a reload does not change it)."""
    holder = holding(services)
    controller = _Controller(IntakeHandler(holder, executor, processor), hostname=host, port=port,
                             ready_timeout=10, data_size_limit=holder.current.config.max_message_bytes,
                             decode_data=False)
    controller.start()
    log_event(log, "smtp.listening", host=host, port=port)
    return controller


def serving(controller: Controller) -> bool:
    """Whether the listener still accepts connections (for the health endpoint)."""
    return controller.loop.is_running() and controller.server is not None and controller.server.is_serving()
