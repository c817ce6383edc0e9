"""`hdetach ray-run`'s progress: a rich progress bar on a terminal; elsewhere (a log, `docker
logs`) one line each time cells finish, which a file can hold where a redrawn bar cannot."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workers.ray_executor import DrainProgress


def progress_line(p: DrainProgress) -> str:
    """One line: cells done of all, failed, stopped, steps and the ETA."""
    eta = "?" if p.eta_s is None else str(timedelta(seconds=round(p.eta_s)))
    stopped = f", {p.stopped} stopped" if p.stopped else ""
    return (
        f"{p.experiment}: {p.done}/{p.cells} cells done, {p.failed} failed{stopped}; "
        f"step {p.steps}/{p.total_steps} summed over packs, ETA {eta}"
    )


class ProgressView:
    """Shows each drain's `DrainProgress` as the driver reports it."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.bar: Progress | None = None
        self.tasks: dict[str, TaskID] = {}  # experiment -> its bar
        self.finished: dict[str, int] = {}  # experiment -> cells finished at its last line

    def __call__(self, p: DrainProgress) -> None:
        if self.console.is_terminal:
            self._draw(p)
            return
        finished = p.done + p.failed + p.stopped
        if finished != self.finished.get(p.experiment, -1):
            self.finished[p.experiment] = finished
            self.console.print(progress_line(p), highlight=False, soft_wrap=True)

    def _draw(self, p: DrainProgress) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
        description = f"{p.done}/{p.cells} cells done, {p.failed} failed"
        if p.experiment not in self.tasks:
            self.tasks[p.experiment] = self.bar.add_task(description, total=p.total_steps)
        self.bar.update(self.tasks[p.experiment], description=description, completed=p.steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.tasks = None, {}
