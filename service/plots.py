"""Figures of a robustness study, rendered to SVG or PNG bytes.

Each plot reads the study as it stands (rows, learning curves, summary), so partial studies, a
single learning rate or seed, and studies with no finished trial all render, with a note where
there is nothing to draw. Figures are built with matplotlib's object API (`Figure`, no pyplot
state), so concurrent requests do not share a figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from studies.results import CurvePoint, TrialRow
from studies.robustness import RobustnessSummary, TrialTable, read_trials
from studies.spec import StudySpec

PLOT_NAMES = ("metric_vs_lr", "success_vs_lr", "learning_curves", "steps_to_threshold")
PlotFormat = Literal["svg", "png"]

FIGSIZE = (7.0, 4.5)  # inches, single-panel plots
PNG_DPI = 100
MAX_CURVE_PANELS = 12  # learning_curves shows at most this many learning rates, evenly picked
NOTE_COLOUR = "0.4"

# SVG ids are salted with a random uuid unless a salt is set; a fixed salt makes the output
# reproducible. Left alone if the process already chose one.
if matplotlib.rcParams["svg.hashsalt"] is None:
    matplotlib.rcParams["svg.hashsalt"] = "hdetach-studies"


@dataclass(frozen=True)
class _Study:
    """What every plot reads, plus what they share: variant colours and the lr grid."""

    spec: StudySpec
    rows: Sequence[TrialRow]
    curves: Mapping[int, Sequence[CurvePoint]]
    summary: RobustnessSummary
    colours: dict[str, str]  # variant name -> matplotlib colour, in spec order
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
    ) -> _Study:
        names = dict.fromkeys([v.name for v in spec.variants] + [r.variant for r in rows])
        colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
        lrs = sorted(set(spec.lr_values()) | {r.lr for r in rows})
        table = read_trials(rows, spec.success.threshold, spec.success.higher_is_better) if rows else None
        return cls(spec, rows, curves, summary, colours, lrs, table)

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


def render_plot(
    name: str,
    fmt: PlotFormat,
    spec: StudySpec,
    rows: Sequence[TrialRow],
    curves: Mapping[int, Sequence[CurvePoint]],
    summary: RobustnessSummary,
) -> bytes:
    """The plot `name` (one of PLOT_NAMES) as SVG or PNG bytes; ValueError for an unknown name or format."""
    if name not in _DRAWERS:
        raise ValueError(f"unknown plot {name!r}; plots: {', '.join(PLOT_NAMES)}")
    if fmt not in ("svg", "png"):
        raise ValueError(f"unknown format {fmt!r}; formats: svg, png")
    figure = _DRAWERS[name](_Study.of(spec, rows, curves, summary))
    buffer = io.BytesIO()
    if fmt == "svg":
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


# -- reading rows --------------------------------------------------------------------------------


def _by_lr(study: _Study, variant: str, column: str) -> dict[float, list[float]]:
    """{lr: [the variant's values of `column` (_Study.column), in seed order]}, lrs sorted, NaN dropped."""
    values = study.column(column)
    groups: dict[float, list[float]] = {}
    for i in sorted(range(len(study.rows)), key=lambda i: (study.rows[i].lr, study.rows[i].seed)):
        if study.rows[i].variant == variant and not math.isnan(values[i]):
            groups.setdefault(study.rows[i].lr, []).append(float(values[i]))
    return groups


# -- shared drawing ------------------------------------------------------------------------------


def _figure(size: tuple[float, float] = FIGSIZE) -> Figure:
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)  # its own Agg canvas: no pyplot, no global figure manager
    return figure


def _lr_axis(ax: Axes, lrs: Sequence[float]) -> None:
    """Log lr axis covering the grid with a margin; ticks at the grid's lrs when they are few."""
    ax.set_xscale("log")
    low, high = min(lrs), max(lrs)
    pad = 10 ** max(0.15, 0.08 * math.log10(high / low))
    ax.set_xlim(low / pad, high * pad)
    if len(lrs) <= 8:
        ax.set_xticks(lrs, labels=[f"{lr:.3g}" for lr in lrs])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("learning rate")


def _jitter_unit(lrs: Sequence[float]) -> float:
    """Width in decades given to each lr's dots: small against the gap between grid lrs."""
    gaps = np.diff(np.log10(lrs))
    return min(0.08, 0.3 * float(gaps.min())) if gaps.size else 0.08


def _jittered(lr: float, unit: float, slot: int, n_slots: int, rank: int = 0, n_ranks: int = 1) -> float:
    """lr moved in log space: variants side by side (slot), seeds spread within a variant (rank)."""
    width = unit / max(n_slots, 1)
    offset = (slot - (n_slots - 1) / 2) * width + (rank - (n_ranks - 1) / 2) / n_ranks * 0.8 * width
    return lr * 10**offset


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=NOTE_COLOUR)


def _legend(figure: Figure, handles: Sequence[Artist]) -> None:
    """Legend right of the axes, where it hides neither data nor the title."""
    figure.legend(handles=handles, loc="outside right center", fontsize="small")


