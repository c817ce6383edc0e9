"""A study's progress as a live bar: cells finished of all, running and failed, time left. One
look for `hdetach studies watch` and `Client.wait`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from studies.db.models import cells_finished


def cells_progress(console: Console | None = None, disable: bool = False) -> Progress:
    # a slow study finishes a cell every few minutes: estimate the rate over the last hour
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} cells"),
        TextColumn("{task.fields[running]} running, {task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        speed_estimate_period=3600,
    )


def add_study(progress: Progress, study_id: int, jobs: Mapping[str, int]) -> TaskID:
    task = progress.add_task(f"study {study_id}", total=None, running=0, failed=0)
    show_jobs(progress, task, jobs)
    return task


def show_jobs(progress: Progress, task: TaskID, jobs: Mapping[str, int]) -> None:
    """Show a study's jobs, counted by state, on its bar."""
    progress.update(
        task,
        total=sum(jobs.values()),
        completed=cells_finished(jobs),
        running=jobs.get("running", 0),
        failed=jobs.get("failed", 0),
    )


class StudyProgress:
    """The bar of one study on stderr, as a context; `update(jobs)` as often as they are read.
    Disabled, it shows nothing."""

    def __init__(self, study_id: int, enabled: bool = True):
        self.study_id = study_id
        self._progress = cells_progress(Console(stderr=True), disable=not enabled)
        self._task: TaskID | None = None

    def update(self, jobs: Mapping[str, int]) -> None:
        if self._task is None:
            self._task = add_study(self._progress, self.study_id, jobs)
        show_jobs(self._progress, self._task, jobs)

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
