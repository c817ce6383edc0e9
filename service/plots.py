"""Figures of a robustness study, rendered to SVG or PNG bytes.

Each plot reads the study as it stands (rows, learning curves, summary), so partial studies, a
single learning rate or seed, and studies with no finished trial all render, with a note where
there is nothing to draw. Legends name each variant with its p_detach. SVG text stays text
(`svg.fonttype: none`): searchable, selectable and small. The shared reading and drawing helpers
are in `service.plot_base`; the plots that show seeds and pairs one by one in `service.plot_seeds`.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from service.plot_base import (
    StudyView,
    by_lr,
    jitter_unit,
    jittered,
    legend,
    log_y_if_wide,
    lr_axis,
    new_figure,
    note,
    threshold_line,
)
from service.plot_seeds import learning_curves, paired_difference, steps_to_threshold
from studies.results import CurvePoint, TrialRow
from studies.robustness import RobustnessSummary
from studies.spec import StudySpec

PLOT_NAMES = ("metric_vs_lr", "success_vs_lr", "learning_curves", "steps_to_threshold", "paired_difference")
PlotFormat = Literal["svg", "png"]
PNG_DPI = 100
# rcParams are process-wide: the SVG settings are set only while a figure is saved, one at a time,
# so that a concurrent save cannot restore them under another
_SVG_SAVE = threading.Lock()


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
    figure = _DRAWERS[name](StudyView.of(spec, rows, curves, summary))
    buffer = io.BytesIO()
    if fmt == "svg":
        with _SVG_SAVE, matplotlib.rc_context({"svg.fonttype": "none"}):  # text as <text>, not paths
            figure.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


# -- the plots -----------------------------------------------------------------------------------


def _metric_vs_lr(study: StudyView) -> Figure:
    """Final metric per seed (dots), mean per lr with its t-interval from the summary (clipped to the
    dots' range: with two seeds it is very wide), diverged runs as 'x'."""
    figure = new_figure()
    ax = figure.subplots()
    unit, names = jitter_unit(study.lrs), list(study.colours)
    all_values: list[float] = []
    any_diverged = False
    # diverged runs have no value: marked on the worst edge (bottom when higher is better)
    edge = 0.03 if study.summary.higher_is_better else 0.97
    for slot, (variant, colour) in enumerate(study.colours.items()):
        groups = by_lr(study, variant, "value")
        for lr, values in groups.items():
            xs = [jittered(lr, unit, slot, len(names), i, len(values)) for i in range(len(values))]
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
            ax.plot(lrs, means, "-o", color=colour, ms=4, lw=1.5, label=study.label(variant))
        diverged = by_lr(study, variant, "diverged")
        for lr, marks in diverged.items():
            xs = [jittered(lr, unit, slot, len(names), i, len(marks)) for i in range(len(marks))]
            ax.plot(xs, [edge] * len(xs), "x", color=colour, ms=6, transform=ax.get_xaxis_transform())
            any_diverged = True
    threshold_line(ax, study)
    log_y_if_wide(ax, all_values, study)
    if all_values and ax.get_yscale() == "linear":  # the bands may reach far beyond the seeds
        low, high = (
            min([*all_values, study.spec.success.threshold]),
            max([*all_values, study.spec.success.threshold]),
        )
        pad = 0.08 * (high - low) or 0.05 * max(abs(high), 1e-12)
        ax.set_ylim(low - pad, high + pad)
    if not all_values and not any_diverged:
        note(ax, study.empty_note())
    lr_axis(ax, study.lrs)
    which = "at best validation" if study.spec.selection == "best_val" else "of the final model"
    ax.set_ylabel(f"test {study.metric} {which}")
    what = f"test {study.metric} vs learning rate: seeds, mean and its 95% t-interval"
    figure.suptitle(study.title(what), fontsize="medium")
    handles, _ = ax.get_legend_handles_labels()
    if any_diverged:
        handles.append(Line2D([], [], ls="none", marker="x", color="0.3", label="diverged"))
    legend(figure, handles)
    return figure


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _success_vs_lr(study: StudyView) -> Figure:
    """Success rate per lr with its Wilson 95% interval, and the robust level."""
    figure = new_figure()
    ax = figure.subplots()
    unit, names = jitter_unit(study.lrs), list(study.colours)
    drawn = False
    for variant in study.summary.variants:
        stats = [s for s in variant.lrs if s.success_rate is not None]
        if not stats:
            continue
        slot = names.index(variant.name)
        xs = [jittered(s.lr, unit, slot, len(names)) for s in stats]
        rates = np.array([s.success_rate for s in stats], dtype=float)
        lows = np.array([_or(s.success_ci_low, r) for s, r in zip(stats, rates, strict=True)])
        highs = np.array([_or(s.success_ci_high, r) for s, r in zip(stats, rates, strict=True)])
        yerr = np.clip([rates - lows, highs - rates], 0, None)
        colour = study.colours[variant.name]
        label = study.label(variant.name)
        ax.errorbar(xs, rates, yerr=yerr, fmt="-o", color=colour, ms=4, lw=1.5, capsize=3, label=label)
        drawn = True
    level = study.summary.robust_level
    ax.axhline(level, ls=":", lw=1.2, color="0.3", label=f"robust level {level:g}")
    if not drawn:
        note(ax, study.empty_note())
    lr_axis(ax, study.lrs)
    ax.set_ylim(-0.04, 1.04)
    ax.set_ylabel(f"success rate (test {study.criterion})")
    figure.suptitle(study.title("success rate vs learning rate, Wilson 95% interval"), fontsize="medium")
    legend(figure, ax.get_legend_handles_labels()[0])
    return figure


_DRAWERS: dict[str, Callable[[StudyView], Figure]] = {
    "metric_vs_lr": _metric_vs_lr,
    "success_vs_lr": _success_vs_lr,
    "learning_curves": learning_curves,
    "steps_to_threshold": steps_to_threshold,
    "paired_difference": paired_difference,
}
