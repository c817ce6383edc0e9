"""`hdetach health worker`: is a worker on this host alive? For container healthchecks.

Healthy when at least one worker registered from this host (`socket.gethostname()`, as the
executors record it in hd_workers.hostname) has status running and a heartbeat at most `max_age`
seconds old. Quick and bounded: no torch import, one connection with a short connect (and, on
PostgreSQL, statement) timeout, and an alarm that ends the check if the database still hangs.
"""

from __future__ import annotations

import math
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from studies.db.engine import database_url, session_factory
from studies.db.models import Worker, WorkerStatus, utcnow
from studies.queue.workers import list_workers


class HealthTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise HealthTimeout in the main thread after `seconds` (elsewhere: no alarm)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise HealthTimeout(f"no answer from the database within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def host_workers(url: str, hostname: str, timeout: float) -> list[Worker]:
    """The workers registered from `hostname`, newest first, read over one short-lived connection."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not Path(path).is_file():
            raise FileNotFoundError(f"no database file at {path}")
        connect_args: dict[str, Any] = {"timeout": timeout}
    else:
        connect_args = {
            "connect_timeout": max(1, math.ceil(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    try:
        return list(list_workers(session_factory(engine), hostname=hostname))
    finally:
        engine.dispose()


def describe(worker: Worker, now: datetime, max_age: float) -> str:
    who = f"worker {worker.id} ({worker.device}, pid {worker.pid})"
    if worker.status == WorkerStatus.HALTED:
        return f"{who} halted: {worker.reason or 'no reason recorded'}"
    age = max(0.0, (now - worker.last_heartbeat).total_seconds())
    if worker.status == WorkerStatus.RUNNING:
        return f"{who} last heartbeat {age:.0f} s old (max {max_age:g} s)"
    # stopped: signed off, or marked so by a reaper after a silence
    return f"{who} {worker.status}, last heartbeat {age:.0f} s ago"


def check_worker_health(
    url: str,
    max_age: float,
    timeout: float = 5.0,
    hostname: str | None = None,
    now: datetime | None = None,
) -> tuple[bool, str]:
    """(healthy, one line saying why)."""
    hostname = hostname or socket.gethostname()
    try:
        with _deadline(2 * timeout):
            workers = host_workers(url, hostname, timeout)
    except Exception as error:  # unreachable, missing tables, a hang cut short: all unhealthy
        return False, f"unhealthy: cannot read the workers from the database: {_one_line(error)}"
    if not workers:
        return False, f"unhealthy: no worker registered from host {hostname}"
    now = now or utcnow()
    ages = [
        max(0.0, (now - w.last_heartbeat).total_seconds())
        for w in workers
        if w.status == WorkerStatus.RUNNING
    ]
    live = [age for age in ages if age <= max_age]
    if live:
        return True, (
            f"healthy: {len(live)} worker(s) running on host {hostname}, last heartbeat {min(live):.1f} s ago"
        )
    others = f" (and {len(workers) - 1} older)" if len(workers) > 1 else ""
    return False, (
        f"unhealthy: no live worker from host {hostname}; the newest{others}: "
        f"{describe(workers[0], now, max_age)}"
    )
