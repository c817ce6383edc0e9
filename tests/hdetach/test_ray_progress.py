"""`hdetach ray-run`'s progress view, fed the driver's DrainProgress (the driver's side runs on a
real Ray in tests/workers/test_ray_executor.py)."""

from __future__ import annotations

import io

from rich.console import Console

from hdetach.ray_progress import ProgressView, progress_line
from workers.ray_executor import DrainProgress


def snapshot(done: int, steps: int, failed: int = 0, stopped: int = 0) -> DrainProgress:
    return DrainProgress("hdetach-3-abc", 8, done, failed, stopped, steps, 60, elapsed_s=20.0)


def test_the_eta_is_the_time_so_far_scaled_by_the_steps_left():
    assert snapshot(0, 0).eta_s is None
    assert snapshot(2, 20).eta_s == 40.0
    assert progress_line(snapshot(2, 20, failed=4, stopped=1)) == (
        "hdetach-3-abc: 2/8 cells done, 4 failed, 1 stopped; step 20/60 summed over packs, ETA 0:00:40"
    )


def test_off_a_terminal_a_line_is_printed_only_when_cells_finish():
    out = io.StringIO()
    view = ProgressView(Console(file=out, force_terminal=False, width=200))
    for p in (snapshot(0, 0), snapshot(0, 10), snapshot(0, 20), snapshot(4, 30), snapshot(4, 30, failed=4)):
        view(p)
    view.close()
    lines = out.getvalue().splitlines()
    assert [line.split(": ")[1].split(";")[0] for line in lines] == [
        "0/8 cells done, 0 failed",
        "4/8 cells done, 0 failed",
        "4/8 cells done, 4 failed",
    ]
    assert lines[0].endswith("ETA ?") and lines[1].endswith("ETA 0:00:20")


def test_on_a_terminal_a_bar_counts_steps_and_names_the_cells_done():
    out = io.StringIO()
    view = ProgressView(Console(file=out, force_terminal=True, width=200))
    view(snapshot(0, 0))
    view(snapshot(2, 30, failed=1))
    view.close()
    text = out.getvalue()
    assert "2/8 cells done, 1 failed" in text and "30/60 steps" in text
    assert view.bar is None  # closed: a second close is harmless
    view.close()
