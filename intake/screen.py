"""Stage 3, screen: is this mail from a robot or from us? Robots never get an automatic answer."""
from __future__ import annotations

import re
from dataclasses import dataclass

from intake.parse import ParsedEmail

_ROBOT_LOCALPARTS = re.compile(r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?)([+-].*)?$", re.I)


@dataclass(frozen=True)
class Screening:
    automatic: bool            # auto-reply, bulk, list, daemon: record, never answer
    reason: str | None         # why it counts as automatic
    own: bool                  # sent by one of our own addresses: a loop in the making
    bounce: bool               # a delivery status notification


def screen(mail: ParsedEmail, envelope_sender: str | None, own_addresses: frozenset[str]) -> Screening:
    own = mail.sender.email in own_addresses
    reason = _robot_reason(mail, envelope_sender)
    return Screening(automatic=reason is not None or own, reason=reason or ("own_address" if own else None),
                     own=own, bounce=mail.is_dsn)


def _header(mail: ParsedEmail, name: str) -> str:
    return " ".join(mail.headers.get(name, ())).strip().lower()


def _robot_reason(mail: ParsedEmail, envelope_sender: str | None) -> str | None:
    """RFC 3834 and the de-facto markers, most specific first."""
    if mail.is_dsn:
        return "bounce"
    auto = _header(mail, "auto-submitted")
    if auto and not auto.startswith("no"):
        return "auto_submitted"
    if _header(mail, "precedence") in ("bulk", "junk", "list", "auto_reply"):
        return "bulk"
    if any(mail.headers.get(h) for h in ("x-autoreply", "x-autorespond", "list-id", "list-unsubscribe", "x-loop")):
        return "auto_reply"
    local = mail.sender.email.partition("@")[0]
    if envelope_sender == "" or _ROBOT_LOCALPARTS.match(local):
        return "mailer_daemon"
    return None
