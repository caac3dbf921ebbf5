"""Handing mail to the relay. A 4xx or a network error is temporary; a 5xx for every recipient is not."""
from __future__ import annotations

import smtplib
import socket
import threading
from typing import Protocol, Sequence


class TemporaryFailure(Exception):
    """Try again later: the relay is away or asked us to wait."""


class PermanentFailure(Exception):
    """The relay refused this mail for good."""


class Sender(Protocol):
    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> None: ...

    def close(self) -> None:
        """End what `send` kept open (called at the end of each delivery pass)."""


class SmtpSender:
    """One connection per thread, kept between the mails of a delivery pass: a pass pays one
    connect, EHLO and QUIT, not one per mail."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._local = threading.local()

    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> None:
        reused = getattr(self._local, "smtp", None) is not None
        try:
            self._send(sender, recipients, raw)
        except TemporaryFailure:
            if not reused:
                raise
            # the relay may have closed or capped a kept connection: once more on a new one (a
            # temporary failure is retried anyway, so this adds no risk of a second copy)
            self._send(sender, recipients, raw)

    def close(self) -> None:
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _send(self, sender: str, recipients: Sequence[str], raw: bytes) -> None:
        # An address outside ASCII (RFC 6531; in the headers too, notifications/message.py) needs SMTPUTF8.
        options = [] if sender.isascii() and all(r.isascii() for r in recipients) else ["SMTPUTF8"]
        try:
            smtp = self._connection()
            smtp.sendmail(sender, list(recipients), raw, mail_options=options)  # refused recipients: not retried
        except smtplib.SMTPNotSupportedError:
            self._drop()
            raise PermanentFailure("the relay does not offer SMTPUTF8, which an address outside ASCII needs") from None
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop()
            raise _classify(exc.recipients.values()) from None
        except smtplib.SMTPResponseException as exc:
            self._drop()
            kind = PermanentFailure if 500 <= exc.smtp_code < 600 else TemporaryFailure
            raise kind(f"{exc.smtp_code} {_text(exc.smtp_error)}") from None
        except (OSError, socket.timeout, smtplib.SMTPException) as exc:
            self._drop()
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:    # this mail's own fault, whatever it is: it fails, the queue goes on
            self._drop()            # (the session may be mid-transaction)
            raise PermanentFailure(f"{type(exc).__name__}: {exc}") from exc

    def _connection(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        if smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            self._local.smtp = smtp
        return smtp

    def _drop(self) -> None:
        """After a failure the connection's state is unknown: the next mail starts on a new one."""
        smtp: smtplib.SMTP | None = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            smtp.close()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _classify(replies: object) -> Exception:
    codes = [code for code, _ in replies]  # type: ignore[attr-defined]
    detail = "; ".join(f"{code} {_text(msg)}" for code, msg in replies)  # type: ignore[attr-defined]
    return PermanentFailure(detail) if all(500 <= c < 600 for c in codes) else TemporaryFailure(detail)
