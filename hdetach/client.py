"""A Python client for the REST API: a study's whole life from a notebook or a script.

    from hdetach.client import Client

    with Client("http://127.0.0.1:8000", token="...") as client:
        study = client.submit(preset="adding-T50-small", overrides={"seeds": [1, 2, 3]})
        study.wait()                       # a progress bar with an ETA
        print(study.summary().variants)    # the robustness summary, typed
        frame = study.trials()             # a pandas DataFrame when pandas is installed
        study.report("report.html")        # one self-contained HTML file

Responses are the API's own pydantic models (`StudyCreated`, `StudyOut`, `TrialRow`,
`RobustnessSummary`). An error answer raises `ApiError` carrying the problem document; reads, and
submissions (each sent with an Idempotency-Key), are retried after a dropped connection, so a
retried submission never queues a second study.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote, urljoin

import httpx
from pydantic import BaseModel

from deployment.settings import is_token_text
from service.schemas import Problem, Requeued, StudyCreated, StudyOut, StudyPage, TrialPage
from studies.db.models import FINISHED_STUDY
from studies.results import TrialRow, flat_trial_rows
from studies.robustness import RobustnessSummary

TOKEN_ENV = "HDETACH_API_TOKEN"
SpecInput = BaseModel | Mapping[str, Any] | str | Path  # a StudySpec, its JSON value or text, or a file


class ApiError(RuntimeError):
    """The API answered with an error: `problem` is its RFC 9457 document."""

    def __init__(self, problem: Problem):
        self.problem = problem
        fields = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in problem.errors or []]
        said = f"{problem.status} {problem.title}: {problem.detail}"
        super().__init__("; ".join(fields) if fields else said)

    @property
    def status(self) -> int:
        return self.problem.status


class BadClientSetting(ValueError):
    """The client cannot be set up as given (a token that cannot travel in a header)."""


class NotTheService(RuntimeError):
    """The URL answers, but not as an hdetach-studies service (a wrong port or path, say)."""


def _problem(response: httpx.Response) -> Problem:
    try:
        return Problem.model_validate(response.json())
    except ValueError:  # not JSON, or not a problem (a proxy's error page, say)
        phrase = response.reason_phrase or "Error"
        return Problem(title=phrase, status=response.status_code, detail=response.text[:200] or phrase)


def _spec_body(spec: SpecInput) -> bytes:
    """The spec as the request body, sent as it is: the service, not this client, says what is
    wrong with it (NaN or Infinity go as JavaScript's literals, which its parser reads and its
    validators refuse, naming the field)."""
    if isinstance(spec, BaseModel):
        return spec.model_dump_json().encode()
    if isinstance(spec, Path):
        return spec.read_bytes()
    if isinstance(spec, str):
        return spec.encode()
    return json.dumps(dict(spec)).encode()


class Client:
    """The REST API at `url`; `token` defaults to $HDETACH_API_TOKEN (needed for writes, and for
    reads on a deployment that locks them). `retries`: how often a read or a submission is sent
    again after a dropped connection or a timeout; `page_size`: items per page when reading lists."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        page_size: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        # the message must not repeat the token
        if token and not is_token_text(token):
            raise BadClientSetting(f"the API token (${TOKEN_ENV} or token=) is not printable ASCII")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/") + "/"
        self.retries = retries
        self.page_size = page_size  # items per page read (None: the server's default)
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, *, safe: bool, **kwargs: Any) -> httpx.Response:
        """One request; `safe` ones (reads, keyed submissions) are retried after a transport error."""
        attempts = 1 + (self.retries if safe else 0)
        for attempt in range(attempts):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(min(0.5 * 2**attempt, 5.0))
                continue
            if response.is_error:
                raise ApiError(_problem(response))
            return response
        raise AssertionError("unreachable")

    def _get(self, path: str, **params: Any) -> httpx.Response:
        return self._send("GET", path, safe=True, params={k: v for k, v in params.items() if v is not None})

    def _pages(self, path: str, model: type[StudyPage] | type[TrialPage], **params: Any) -> Iterator[Any]:
        params = {**params, **({"limit": self.page_size} if self.page_size else {})}
        url: str | None = str(self._http.build_request("GET", path, params=params).url)
        while url is not None:
            page = model.model_validate(self._send("GET", url, safe=True).json())
            yield from page.items
            url = urljoin(url, page.next) if page.next else None

    def check(self) -> None:
        """Make sure the URL is an hdetach-studies service (its open liveness probe answers as
        ours); NotTheService if it is something else, httpx's TransportError if nothing answers."""
        try:
            answer = self._get("healthz").json()
        except (ApiError, ValueError):
            answer = None
        if answer != {"status": "ok"}:
            raise NotTheService(f"{self.url} does not answer as an hdetach-studies service (GET healthz)")

    # -- studies ----------------------------------------------------------------------------------
    def submit(
        self,
        spec: SpecInput | None = None,
        *,
        preset: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Study:
        """Queue a study from a spec (a StudySpec, its JSON value or text, or a JSON file) or from a
        preset with overrides. Sent with an Idempotency-Key (a new one unless given), so the retry
        after a dropped connection returns the study the first attempt made."""
        if (spec is None) == (preset is None):
            raise ValueError("give a spec or a preset (one of them)")
        if spec is not None and overrides is not None:
            raise ValueError("overrides go with a preset; change the spec itself instead")
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        headers["Content-Type"] = "application/json"
        if spec is not None:
            path, body = "studies", _spec_body(spec)
        else:
            path = f"presets/{quote(str(preset), safe='')}/studies"
            body = json.dumps(dict(overrides or {})).encode()
        response = self._send("POST", path, safe=True, content=body, headers=headers)
        created = StudyCreated.model_validate(response.json())
        return Study(self, created.id, created)

    def study(self, study_id: int) -> Study:
        """A handle on an existing study (nothing is fetched until asked)."""
        return Study(self, study_id)

    def get(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._get(f"studies/{study_id}").json())

    def studies(self, status: str | None = None, limit: int | None = None) -> list[StudyOut]:
        """The studies, newest first (all of them, or the first `limit`); `status` one of queued,
        running, done, cancelled, failed."""
        pages = self._pages("studies", StudyPage, **({"status": status} if status else {}))
        return list(itertools.islice(pages, limit))

    def cancel(self, study_id: int) -> StudyOut:
        return StudyOut.model_validate(self._send("POST", f"studies/{study_id}/cancel", safe=True).json())

    def delete(self, study_id: int) -> None:
        self._send("DELETE", f"studies/{study_id}", safe=False)

    def requeue_failed(self, study_id: int) -> Requeued:
        """Queue the study's failed cells again (see POST /studies/{id}/requeue)."""
        return Requeued.model_validate(self._send("POST", f"studies/{study_id}/requeue", safe=False).json())

    def wait(
        self, study_id: int, *, progress: bool = True, interval: float = 2.0, timeout: float | None = None
    ) -> StudyOut:
        """Poll until the study is finished (done, cancelled or failed) and return it; with `progress`
        a bar of cells finished with an ETA. TimeoutError after `timeout` seconds."""
        from hdetach.progress import StudyProgress

        deadline = None if timeout is None else time.monotonic() + timeout
        with StudyProgress(study_id, enabled=progress) as bar:
            while True:
                study = self.get(study_id)
                bar.update(study.jobs)
                if study.status in FINISHED_STUDY:
                    return study
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"study {study_id} is still {study.status} after {timeout} s")
                time.sleep(interval)

    def summary(self, study_id: int, robust_level: float = 0.8) -> RobustnessSummary:
        response = self._get(f"studies/{study_id}/summary", robust_level=robust_level)
        return RobustnessSummary.model_validate(response.json())

    def trial_rows(self, study_id: int) -> list[TrialRow]:
        """One row per grid cell, in cell order (every page)."""
        return list(self._pages(f"studies/{study_id}/trials", TrialPage))

    def trials(self, study_id: int) -> Any:
        """The cells as a table, one flat row per cell (the columns of `trials.csv`): a pandas
        DataFrame when pandas is installed, else a list of dicts."""
        records = flat_trial_rows(self.trial_rows(study_id))
        try:
            import pandas
        except ImportError:
            return records
        return pandas.DataFrame.from_records(records)

    def report_html(self, study_id: int) -> str:
        """The study's report as one self-contained HTML page (plots, CSV and JSON inlined)."""
        return self._get(f"studies/{study_id}/report", standalone="true").text

    def report(self, study_id: int, path: str | Path) -> Path:
        """Save the study's report as one self-contained HTML file (plots, CSV and JSON inlined)."""
        target = Path(path)
        target.write_text(self.report_html(study_id), encoding="utf-8")
        return target


@dataclass
class Study:
    """A study on the server: `client.submit(...)` or `client.study(id)`; each method asks anew."""

    client: Client
    id: int
    created: StudyCreated | None = None

    def get(self) -> StudyOut:
        return self.client.get(self.id)

    def wait(self, *, progress: bool = True, interval: float = 2.0, timeout: float | None = None) -> StudyOut:
        return self.client.wait(self.id, progress=progress, interval=interval, timeout=timeout)

    def summary(self, robust_level: float = 0.8) -> RobustnessSummary:
        return self.client.summary(self.id, robust_level)

    def trial_rows(self) -> list[TrialRow]:
        return self.client.trial_rows(self.id)

    def trials(self) -> Any:
        return self.client.trials(self.id)

    def cancel(self) -> StudyOut:
        return self.client.cancel(self.id)

    def delete(self) -> None:
        self.client.delete(self.id)

    def requeue_failed(self) -> Requeued:
        return self.client.requeue_failed(self.id)

    def report(self, path: str | Path) -> Path:
        return self.client.report(self.id, path)
