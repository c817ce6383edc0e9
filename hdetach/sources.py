"""Where the `hdetach studies ...` commands get their data: a `StudiesSource`. The commands only
format what a source returns, so every source prints the same.

`DatabaseSource` reads and writes the database directly (as `hdetach submit` does); `ApiSource`
(`--api URL`) goes through the REST API's Python client and answers with the same models, which
are what its routes return: `StudyInfo` holds the
fields of `GET /studies/{id}` it needs, `RobustnessSummary` is `/summary`'s body and `TrialRow`
`/trials`'s items. A source raises the core's errors: `NotFound` for an unknown id (a 404),
`Conflict` when the study's state refuses (a 409), `NoDatabase` when there is nothing to read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from pydantic import BaseModel, ConfigDict

from deployment.backend import Backend
from deployment.settings import Settings
from studies import queue
from studies.db.models import FINISHED_STUDY, Study, StudyStatus, cells_finished
from studies.exceptions import Conflict, NotFound
from studies.queue import RequeueResult
from studies.results import TrialRow, stored_spec, study_summary, trial_row
from studies.robustness import RobustnessSummary


class StudyInfo(BaseModel):
    """A study as the commands show it: a subset of the REST service's `StudyOut`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int
    name: str
    status: str
    priority: int
    engine: str
    cancel_requested: bool
    created_at: datetime
    finished_at: datetime | None
    jobs: dict[str, int]  # jobs by state, every state present

    @property
    def cells(self) -> int:
        return sum(self.jobs.values())

    @property
    def cells_finished(self) -> int:
        return cells_finished(self.jobs)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STUDY


class StudiesSource(Protocol):
    def list_studies(self, status: str | None = None, limit: int = 50) -> list[StudyInfo]:
        """Newest first."""
        ...

    def get(self, study_id: int) -> StudyInfo: ...

    def cancel(self, study_id: int) -> StudyInfo:
        """Cancel queued cells now (running ones stop at their next evaluation); the study after."""
        ...

    def delete(self, study_id: int) -> None:
        """Delete the study, its cells and its Optuna study (Conflict while cells run)."""
        ...

    def requeue_failed(self, study_id: int) -> RequeueResult: ...

    def summary(self, study_id: int, robust_level: float = 0.8) -> RobustnessSummary: ...

    def trials(self, study_id: int) -> list[TrialRow]:
        """One row per grid cell, in cell order."""
        ...

    def report_html(self, study_id: int) -> str:
        """The study's report as one self-contained HTML file (plots, CSV and JSON inlined)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None: ...


class DatabaseSource:
    """The database named by the settings, opened without creating anything (`NoDatabase` if it is
    not there or holds no tables of ours at the current revision)."""

    def __init__(self, settings: Settings) -> None:
        self.backend = Backend(settings, create=False)
        self.settings = settings

    def _info(self, study: Study) -> StudyInfo:
        # StudyInfo's fields are the study row's own, but for the jobs counted by state
        row = {name: getattr(study, name) for name in StudyInfo.model_fields if name != "jobs"}
        return StudyInfo(**row, jobs=queue.job_counts(self.backend.factory, study.id))

    def list_studies(self, status: str | None = None, limit: int = 50) -> list[StudyInfo]:
        return [self._info(s) for s in queue.list_studies(self.backend.factory, status, 0, limit)]

    def get(self, study_id: int) -> StudyInfo:
        return self._info(queue.get_study(self.backend.factory, study_id))

    def cancel(self, study_id: int) -> StudyInfo:
        queue.cancel_study(self.backend.factory, study_id)
        return self.get(study_id)

    def delete(self, study_id: int) -> None:
        self.backend.delete_study(study_id)

    def requeue_failed(self, study_id: int) -> RequeueResult:
        return self.backend.requeue_failed(study_id)

    def summary(self, study_id: int, robust_level: float = 0.8) -> RobustnessSummary:
        study = queue.get_study(self.backend.factory, study_id)
        return study_summary(stored_spec(study), self._rows(study), robust_level=robust_level)

    def trials(self, study_id: int) -> list[TrialRow]:
        return self._rows(queue.get_study(self.backend.factory, study_id))

    def report_html(self, study_id: int) -> str:
        from service.report import standalone_report

        return standalone_report(self.backend, study_id)

    def _rows(self, study: Study) -> list[TrialRow]:
        spec = stored_spec(study)
        return [
            trial_row(job, spec.success.metric, spec.selection)
            for job in queue.list_jobs(self.backend.factory, study.id)
        ]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class ApiSource:
    """The REST API at `url` through `hdetach.client.Client` (token: $HDETACH_API_TOKEN). Its 404 and
    409 answers become NotFound and Conflict, as the database's would; the rest stay `ApiError`."""

    def __init__(self, url: str) -> None:
        from hdetach.client import Client

        # one retry after a dropped connection: a command line that waits long helps nobody
        self.client = Client(url, retries=1)
        self.client.check()  # a wrong URL is said as such, not as "no study with id N"

    def submit(self, spec_text: str) -> int:
        """Queue a study from its spec's JSON text (with an Idempotency-Key, see the client)."""
        return self.client.submit(spec_text).id

    @contextmanager
    def _as_core_errors(self) -> Iterator[None]:
        from hdetach.client import ApiError

        try:
            yield
        except ApiError as error:
            if error.status == 404:
                raise NotFound(error.problem.detail) from None
            if error.status == 409:
                raise Conflict(error.problem.detail) from None
            raise

    def list_studies(self, status: str | None = None, limit: int = 50) -> list[StudyInfo]:
        with self._as_core_errors():
            return [StudyInfo.model_validate(s.model_dump()) for s in self.client.studies(status, limit)]

    def get(self, study_id: int) -> StudyInfo:
        with self._as_core_errors():
            return StudyInfo.model_validate(self.client.get(study_id).model_dump())

    def cancel(self, study_id: int) -> StudyInfo:
        with self._as_core_errors():
            return StudyInfo.model_validate(self.client.cancel(study_id).model_dump())

    def delete(self, study_id: int) -> None:
        with self._as_core_errors():
            self.client.delete(study_id)

    def requeue_failed(self, study_id: int) -> RequeueResult:
        with self._as_core_errors():
            answer = self.client.requeue_failed(study_id)
        return RequeueResult(answer.study_id, StudyStatus(answer.status), answer.requeued)

    def summary(self, study_id: int, robust_level: float = 0.8) -> RobustnessSummary:
        with self._as_core_errors():
            return self.client.summary(study_id, robust_level)

    def trials(self, study_id: int) -> list[TrialRow]:
        with self._as_core_errors():
            return self.client.trial_rows(study_id)

    def report_html(self, study_id: int) -> str:
        with self._as_core_errors():
            return self.client.report_html(study_id)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
