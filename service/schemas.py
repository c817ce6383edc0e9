"""Response models of the REST API (the request model is `studies.spec.StudySpec`)."""

from __future__ import annotations

__all__ = [
    "Curve",
    "CurvePoint",
    "FieldError",
    "Links",
    "Page",
    "Problem",
    "Requeued",
    "StudyCreated",
    "StudyOut",
    "StudyPage",
    "TrialPage",
    "TrialRow",
    "WorkerOut",
]

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from studies.results import CurvePoint, TrialRow


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: `body`, `query` or `path`, then the field's path")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. `greater_than` or `missing`")
    input: Any = Field(None, description="the value refused (omitted when there was none)")


class Problem(BaseModel):
    """An error response (RFC 9457 problem details)."""

    type: str = Field("about:blank", description="`about:blank`: the status code says what kind of error")
    title: str = Field(description="the status code's phrase, e.g. `Not Found`")
    status: int
    detail: str = Field(description="what went wrong with this request, in words")
    instance: str | None = Field(None, description="the request's path")
    errors: list[FieldError] | None = Field(None, description="each refused field (422 only)")


class Links(BaseModel):
    self: str
    trials: str
    summary: str
    report: str
    cancel: str


class StudyCreated(BaseModel):
    id: int = Field(description="study id")
    name: str
    optuna_study_name: str = Field(description="the study's name in optuna-dashboard")
    cells: int = Field(description="grid cells (= jobs)")
    links: Links


class StudyOut(BaseModel):
    id: int
    name: str
    status: str = Field(description="queued, running, done, cancelled or failed")
    priority: int
    engine: str = Field(description="who runs its cells: queue workers, or a Ray driver (`hdetach ray-run`)")
    cancel_requested: bool
    optuna_study_name: str
    created_at: datetime
    finished_at: datetime | None
    jobs: dict[str, int] = Field(description="jobs by state")
    progress: float = Field(description="fraction of cells finished (done, failed or cancelled)")
    spec: dict[str, Any] = Field(description="the submitted study spec")
    links: Links


class Page(BaseModel):
    """One page of a list: `items` (in the subclass), and where it stands in the whole list."""

    total: int = Field(description="how many items the whole list holds (with the same filter)")
    offset: int
    limit: int
    next: str | None = Field(
        description="the next page as a reference relative to this page's URL (a query, e.g. "
        "`?offset=50&limit=50`; also in the `Link` header as rel=next); null on the last page"
    )


class StudyPage(Page):
    items: list[StudyOut]


class TrialPage(Page):
    items: list[TrialRow] = Field(description="one row per grid cell, in cell order")


class Requeued(BaseModel):
    study_id: int
    status: str = Field(description="the study's state after: running when cells were queued again")
    requeued: int = Field(description="failed cells queued again")


class Curve(BaseModel):
    cell: int
    variant: str
    lr: float
    seed: int
    state: str
    partial: bool = Field(description="true while the cell is still training (points so far)")
    points: list[CurvePoint]


class WorkerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    device: str
    pack_size: int
    status: str = Field(description="running, stopping, stopped, or halted (stopped claiming: see reason)")
    reason: str | None = Field(None, description="why it halted: the infrastructure failures it met")
    started_at: datetime
    last_heartbeat: datetime
    current_jobs: list[int] = Field(description="ids of the jobs it holds")
