"""What every study plot shares: the study as the plots read it (`StudyView`) and the drawing helpers.

Figures are built with matplotlib's object API (`Figure`, no pyplot state), so concurrent requests
do not share a figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from studies.results import CurvePoint, TrialRow
from studies.robustness import RobustnessSummary, TrialTable, read_trials
from studies.spec import StudySpec

FIGSIZE = (7.0, 4.5)  # inches, single-panel plots
NOTE_COLOUR = "0.4"

# SVG ids are salted with a random uuid unless a salt is set; a fixed salt makes the output
# reproducible. Left alone if the process already chose one.
if matplotlib.rcParams["svg.hashsalt"] is None:
    matplotlib.rcParams["svg.hashsalt"] = "hdetach-studies"


@dataclass(frozen=True)
class StudyView:
    """What every plot reads, plus what they share: variant colours and the lr grid."""

    spec: StudySpec
    rows: Sequence[TrialRow]
    curves: Mapping[int, Sequence[CurvePoint]]
    summary: RobustnessSummary
    colours: dict[str, str]  # variant name -> matplotlib colour, in spec order
    p_detach: dict[str, float]  # variant name -> its detach probability
    lrs: list[float]  # sorted: the spec's grid and any lr found in the rows
    # the rows as the robustness package reads them (who ran, diverged, succeeded; which values
    # count), so that the plots show what the summary computed; None without rows
    table: TrialTable | None

    @classmethod
    def of(
        cls,
        spec: StudySpec,
        rows: Sequence[TrialRow],
        curves: Mapping[int, Sequence[CurvePoint]],
        summary: RobustnessSummary,
    ) -> StudyView:
        names = dict.fromkeys([v.name for v in spec.variants] + [r.variant for r in rows])
        colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
        p_detach = {r.variant: r.p_detach for r in rows} | {v.name: v.p_detach for v in spec.variants}
        lrs = sorted(set(spec.lr_values()) | {r.lr for r in rows})
        table = read_trials(rows, spec.success.threshold, spec.success.higher_is_better) if rows else None
        return cls(spec, rows, curves, summary, colours, p_detach, lrs, table)

    def label(self, variant: str) -> str:
        """A variant as legends name it: with its p_detach, the knob the study varies."""
        p = self.p_detach.get(variant)
        return variant if p is None else f"{variant} (p_detach {p:g})"

    @property
    def metric(self) -> str:
        return self.spec.success.metric

    @property
    def criterion(self) -> str:
        """The success criterion, e.g. "accuracy ≥ 0.99"."""
        relation = "≥" if self.summary.higher_is_better else "≤"
        return f"{self.metric} {relation} {self.spec.success.threshold:g}"

    def column(self, name: str) -> np.ndarray:
        """A column of the robustness reading, one value per row: "value" (the metric of runs that
        count in statistics), "diverged" (1.0 where a run diverged) or "steps_if_success" (steps to
        the threshold of successful runs); NaN where a row has none."""
        if self.table is None:
            return np.empty(0)
        if name == "value":
            return self.table.value
        if name == "diverged":
            return np.where(self.table.diverged, 1.0, np.nan)
        return np.where(self.table.success, self.table.steps, np.nan)

    def title(self, what: str) -> str:
        task = self.spec.task
        name = task.name if task.T is None else f"{task.name}, T={task.T}"
        title = f"{name}: {what}"
        if not self.summary.complete:
            title += f"\npartial study: {self.summary.done} of {self.summary.cells_total} trials done"
        return title

    def empty_note(self) -> str:
        if self.summary.done == 0:
            return f"no finished trials yet ({self.summary.pending} pending)"
        return "no metric values to show"


# -- reading rows --------------------------------------------------------------------------------


def by_lr(study: StudyView, variant: str, column: str) -> dict[float, list[float]]:
    """{lr: [the variant's values of `column` (StudyView.column), in seed order]}, lrs sorted, NaN dropped."""
    values = study.column(column)
    groups: dict[float, list[float]] = {}
    for i in sorted(range(len(study.rows)), key=lambda i: (study.rows[i].lr, study.rows[i].seed)):
        if study.rows[i].variant == variant and not math.isnan(values[i]):
            groups.setdefault(study.rows[i].lr, []).append(float(values[i]))
    return groups


# -- shared drawing ------------------------------------------------------------------------------


def new_figure(size: tuple[float, float] = FIGSIZE) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)  # its own Agg canvas: no pyplot, no global figure manager
    return figure


def lr_axis(ax: Axes, lrs: Sequence[float]) -> None:
    """Log lr axis covering the grid with a margin; ticks at the grid's lrs when they are few."""
    ax.set_xscale("log")
    low, high = min(lrs), max(lrs)
    pad = 10 ** max(0.15, 0.08 * math.log10(high / low))
    ax.set_xlim(low / pad, high * pad)
    if len(lrs) <= 8:
        ax.set_xticks(lrs, labels=[f"{lr:.3g}" for lr in lrs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate")


def jitter_unit(lrs: Sequence[float]) -> float:
    """Width in decades given to each lr's dots: small against the gap between grid lrs."""
    gaps = np.diff(np.log10(lrs))
    return min(0.08, 0.3 * float(gaps.min())) if gaps.size else 0.08


def jittered(lr: float, unit: float, slot: int, n_slots: int, rank: int = 0, n_ranks: int = 1) -> float:
    """lr moved in log space: variants side by side (slot), seeds spread within a variant (rank)."""
    width = unit / max(n_slots, 1)
    offset = (slot - (n_slots - 1) / 2) * width + (rank - (n_ranks - 1) / 2) / n_ranks * 0.8 * width
    return lr * 10**offset


def note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=NOTE_COLOUR)


def legend(figure: Figure, handles: Sequence[Artist]) -> None:
    """Legend right of the axes, where it hides neither data nor the title."""
    figure.legend(handles=handles, loc="outside right center", fontsize="small")


def log_y_if_wide(ax: Axes, values: Sequence[float], study: StudyView) -> None:
    """Log y for lower-is-better metrics (losses, mse) spanning more than two decades."""
    if study.summary.higher_is_better or not values or study.spec.success.threshold <= 0:
        return
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def threshold_line(ax: Axes, study: StudyView) -> None:
    threshold = study.spec.success.threshold
    ax.axhline(threshold, ls="--", lw=1, color="0.3", label=f"threshold {threshold:g}")
