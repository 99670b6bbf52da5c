"""Tasks the tests (and only they) run in the dock's worker process: found as 'worker_tasks:<name>'."""

from __future__ import annotations

import os
import time


def process_id(job) -> int:
    return os.getpid()


def wait_for_cancel(job, seconds: float = 300.0) -> str:
    """Report once, then wait until cancelled (a task that runs for a while)."""
    job.report("started")
    deadline = time.monotonic() + seconds
    while not job.is_cancelled() and time.monotonic() < deadline:
        time.sleep(0.05)
    return "cancelled" if job.is_cancelled() else "timed out"


def echo(job, value):
    """`value` back, through the channel both ways (arrays through shared memory)."""
    return value


def imported(job, *names: str) -> dict:
    import sys

    return {name: name in sys.modules for name in names}


def ignore_cancel(job, seconds: float = 300.0) -> str:
    """Report once, then run on whatever the dock says (a stuck task)."""
    job.report("started")
    time.sleep(seconds)
    return "done"
