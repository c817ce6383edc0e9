"""The worker registry: who is running, on what device, and when it last reported."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from studies.db.engine import run_transaction, session_scope
from studies.db.models import Worker, WorkerStatus
from studies.exceptions import NotFound
from studies.queue._common import resolve_now


def register_worker(
    factory: sessionmaker[Session],
    worker_id: str,
    hostname: str,
    pid: int,
    device: str,
    pack_size: int,
    now: datetime | None = None,
) -> Worker:
    now = resolve_now(now)

    def work(session: Session) -> Worker:
        worker = session.get(Worker, worker_id) or Worker(id=worker_id, started_at=now)
        worker.hostname, worker.pid, worker.device, worker.pack_size = hostname, pid, device, pack_size
        worker.last_heartbeat = now
        worker.status = WorkerStatus.RUNNING
        session.add(worker)
        return worker

    return run_transaction(factory, work)


def set_worker_status(
    factory: sessionmaker[Session],
    worker_id: str,
    status: WorkerStatus,
    now: datetime | None = None,
    reason: str | None = None,
) -> None:
    """`reason`: why (a halted worker says what failed); kept until the next status with one."""
    now = resolve_now(now)

    def work(session: Session) -> None:
        worker = session.get(Worker, worker_id)
        if worker is None:
            raise NotFound(f"no worker {worker_id}")
        worker.status = status
        worker.last_heartbeat = now
        if reason is not None:
            worker.reason = reason

    run_transaction(factory, work)


def worker_stopped(factory: sessionmaker[Session], worker_id: str, now: datetime | None = None) -> None:
    set_worker_status(factory, worker_id, WorkerStatus.STOPPED, now)


def list_workers(
    factory: sessionmaker[Session],
    alive_within: float | None = None,
    now: datetime | None = None,
    hostname: str | None = None,
) -> Sequence[Worker]:
    """All workers, newest first; with `alive_within` (seconds), only those that reported since;
    with `hostname`, only those registered from that host."""
    statement = select(Worker).order_by(Worker.started_at.desc(), Worker.last_heartbeat.desc())
    if hostname is not None:
        statement = statement.where(Worker.hostname == hostname)
    if alive_within is not None:
        since = resolve_now(now) - timedelta(seconds=alive_within)
        statement = statement.where(Worker.last_heartbeat >= since, Worker.status != WorkerStatus.STOPPED)
    with session_scope(factory, readonly=True) as session:
        return session.scalars(statement).all()
