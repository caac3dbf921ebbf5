"""Handing mail to the relay. A 4xx or a network error is temporary; a 5xx for every recipient is not."""
from __future__ import annotations

import smtplib
import socket
from typing import Protocol, Sequence


class TemporaryFailure(Exception):
    """Try again later: the relay is away or asked us to wait."""


class PermanentFailure(Exception):
    """The relay refused this mail for good."""


class Sender(Protocol):
    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> None: ...


class SmtpSender:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout

    def send(self, sender: str, recipients: Sequence[str], raw: bytes) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                refused = smtp.sendmail(sender, list(recipients), raw)
        except smtplib.SMTPRecipientsRefused as exc:
            raise _classify(exc.recipients.values()) from None
        except smtplib.SMTPResponseException as exc:
            kind = PermanentFailure if 500 <= exc.smtp_code < 600 else TemporaryFailure
            raise kind(f"{exc.smtp_code} {_text(exc.smtp_error)}") from None
        except (OSError, socket.timeout, smtplib.SMTPException) as exc:
            raise TemporaryFailure(f"{type(exc).__name__}: {exc}") from None
        if refused:   # some recipients got it; the rest are reported, not retried (no duplicates)
            return


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _classify(replies: object) -> Exception:
    codes = [code for code, _ in replies]  # type: ignore[attr-defined]
    detail = "; ".join(f"{code} {_text(msg)}" for code, msg in replies)  # type: ignore[attr-defined]
    return PermanentFailure(detail) if all(500 <= c < 600 for c in codes) else TemporaryFailure(detail)
