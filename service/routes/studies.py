"""Submit, list, follow, cancel and delete studies; read their cells, curves and summaries."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from service.cache import NOT_MODIFIED, CacheDep, respond
from service.deps import (
    AUTH,
    CREATED,
    MAX_ID,
    NOT_FOUND,
    STORED_SPEC,
    BackendDep,
    CellIndex,
    IdempotencyKey,
    JsonBody,
    ReadAccess,
    StudyId,
    WriteAccess,
    links,
    load,
    next_page,
    spec_request_body,
    submit_spec,
    summary_entry,
)
from service.schemas import Curve, Problem, Requeued, StudyCreated, StudyOut, StudyPage, TrialPage
from studies import queue
from studies.db.models import Study, StudyStatus, cells_finished
from studies.results import CurvePoint, curve_points, job_result, trial_row
from studies.robustness import RobustnessSummary
from studies.tracking import intermediate_values

router = APIRouter(prefix="/studies", tags=["studies"])

EXAMPLE_SPEC = {
    "name": "copy-T20-small",
    "task": {"name": "copying", "T": 20},
    "model": {"hidden_size": 32},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.001, 0.01],
    "seeds": [1, 2],
    "budget": {"steps": 60, "eval_every": 20, "batch_size": 16},
    "success": {"metric": "accuracy", "threshold": 0.99},
}


def study_out(backend: BackendDep, study: Study) -> StudyOut:
    counts = queue.job_counts(backend.factory, study.id)
    total = sum(counts.values())
    return StudyOut(
        id=study.id,
        name=study.name,
        status=study.status,
        priority=study.priority,
        engine=study.engine,
        cancel_requested=study.cancel_requested,
        optuna_study_name=study.optuna_study_name,
        created_at=study.created_at,
        finished_at=study.finished_at,
        jobs=counts,
        progress=cells_finished(counts) / total if total else 1.0,
        spec=json.loads(study.spec_json),
        links=links(study.id),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyCreated,
    dependencies=[WriteAccess],
    responses={**AUTH, **CREATED},
    openapi_extra=spec_request_body({"small": {"value": EXAMPLE_SPEC}}),
)
def create_study(
    request: Request, response: Response, backend: BackendDep, body: JsonBody, key: IdempotencyKey
) -> StudyCreated:
    """Queue a study: one job per (variant, learning rate, seed). Nothing is written unless all is."""
    return submit_spec(request, response, backend, body, key)


@router.get("", response_model=StudyPage, dependencies=[ReadAccess], responses=AUTH)
def list_studies(
    request: Request,
    response: Response,
    backend: BackendDep,
    status_filter: Annotated[StudyStatus | None, Query(alias="status")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> StudyPage:
    """Newest first."""
    studies = queue.list_studies(backend.factory, status_filter, offset, limit)
    total = queue.count_studies(backend.factory, status_filter)
    return StudyPage(
        items=[study_out(backend, s) for s in studies],
        total=total,
        offset=offset,
        limit=limit,
        next=next_page(request, response, offset, limit, total),
    )


@router.get(
    "/{study_id}", response_model=StudyOut, dependencies=[ReadAccess], responses={**NOT_FOUND, **AUTH}
)
def get_study(backend: BackendDep, study_id: StudyId) -> StudyOut:
    return study_out(backend, queue.get_study(backend.factory, study_id))


@router.post(
    "/{study_id}/cancel", response_model=StudyOut, dependencies=[WriteAccess], responses={**NOT_FOUND, **AUTH}
)
def cancel_study(backend: BackendDep, study_id: StudyId) -> StudyOut:
    """Cancel queued cells now; running ones stop at their next evaluation."""
    queue.cancel_study(backend.factory, study_id)
    return study_out(backend, queue.get_study(backend.factory, study_id))


@router.post(
    "/{study_id}/requeue",
    response_model=Requeued,
    dependencies=[WriteAccess],
    responses={**NOT_FOUND, **AUTH, 409: {"model": Problem, "description": "the study is cancelled"}},
)
def requeue_failed(backend: BackendDep, study_id: StudyId) -> Requeued:
    """Queue the study's failed cells again, each with HDETACH_MAX_ATTEMPTS more attempts (every
    claim a new attempt and Optuna trial); done cells, diverged ones included, keep their results.
    A finished study runs again; with no failed cell nothing changes."""
    result = backend.requeue_failed(study_id)
    return Requeued(study_id=result.study_id, status=result.status, requeued=result.requeued)


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses={**NOT_FOUND, **AUTH, 409: {"model": Problem, "description": "jobs are running; cancel first"}},
)
def delete_study(backend: BackendDep, study_id: StudyId) -> Response:
    backend.delete_study(study_id)  # Conflict -> 409 (see app)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{study_id}/trials",
    response_model=TrialPage,
    dependencies=[ReadAccess],
    responses={**NOT_FOUND, **AUTH, **STORED_SPEC},
)
def list_trials(
    request: Request,
    response: Response,
    backend: BackendDep,
    study_id: StudyId,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> TrialPage:
    """One row per grid cell, in cell order, a page at a time (`trials.csv` has them all at once)."""
    _, spec = load(backend, study_id)
    jobs = queue.list_jobs(backend.factory, study_id, offset, limit)
    total = sum(queue.job_counts(backend.factory, study_id).values())
    return TrialPage(
        items=[trial_row(job, spec.success.metric, spec.selection) for job in jobs],
        total=total,
        offset=offset,
        limit=limit,
        next=next_page(request, response, offset, limit, total),
    )


@router.get(
    "/{study_id}/trials/{cell}/curve",
    response_model=Curve,
    dependencies=[ReadAccess],
    responses={404: {"model": Problem, "description": "no such study or cell"}, **AUTH, **STORED_SPEC},
)
def trial_curve(backend: BackendDep, study_id: StudyId, cell: CellIndex) -> Curve:
    """The cell's learning curve: recorded at the end, or the points reported so far while it trains."""
    _, spec = load(backend, study_id)
    jobs = {j.cell_index: j for j in queue.list_jobs(backend.factory, study_id)}
    if cell not in jobs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_id} has no cell {cell}")
    job = jobs[cell]
    points = curve_points(job_result(job))
    partial = not points and job.optuna_trial_id is not None
    if partial:
        name = f"val_{spec.success.metric}"
        points = [
            CurvePoint(step=step, values={name: value})
            for step, value in intermediate_values(backend.storage, job.optuna_trial_id)  # type: ignore[arg-type]
        ]
    return Curve(
        cell=cell,
        variant=job.variant,
        lr=job.lr,
        seed=job.seed,
        state=job.state,
        partial=partial,
        points=points,
    )


@router.get(
    "/{study_id}/summary",
    response_model=RobustnessSummary,
    dependencies=[ReadAccess],
    responses={**NOT_FOUND, **AUTH, **NOT_MODIFIED, **STORED_SPEC},
)
def summary(
    request: Request,
    backend: BackendDep,
    cache: CacheDep,
    study_id: StudyId,
    robust_level: Annotated[float, Query(gt=0.0, le=1.0, description="success rate a robust lr needs")] = 0.8,
) -> Response:
    """How robust each variant is to learning rate and seed, and how it compares with the baseline.

    Computed from the cells as they stand; `complete` and the counts say how complete the study is.
    A finished study's summary is computed once and kept; responses carry an ETag (If-None-Match
    gives a 304) and Cache-Control (see `service.cache`). `caveats` says in words what the numbers
    cannot support at this study's size.
    """
    study, spec = load(backend, study_id)
    entry, state = summary_entry(backend, cache, study, spec, robust_level)
    return respond(request, study, entry, state)