def _log_y_if_wide(ax: Axes, values: Sequence[float], study: _Study) -> None:
    """Log y for lower-is-better metrics (losses, mse) spanning more than two decades."""
    if study.summary.higher_is_better or not values or study.spec.success.threshold <= 0:
        return
    if min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def _threshold_line(ax: Axes, study: _Study) -> None:
    threshold = study.spec.success.threshold
    ax.axhline(threshold, ls="--", lw=1, color="0.3", label=f"threshold {threshold:g}")


# -- the plots -----------------------------------------------------------------------------------


def _metric_vs_lr(study: _Study) -> Figure:
    """Final metric per seed (dots), mean per lr with its t-interval from the summary (clipped to the
    dots' range: with two seeds it is very wide), diverged runs as 'x'."""
    figure = _figure()
    ax = figure.subplots()
    unit, names = _jitter_unit(study.lrs), list(study.colours)
    all_values: list[float] = []
    any_diverged = False
    # diverged runs have no value: marked on the worst edge (bottom when higher is better)
    edge = 0.03 if study.summary.higher_is_better else 0.97
    for slot, (variant, colour) in enumerate(study.colours.items()):
        groups = _by_lr(study, variant, "value")
        for lr, values in groups.items():
            xs = [_jittered(lr, unit, slot, len(names), i, len(values)) for i in range(len(values))]
            ax.scatter(xs, values, s=14, color=colour, alpha=0.6, linewidths=0)
            all_values += values
        stats = [s for v in study.summary.variants if v.name == variant for s in v.lrs if s.mean is not None]
        if stats:
            lrs, means = [s.lr for s in stats], [float(s.mean or 0.0) for s in stats]
            lows = [m if s.mean_ci_low is None else s.mean_ci_low for s, m in zip(stats, means, strict=True)]
            highs = [
                m if s.mean_ci_high is None else s.mean_ci_high for s, m in zip(stats, means, strict=True)
            ]
            ax.fill_between(lrs, lows, highs, color=colour, alpha=0.2, lw=0)
            ax.plot(lrs, means, "-o", color=colour, ms=4, lw=1.5, label=variant)
        diverged = _by_lr(study, variant, "diverged")
        for lr, marks in diverged.items():
            xs = [_jittered(lr, unit, slot, len(names), i, len(marks)) for i in range(len(marks))]
            ax.plot(xs, [edge] * len(xs), "x", color=colour, ms=6, transform=ax.get_xaxis_transform())
            any_diverged = True
    _threshold_line(ax, study)
    _log_y_if_wide(ax, all_values, study)
    if all_values and ax.get_yscale() == "linear":  # the bands may reach far beyond the seeds
        low, high = (
            min([*all_values, study.spec.success.threshold]),
            max([*all_values, study.spec.success.threshold]),
        )
        pad = 0.08 * (high - low) or 0.05 * max(abs(high), 1e-12)
        ax.set_ylim(low - pad, high + pad)
    if not all_values and not any_diverged:
        _note(ax, study.empty_note())
    _lr_axis(ax, study.lrs)
    which = "at best validation" if study.spec.selection == "best_val" else "of the final model"
    ax.set_ylabel(f"test {study.metric} {which}")
    what = f"test {study.metric} vs learning rate: seeds, mean and its 95% t-interval"
    figure.suptitle(study.title(what), fontsize="medium")
    handles, _ = ax.get_legend_handles_labels()
    if any_diverged:
        handles.append(Line2D([], [], ls="none", marker="x", color="0.3", label="diverged"))
    _legend(figure, handles)
    return figure


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _success_vs_lr(study: _Study) -> Figure:
    """Success rate per lr with its Wilson 95% interval, and the robust level."""
    figure = _figure()
    ax = figure.subplots()
    unit, names = _jitter_unit(study.lrs), list(study.colours)
    drawn = False
    for variant in study.summary.variants:
        stats = [s for s in variant.lrs if s.success_rate is not None]
        if not stats:
            continue
        slot = names.index(variant.name)
        xs = [_jittered(s.lr, unit, slot, len(names)) for s in stats]
        rates = np.array([s.success_rate for s in stats], dtype=float)
        lows = np.array([_or(s.success_ci_low, r) for s, r in zip(stats, rates, strict=True)])
        highs = np.array([_or(s.success_ci_high, r) for s, r in zip(stats, rates, strict=True)])
        yerr = np.clip([rates - lows, highs - rates], 0, None)
        colour = study.colours[variant.name]
        ax.errorbar(xs, rates, yerr=yerr, fmt="-o", color=colour, ms=4, lw=1.5, capsize=3, label=variant.name)
        drawn = True
    level = study.summary.robust_level
    ax.axhline(level, ls=":", lw=1.2, color="0.3", label=f"robust level {level:g}")
    if not drawn:
        _note(ax, study.empty_note())
    _lr_axis(ax, study.lrs)
    ax.set_ylim(-0.04, 1.04)
    ax.set_ylabel(f"success rate (test {study.criterion})")
    figure.suptitle(study.title("success rate vs learning rate, Wilson 95% interval"), fontsize="medium")
    _legend(figure, ax.get_legend_handles_labels()[0])
    return figure


