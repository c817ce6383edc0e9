"""The HTML report of a study and its plots (SVG or PNG)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Response, status
from fastapi.responses import HTMLResponse

from service.deps import BackendDep, ReadAccess, StudyId
from service.routes.studies import AUTH, NOT_FOUND, load
from studies import queue
from studies.results import curve_points, job_result, study_summary, trial_row

router = APIRouter(prefix="/studies", tags=["reports"])

MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


def _study_data(backend: BackendDep, study_id: int):
    study, spec = load(backend, study_id)
    jobs = queue.list_jobs(backend.factory, study_id)
    rows = [trial_row(job, spec.success.metric) for job in jobs]
    curves = {job.cell_index: curve_points(job_result(job)) for job in jobs}
    return study, spec, rows, curves, study_summary(spec, rows)


@router.get(
    "/{study_id}/report",
    response_class=HTMLResponse,
    dependencies=[ReadAccess],
    responses={**NOT_FOUND, **AUTH},
)
def report(backend: BackendDep, study_id: StudyId) -> HTMLResponse:
    """Summary tables and plots of the study, as one HTML page."""
    from service.report import render_report

    study, spec, rows, _, summary = _study_data(backend, study_id)
    html = render_report(
        study.id,
        study.name,
        study.status,
        spec,
        rows,
        summary,
        plot_url=lambda name, fmt: f"/studies/{study_id}/plots/{name}.{fmt}",
    )
    return HTMLResponse(html)


@router.get(
    "/{study_id}/plots/{name}.{fmt}",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "the plot"}}
    | NOT_FOUND
    | AUTH,
)
def plot(backend: BackendDep, study_id: StudyId, name: str, fmt: Literal["svg", "png"]) -> Response:
    """metric_vs_lr, success_vs_lr, learning_curves or steps_to_threshold."""
    from service.plots import PLOT_NAMES, render_plot

    if name not in PLOT_NAMES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plot {name!r}; plots: {', '.join(PLOT_NAMES)}")
    _, spec, rows, curves, summary = _study_data(backend, study_id)
    return Response(render_plot(name, fmt, spec, rows, curves, summary), media_type=MEDIA[fmt])
