"""The HTML report of a study, its plots (SVG or PNG) and its trials as CSV.

The report links the others relative to its own URL (see `service.report`): they share its prefix.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse

from service.cache import NOT_MODIFIED, CacheDep, Entry, lookup, respond
from service.deps import AUTH, NOT_FOUND, STORED_SPEC, BackendDep, ReadAccess, StudyId, load, summary_entry
from studies import queue
from studies.results import flat_trial_rows, to_csv, trial_row

router = APIRouter(prefix="/studies", tags=["reports"])

MEDIA = {"svg": "image/svg+xml", "png": "image/png"}


@router.get(
    "/{study_id}/report",
    response_class=HTMLResponse,
    dependencies=[ReadAccess],
    responses={**NOT_FOUND, **AUTH, **NOT_MODIFIED, **STORED_SPEC},
)
def report(
    request: Request,
    backend: BackendDep,
    cache: CacheDep,
    study_id: StudyId,
    standalone: Annotated[
        bool,
        Query(description="one self-contained file: plots, CSV and JSON inlined (to save, mail or archive)"),
    ] = False,
) -> Response:
    """Summary tables and plots of the study, as one HTML page (kept once the study is finished)."""
    study, spec = load(backend, study_id)

    def render() -> Entry:
        from service.report import render_report, standalone_report, study_results

        if standalone:
            html = standalone_report(backend, study.id)
        else:
            rows, _ = study_results(backend.factory, study.id, spec)
            summary = summary_entry(backend, cache, study, spec)[0].value
            html = render_report(study.id, study.name, study.status, spec, rows, summary)
        return Entry.of(html.encode(), "text/html; charset=utf-8")

    return respond(request, study, *lookup(cache, study, ("report", standalone), render))


@router.get(
    "/{study_id}/plots/{name}.{fmt}",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={200: {"content": {"image/svg+xml": {}, "image/png": {}}, "description": "the plot"}}
    | NOT_FOUND
    | AUTH
    | NOT_MODIFIED
    | STORED_SPEC,
)
def plot(
    request: Request,
    backend: BackendDep,
    cache: CacheDep,
    study_id: StudyId,
    name: str,
    fmt: Literal["svg", "png"],
) -> Response:
    """metric_vs_lr, success_vs_lr, learning_curves, steps_to_threshold or paired_difference (kept once
    the study finished)."""
    from service.plots import PLOT_NAMES, render_plot
    from service.report import study_results

    if name not in PLOT_NAMES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no plot {name!r}; plots: {', '.join(PLOT_NAMES)}")
    study, spec = load(backend, study_id)

    def render() -> Entry:
        rows, curves = study_results(backend.factory, study.id, spec)
        summary = summary_entry(backend, cache, study, spec)[0].value
        return Entry.of(render_plot(name, fmt, spec, rows, curves, summary), MEDIA[fmt])

    return respond(request, study, *lookup(cache, study, ("plot", name, fmt), render))


@router.get(
    "/{study_id}/trials.csv",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={200: {"content": {"text/csv": {}}, "description": "one row per grid cell"}}
    | NOT_FOUND
    | AUTH
    | NOT_MODIFIED
    | STORED_SPEC,
)
def trials_csv(request: Request, backend: BackendDep, cache: CacheDep, study_id: StudyId) -> Response:
    """The study's trials as CSV, one row per cell: variant, p_detach, lr, seed, state, the metric, and
    each model's test metrics as columns (a download; kept once the study finished)."""
    study, spec = load(backend, study_id)

    def render() -> Entry:
        jobs = queue.list_jobs(backend.factory, study.id)
        rows = [trial_row(job, spec.success.metric, spec.selection) for job in jobs]
        return Entry.of(to_csv(flat_trial_rows(rows)).encode(), "text/csv; charset=utf-8")

    response = respond(request, study, *lookup(cache, study, ("trials.csv",), render))
    response.headers["Content-Disposition"] = f'attachment; filename="study-{study.id}-trials.csv"'
    return response
