"""What every executor process holds: its id, the database (opened patiently: a restarting
database is waited out), Optuna's storage, a stop flag, and its leases, renewed by a heartbeat
thread that also learns which jobs were lost or cancelled."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from deployment.backend import Database
from studies import queue
from studies.queue import ClaimedJob
from workers.failures import FailureKind, classify, one_line

T = TypeVar("T")

log = logging.getLogger("hdetach.leases")


class LeaseKeeper:
    """The leases one process holds, renewed by a heartbeat thread.

    The heartbeat also learns which jobs were lost (reaped, or finished elsewhere) and which
    belong to cancelled studies; executors read `lost` and `cancelled` to stop that work.
    """

    def __init__(
        self, factory: sessionmaker[Session], worker_id: str, lease_seconds: float, heartbeat_seconds: float
    ):
        self.factory, self.worker_id = factory, worker_id
        self.lease_seconds, self.heartbeat_seconds = lease_seconds, heartbeat_seconds
        self._leases: dict[int, str] = {}  # job id -> lease token
        self._lost: set[int] = set()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def hold(self, jobs: Iterable[ClaimedJob]) -> None:
        with self._lock:
            for job in jobs:
                self._leases[job.job_id] = job.lease_token
                self._lost.discard(job.job_id)
                self._cancelled.discard(job.job_id)

    def forget(self, jobs: Iterable[ClaimedJob]) -> None:
        with self._lock:
            for job in jobs:
                self._leases.pop(job.job_id, None)

    @property
    def lost(self) -> set[int]:
        with self._lock:
            return set(self._lost)

    @property
    def cancelled(self) -> set[int]:
        with self._lock:
            return set(self._cancelled)

    def release_all(self, reason: str) -> None:
        """Give back every job still held, unfinished and without counting the attempt."""
        with self._lock:
            leases, self._leases = self._leases, {}
        for job_id, token in leases.items():
            queue.release(self.factory, job_id, token, reason)

    def beat_once(self) -> None:
        with self._lock:
            leases = dict(self._leases)
        reply = queue.heartbeat(self.factory, self.worker_id, leases, self.lease_seconds)
        with self._lock:
            self._lost |= set(reply.lost)
            self._cancelled |= set(reply.cancelled)

    def _beat(self) -> None:
        while not self._stopped.wait(self.heartbeat_seconds):
            try:
                self.beat_once()
            except Exception:  # a database hiccup must not kill the executor; the next beat retries
                log.exception("heartbeat failed")


def _open_database(database_url: str) -> Database:
    """The executor's database with its Optuna storage opened now, so that opening fails (and is
    tried again) here rather than at the first trial. No pre-ping: queue operations retry instead."""
    database = Database(database_url, pool_pre_ping=False)
    try:
        database.storage  # noqa: B018 (opened for its side effect)
    except BaseException:
        database.close()
        raise
    return database


def wait_out_infrastructure(action: Callable[[], T], what: str, patience_seconds: float = 120.0) -> T:
    """`action()`, tried again with growing pauses while it fails for infrastructure reasons (the
    database restarting, a dropped connection); other errors, or one past `patience_seconds`, raise."""
    deadline, pause = time.monotonic() + patience_seconds, 0.5
    while True:
        try:
            return action()
        except Exception as error:
            if classify(error) is not FailureKind.INFRASTRUCTURE or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); trying again in %.1f s", what, one_line(error), pause)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


class Executor:
    """What every executor holds: an id, the database, Optuna's storage, its leases, a stop flag."""

    def __init__(
        self,
        database_url: str,
        id_prefix: str,
        lease_seconds: float,
        heartbeat_seconds: float,
        database_patience_seconds: float = 120.0,
    ):
        self.id = f"{id_prefix}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.database = wait_out_infrastructure(
            lambda: _open_database(database_url), "opening the database", database_patience_seconds
        )
        self.engine, self.factory, self.storage = (
            self.database.engine,
            self.database.factory,
            self.database.storage,
        )
        self.stop_requested = threading.Event()
        self.leases = LeaseKeeper(self.factory, self.id, lease_seconds, heartbeat_seconds)

    def close(self) -> None:
        self.database.close()
