"""APScheduler 3 lives here only. Jobs just trigger work; all state stays in the database."""
from __future__ import annotations

from typing import Callable, Mapping

from apscheduler.schedulers.background import BackgroundScheduler


def start_scheduler(jobs: Mapping[str, tuple[Callable[[], object], float]]) -> BackgroundScheduler:
    """Run each job every N seconds; a late or missed run is run once, never once per missed tick."""
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    for name, (job, seconds) in jobs.items():
        scheduler.add_job(job, "interval", seconds=seconds, id=name, name=name)
    scheduler.start()
    return scheduler
