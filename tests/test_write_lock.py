"""The in-process SQLite write lock: handed over in arrival order, a door's store first."""
from __future__ import annotations

import threading
import time

from models.db import FairLock, first_in_line


def _queue_up(lock: FairLock, names: list[str], taken: list[str], first: set[str]) -> list[threading.Thread]:
    """Start a waiter per name, one after the other, each queued before the next starts."""
    threads = []
    for name in names:
        def wait(name: str = name) -> None:
            if name in first:
                with first_in_line():
                    assert lock.acquire(5)
            else:
                assert lock.acquire(5)
            taken.append(name)
            lock.release()
        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.05)        # queued before the next one comes
        threads.append(thread)
    return threads


def test_waiters_get_the_lock_in_the_order_they_came_and_a_store_goes_first() -> None:
    lock, taken = FairLock(), []
    assert lock.acquire(1)
    threads = _queue_up(lock, ["processing 1", "delivery", "store", "processing 2"], taken, first={"store"})
    lock.release()
    for thread in threads:
        thread.join(5)
    assert taken == ["store", "processing 1", "delivery", "processing 2"]


def test_a_wait_that_times_out_leaves_the_line_and_the_lock_still_works() -> None:
    lock = FairLock()
    assert lock.acquire(1)
    started = time.monotonic()
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(lock.acquire(0.1)))
    waiter.start()
    waiter.join(5)
    assert results == [False] and time.monotonic() - started >= 0.1
    lock.release()
    assert lock.acquire(0.1)        # free again: the timed-out waiter did not take it
    lock.release()
