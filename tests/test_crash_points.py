"""`intake serve` killed (SIGKILL) at every named point of the pipeline, then restarted while
the senders retry like real MTAs: every mail ends as exactly one case, rejection or hold, and
every answer reaches the relay exactly once; only a kill after the relay accepted a mail and
before its outbox row is marked sent sends that one mail twice (docs/reliability.md).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from models import utcnow
from tests.conftest import CaptureServer, free_port, make_mail, run_cli, write_config
from tests.harness import Database, Serve, captured_ids, send_until_stored, wait_until

pytestmark = pytest.mark.integration

# In pipeline order (intake/crashpoints.py lists where each one sits). The listener answers 250
# on the store commit; processing and delivery follow it.
BEFORE_THE_250 = ["before_commit", "after_commit"]
POINTS = [*BEFORE_THE_250, "mid_processing", "before_process_commit", "after_process_commit", "after_relay_accepted"]


def _mails() -> list[tuple[bytes, str]]:
    """A new case, an untagged mail (rejected with an answer) and an unknown sender (held, no answer)."""
    return [
        (make_mail(subject="[SEV-2] Replication lag on prod"), "ann@acme.example"),
        (make_mail(subject="Replication lag, no tag", sender="Bob <bob@acme.example>"), "bob@acme.example"),
        (make_mail(subject="[SEV-3] who are you", sender="eve@nowhere.example"), "eve@nowhere.example"),
    ]


@pytest.mark.parametrize("point", POINTS)
def test_killed_at_a_named_point_every_mail_ends_once_and_every_answer_arrives_once(
        tmp_path: Path, db_url: str, capture: CaptureServer, point: str) -> None:
    port = free_port()
    config = write_config(tmp_path, db_url, port, capture.port)
    log = tmp_path / "serve.log"
    db = Database(db_url)
    running = [Serve(config, port, log, crash_at=point)]
    exits: list[int] = []
    died = utcnow()

    def restart_if_dead() -> None:
        """A supervisor's job: the killed service is started again, without the crash point."""
        nonlocal died
        if not running[0].alive():
            exits.append(running[0].wait_exit())
            died = utcnow()
            running[0] = Serve(config, port, log)

    try:
        attempts = [send_until_stored(lambda: port, raw, sender, between=restart_if_dead, timeout=90)
                    for raw, sender in _mails()]
        assert all(a.delivered for a in attempts), [a.codes for a in attempts]
        wait_until(lambda: bool(exits) or not running[0].alive() or db.settled(), 20, "killed or done")
        restart_if_dead()
        assert exits == [-9], running[0].output()[-3000:]      # the point exists and was reached once
        if point in BEFORE_THE_250:
            assert attempts[0].codes[0] == 0 and attempts[0].codes[-1] == 250   # no 250 before the kill
        else:
            assert attempts[0].codes == [250]
        # The dead worker leased what it had claimed for five minutes: at `after_relay_accepted`
        # always, at `after_process_commit` when it claimed the rows just committed in the moment
        # before the service ended with its processing process. `outbox retry` (an administrator's
        # command) stands in for waiting until the lease runs out.
        if point == "after_relay_accepted":
            wait_until(lambda: db.only_leased_left(died), 20, "only the dead worker's leases left")
        else:
            wait_until(lambda: db.settled() or db.only_leased_left(died), 20, db.unsettled)
        if not db.settled():
            assert run_cli("--config", str(config), "outbox", "retry")[0] == 0
        wait_until(db.settled, 20, db.unsettled)

        assert db.outcomes() == {"processed/ticket": 1, "processed/rejected": 1, "processed/held": 1}
        assert db.scalar("SELECT count(*) FROM tickets") == 1
        written = db.outbox_ids()
        assert sorted(written.values()) == ["acknowledgment", "rejection", "staff_notification"]
        arrived = captured_ids(capture.all_mails)
        assert set(arrived) == set(written)             # every answer arrived, and nothing else
        twice = sorted(mid for mid, n in arrived.items() if n > 1)
        if point == "after_relay_accepted":
            assert len(twice) == 1 and arrived[twice[0]] == 2, arrived   # the one mail in flight, twice
        else:
            assert twice == [], arrived
    finally:
        running[0].kill()
        db.close()
