"""A study's progress as a live bar: cells finished of all, the failed ones, and an ETA."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

FINISHED_CELL = ("done", "failed", "cancelled")


def cells_finished(jobs: Mapping[str, int]) -> int:
    return sum(jobs.get(state, 0) for state in FINISHED_CELL)


class StudyProgress:
    """`update(name, jobs)` with the study's jobs by state, as often as they are read; the ETA is
    rich's estimate from the rate cells finished at so far. Disabled, it shows nothing."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cells  {task.fields[states]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._progress.add_task("", total=None, states="")

    def update(self, name: str, jobs: Mapping[str, int]) -> None:
        states = ", ".join(f"{state} {n}" for state, n in jobs.items() if n and state != "done")
        self._progress.update(
            self._task,
            description=name,
            total=sum(jobs.values()),
            completed=cells_finished(jobs),
            states=states,
        )

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()
