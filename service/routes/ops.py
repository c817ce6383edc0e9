"""Operations: workers, health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text

from service.deps import BackendDep, ReadAccess
from service.routes.studies import AUTH
from service.schemas import Problem, WorkerOut
from studies import queue
from studies.db.engine import session_scope
from studies.db.models import Job, JobState

router = APIRouter(tags=["operations"])


@router.get("/workers", response_model=list[WorkerOut], dependencies=[ReadAccess], responses=AUTH)
def list_workers(backend: BackendDep) -> list[WorkerOut]:
    """Registered workers, their device, last heartbeat and the jobs they hold."""
    with session_scope(backend.factory, readonly=True) as session:
        held = session.execute(select(Job.worker_id, Job.id).where(Job.state == JobState.RUNNING)).all()
    jobs: dict[str | None, list[int]] = {}
    for worker_id, job_id in held:
        jobs.setdefault(worker_id, []).append(job_id)
    return [
        WorkerOut(
            id=w.id,
            hostname=w.hostname,
            pid=w.pid,
            device=w.device,
            pack_size=w.pack_size,
            status=w.status,
            reason=w.reason,
            started_at=w.started_at,
            last_heartbeat=w.last_heartbeat,
            current_jobs=jobs.get(w.id, []),
        )
        for w in queue.list_workers(backend.factory)
    ]


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Problem, "description": "the database is unreachable"}})
def readyz(backend: BackendDep, response: Response) -> dict[str, str]:
    """The database answers."""
    try:
        with backend.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "database unreachable"}
    return {"status": "ready"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus exposition: queue depth by state, running jobs, completed trials, durations, heartbeats."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
