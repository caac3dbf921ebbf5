"""Named points where a test can make the process die, to prove nothing is lost or doubled.

Enabled only by the INTAKE_CRASH_AT environment variable of the process itself; nothing in
config.toml can turn it on.
"""
from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("INTAKE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
