"""The HTML report of a study and its plots (SVG or PNG)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import HTMLResponse

from service.cache import NOT_MODIFIED, CacheDep, Entry, lookup, respond
from service.deps import AUTH, NOT_FOUND, BackendDep, ReadAccess, StudyId, load, summary_entry
from studies import queue
from studies.db.models import Study
from studies.results import CurvePoint, TrialRow, curve_points, job_result, trial_row
from studies.spec import StudySpec

router = APIRouter(prefix="/studies", tags=["reports"])

MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


def _data(
    backend: BackendDep, study: Study, spec: StudySpec
) -> tuple[list[TrialRow], dict[int, list[CurvePoint]]]:
    jobs = queue.list_jobs(backend.factory, study.id)
    rows = [trial_row(job, spec.success.metric, spec.selection) for job in jobs]
    return rows, {job.cell_index: curve_points(job_result(job)) for job in jobs}


@router.get(
    "/{study_id}/report",
    response_class=HTMLResponse,
    dependencies=[ReadAccess],
    responses={**NOT_FOUND, **AUTH, **NOT_MODIFIED},
)
def report(request: Request, backend: BackendDep, cache: CacheDep, study_id: StudyId) -> Response:
    """Summary tables and plots of the study, as one HTML page (kept once the study is finished)."""
    study, spec = load(backend, study_id)

    def render() -> Entry:
        from service.report import render_report

        rows, _ = _data(backend, study, spec)
        summary = summary_entry(backend, cache, study, spec)[0].value
        html = render_report(
            study.id,
            study.name,
            study.status,
            spec,
            rows,
            summary,
            plot_url=lambda name, fmt: f"/studies/{study_id}/plots/{name}.{fmt}",
        )
        return Entry.of(html.encode(), "text/html; charset=utf-8")

    return respond(request, study, *lookup(cache, study, ("report",), render))


@router.get(
    "/{study_id}/plots/{name}.{fmt}",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "the plot"}}
    | NOT_FOUND
    | AUTH
    | NOT_MODIFIED,
)
def plot(
    request: Request,
    backend: BackendDep,
    cache: CacheDep,
    study_id: StudyId,
    name: str,
    fmt: Literal["svg", "png"],
) -> Response:
    """metric_vs_lr, success_vs_lr, learning_curves or steps_to_threshold (kept once the study finished)."""
    from service.plots import PLOT_NAMES, render_plot

    if name not in PLOT_NAMES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plot {name!r}; plots: {', '.join(PLOT_NAMES)}")
    study, spec = load(backend, study_id)

    def render() -> Entry:
        rows, curves = _data(backend, study, spec)
        summary = summary_entry(backend, cache, study, spec)[0].value
        return Entry.of(render_plot(name, fmt, spec, rows, curves, summary), MEDIA[fmt])

    return respond(request, study, *lookup(cache, study, ("plot", name, fmt), render))