def _curve(points: Sequence[CurvePoint], key: str) -> tuple[list[int], list[float]]:
    kept = [(p.step, p.values[key]) for p in points if math.isfinite(p.values.get(key, math.nan))]
    return [s for s, _ in kept], [v for _, v in kept]


def _evenly_picked(values: Sequence[float], most: int) -> list[float]:
    if len(values) <= most:
        return list(values)
    return [values[round(i)] for i in np.linspace(0, len(values) - 1, most)]


def _learning_curves(study: _Study) -> Figure:
    """Validation metric vs step, one panel per lr, one thin line per seed coloured by variant."""
    key = f"val_{study.metric}"
    lines = [(row, *_curve(study.curves.get(row.cell, ()), key)) for row in study.rows]
    lines = [(row, steps, values) for row, steps, values in lines if steps]
    what = f"validation {study.metric} during training"
    if not lines:
        figure = _figure()
        ax = figure.subplots()
        _note(ax, "no learning curves recorded yet")
        ax.set(xlabel="step", ylabel=f"validation {study.metric}", xlim=(0, study.spec.budget.steps))
        figure.suptitle(study.title(what), fontsize="medium")
        return figure

    shown = _evenly_picked(study.lrs, MAX_CURVE_PANELS)
    if len(shown) < len(study.lrs):
        what += f" ({len(shown)} of {len(study.lrs)} learning rates)"
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    figure = _figure((max(FIGSIZE[0], 2.4 * ncols + 1.6), max(FIGSIZE[1], 2.2 * nrows + 1.2)))
    axes: list[Axes] = list(figure.subplots(nrows, ncols, sharey=True, squeeze=False).flat)
    panels = dict(zip(shown, axes, strict=False))
    for row, steps, values in lines:
        if (panel := panels.get(row.lr)) is not None:
            panel.plot(steps, values, color=study.colours[row.variant], lw=0.8, alpha=0.7)
    last_step = max(study.spec.budget.steps, *(max(steps) for _, steps, _ in lines))
    for lr, ax in panels.items():
        ax.set_xlim(0, last_step)  # the same on every panel, also one without curves
        _threshold_line(ax, study)
        ax.set_title(f"lr = {lr:.3g}", fontsize="small")
        ax.tick_params(labelsize="small")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    _log_y_if_wide(next(iter(panels.values())), [v for _, _, vs in lines for v in vs], study)

    drawn = dict.fromkeys(row.variant for row, _, _ in lines)
    handles = [Line2D([], [], color=study.colours[v], label=v) for v in study.colours if v in drawn]
    handles.append(Line2D([], [], ls="--", color="0.3", label=f"threshold {study.spec.success.threshold:g}"))
    _legend(figure, handles)
    figure.supxlabel("step")
    figure.supylabel(f"validation {study.metric}")
    figure.suptitle(study.title(what), fontsize="medium")
    return figure


def _steps_to_threshold(study: _Study) -> Figure:
    """Steps to reach the threshold of successful seeds (dots) and their median per lr."""
    figure = _figure()
    ax = figure.subplots()
    figure.suptitle(study.title(f"steps until {study.criterion} (successful seeds)"), fontsize="medium")

    groups = {v: _by_lr(study, v, "steps_if_success") for v in study.colours}
    if not any(groups.values()):
        ax.set_axis_off()
        note = "no trial reached the threshold"
        _note(ax, f"{note}\n({study.summary.done} of {study.summary.cells_total} trials finished)")
        return figure

    unit, names = _jitter_unit(study.lrs), list(study.colours)
    highest = 0.0
    for slot, (variant, by_lr) in enumerate(groups.items()):
        colour = study.colours[variant]
        for lr, steps in by_lr.items():
            xs = [_jittered(lr, unit, slot, len(names), i, len(steps)) for i in range(len(steps))]
            ax.scatter(xs, steps, s=16, color=colour, alpha=0.6, linewidths=0)
            highest = max(highest, *steps)
        if by_lr:
            centres = [_jittered(lr, unit, slot, len(names)) for lr in by_lr]
            medians = [float(np.median(s)) for s in by_lr.values()]
            ax.plot(centres, medians, ls="none", marker="_", ms=16, mew=2.5, color=colour)
    handles = [
        Line2D([], [], ls="none", marker="o", color=study.colours[v], label=v) for v, g in groups.items() if g
    ]
    handles.append(Line2D([], [], ls="none", marker="_", ms=12, mew=2.5, color="0.3", label="median"))
    _legend(figure, handles)
    ax.set_ylim(0, 1.05 * max(highest, study.spec.budget.steps))
    _lr_axis(ax, study.lrs)
    ax.set_ylabel("steps to threshold")
    return figure


_DRAWERS: dict[str, Callable[[_Study], Figure]] = {
    "metric_vs_lr": _metric_vs_lr,
    "success_vs_lr": _success_vs_lr,
    "learning_curves": _learning_curves,
    "steps_to_threshold": _steps_to_threshold,
}
