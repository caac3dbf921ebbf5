"""Named points where a test can make the process die, to prove nothing is lost or doubled.

Enabled only by the INTAKE_CRASH_AT environment variable of the process itself; nothing in
config.toml can turn it on. The points, in the order a mail meets them (docs/reliability.md):

- before_commit: the inbound row is written, its transaction not committed (intake/store.py)
- after_commit: the raw mail is committed, processing not started (intake/pipeline.py)
- mid_processing: a new case's row is written, the processing transaction still open
- before_process_commit: processing done, its transaction not committed
- after_process_commit: processing committed, the SMTP client not yet answered
- after_relay_accepted: the relay took an outgoing mail, its outbox row not yet marked sent
  (notifications/delivery.py)
- imap_after_commit: an IMAP message is committed, not yet moved or flagged (intake/imap_poller.py)
"""
from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("INTAKE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
