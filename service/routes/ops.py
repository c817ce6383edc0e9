"""Operations: workers, health, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.deps import AUTH, BackendDep, ReadAccess, Responses
from service.schemas import WorkerOut
from studies import queue
from studies.db.engine import database_answers

router = APIRouter(tags=["operations"])


@router.get("/workers", response_model=list[WorkerOut], dependencies=[ReadAccess], responses=AUTH)
def list_workers(backend: BackendDep) -> list[WorkerOut]:
    """Registered workers, their device, last heartbeat and the jobs they hold."""
    jobs = queue.running_jobs_by_worker(backend.factory)
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


class Readiness(BaseModel):
    status: str = Field(description="`ready`, or `database unreachable` (with 503)")


# a probe's answer, not an error of the request: declared as itself, not as a problem
UNREADY: Responses = {
    503: {"model": Readiness, "description": "the database is unreachable", "x-not-a-problem": True}
}


@router.get("/readyz", response_model=Readiness, responses=UNREADY)
def readyz(backend: BackendDep, response: Response) -> dict[str, str]:
    """The database answers."""
    if not database_answers(backend.engine):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"status": "database unreachable"}
    return {"status": "ready"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus exposition: queue depth by state, running jobs, completed trials, durations, heartbeats."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
