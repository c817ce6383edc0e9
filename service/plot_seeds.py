"""The plots that show seeds and pairs one by one: learning curves, steps to the threshold, and the
paired difference with the baseline (each variant minus the baseline, per learning rate).

The paired plot draws what `studies.robustness` computed (`Comparison.by_lr`); it computes no
statistic of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from service.plot_base import (
    FIGSIZE,
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
from studies.results import CurvePoint
from studies.robustness import FEW_PAIRS_PER_LR, LRDifference

MAX_CURVE_PANELS = 12  # learning_curves shows at most this many learning rates, evenly picked
# each seed its own line: 4 dash patterns x 4 markers tell 16 seeds apart (then styles repeat)
SEED_STYLES = list(product(["-", "--", ":", "-."], ["", "o", "s", "^"]))
SEED_COLOUR = "0.35"


def _curve(points: Sequence[CurvePoint], key: str) -> tuple[list[int], list[float]]:
    kept = [(p.step, p.values[key]) for p in points if math.isfinite(p.values.get(key, math.nan))]
    return [s for s, _ in kept], [v for _, v in kept]


def _evenly_picked(values: Sequence[float], most: int) -> list[float]:
    if len(values) <= most:
        return list(values)
    return [values[round(i)] for i in np.linspace(0, len(values) - 1, most)]


def _seed_style(study: StudyView, seed: int) -> tuple[str, str]:
    seeds = sorted(set(study.spec.seeds) | {r.seed for r in study.rows})
    return SEED_STYLES[seeds.index(seed) % len(SEED_STYLES)]


def _mean_and_range(
    lines: Sequence[tuple[list[int], list[float]]],
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Per step any seed recorded: the mean over the seeds recorded there, and their min and max."""
    at: dict[int, list[float]] = {}
    for steps, values in lines:
        for step, value in zip(steps, values, strict=True):
            at.setdefault(step, []).append(value)
    steps = sorted(at)
    return (
        steps,
        np.array([np.mean(at[s]) for s in steps]),
        np.array([min(at[s]) for s in steps]),
        np.array([max(at[s]) for s in steps]),
    )


def learning_curves(study: StudyView) -> Figure:
    """Validation metric vs step, one panel per lr: per variant the mean over seeds (thick) with the
    seeds' range (band), and each seed as a thin line whose dashes and marker name the seed."""
    key = f"val_{study.metric}"
    lines = [(row, *_curve(study.curves.get(row.cell, ()), key)) for row in study.rows]
    lines = [(row, steps, values) for row, steps, values in lines if steps]
    what = f"validation {study.metric} during training: mean over seeds, their range, each seed"
    if not lines:
        figure = new_figure()
        ax = figure.subplots()
        note(ax, "no learning curves recorded yet")
        ax.set(xlabel="step", ylabel=f"validation {study.metric}", xlim=(0, study.spec.budget.steps))
        figure.suptitle(study.title(what), fontsize="medium")
        return figure

    shown = _evenly_picked(study.lrs, MAX_CURVE_PANELS)
    if len(shown) < len(study.lrs):
        what += f" ({len(shown)} of {len(study.lrs)} learning rates)"
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    figure = new_figure((max(FIGSIZE[0], 2.4 * ncols + 2.4), max(FIGSIZE[1], 2.2 * nrows + 1.2)))
    axes: list[Axes] = list(figure.subplots(nrows, ncols, sharey=True, squeeze=False).flat)
    panels = dict(zip(shown, axes, strict=False))
    seeds_drawn: dict[int, None] = {}
    for lr, variant in dict.fromkeys((row.lr, row.variant) for row, _, _ in lines):
        if (panel := panels.get(lr)) is None:
            continue
        colour = study.colours[variant]
        mine = [(row, s, v) for row, s, v in lines if (row.lr, row.variant) == (lr, variant)]
        for row, steps, values in mine:
            dashes, marker = _seed_style(study, row.seed)
            panel.plot(steps, values, ls=dashes, marker=marker or None, ms=3, color=colour, lw=0.7, alpha=0.6)
            seeds_drawn[row.seed] = None
        steps, mean, low, high = _mean_and_range([(s, v) for _, s, v in mine])
        if len(mine) > 1:
            panel.fill_between(steps, low, high, color=colour, alpha=0.15, lw=0)
        panel.plot(steps, mean, color=colour, lw=2.2)
    last_step = max(study.spec.budget.steps, *(max(steps) for _, steps, _ in lines))
    for lr, ax in panels.items():
        ax.set_xlim(0, last_step)  # the same on every panel, also one without curves
        threshold_line(ax, study)
        ax.set_title(f"lr = {lr:.3g}", fontsize="small")
        ax.tick_params(labelsize="small")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    log_y_if_wide(next(iter(panels.values())), [v for _, _, vs in lines for v in vs], study)

    drawn = dict.fromkeys(row.variant for row, _, _ in lines)
    handles: list[Artist] = [
        Line2D([], [], color=study.colours[v], lw=2.2, label=f"{study.label(v)}: mean")
        for v in study.colours
        if v in drawn
    ]
    handles.append(Patch(color="0.5", alpha=0.3, label="range over seeds"))
    for seed in sorted(seeds_drawn)[: len(SEED_STYLES)]:
        dashes, marker = _seed_style(study, seed)
        seed_line = Line2D([], [], ls=dashes, marker=marker or None, ms=3, lw=0.7, color=SEED_COLOUR)
        seed_line.set_label(f"seed {seed}")
        handles.append(seed_line)
    if len(seeds_drawn) > len(SEED_STYLES):
        handles.append(Line2D([], [], ls="none", label=f"(styles repeat after {len(SEED_STYLES)} seeds)"))
    handles.append(Line2D([], [], ls="--", color="0.3", label=f"threshold {study.spec.success.threshold:g}"))
    legend(figure, handles)
    figure.supxlabel("step")
    figure.supylabel(f"validation {study.metric}")
    figure.suptitle(study.title(what), fontsize="medium")
    return figure


def _reached_labels(study: StudyView, ax: Axes, unit: float) -> None:
    """'k/n' above each variant x lr: seeds that reached the threshold of the seeds that ran, so that
    the seeds that did not reach it are counted, not silently missing from the dots."""
    names = list(study.colours)
    for variant in study.summary.variants:
        slot = names.index(variant.name)
        for s in variant.lrs:
            if not s.seeds_run and not s.failed:
                continue
            text = f"{s.successes}/{s.seeds_run}" + (f"\n+{s.failed} failed" if s.failed else "")
            ax.annotate(
                text,
                (jittered(s.lr, unit, slot, len(names)), 1 - 0.02 - 0.07 * slot),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="top",
                fontsize="x-small",
                color=study.colours[variant.name],
            )


def steps_to_threshold(study: StudyView) -> Figure:
    """Steps to reach the threshold of successful seeds (dots), their median per lr, and per variant x
    lr how many of the seeds that ran reached it ('k/n')."""
    figure = new_figure()
    ax = figure.subplots()
    what = f"steps until {study.criterion}; k/n: seeds that reached it of those that ran"
    figure.suptitle(study.title(what), fontsize="medium")

    groups = {v: by_lr(study, v, "steps_if_success") for v in study.colours}
    unit, names = jitter_unit(study.lrs), list(study.colours)
    if not any(groups.values()):
        reason = "no trial reached the threshold"
        note(ax, f"{reason}\n({study.summary.done} of {study.summary.cells_total} trials finished)")
    highest = 0.0
    for slot, (variant, steps_by_lr) in enumerate(groups.items()):
        colour = study.colours[variant]
        for lr, steps in steps_by_lr.items():
            xs = [jittered(lr, unit, slot, len(names), i, len(steps)) for i in range(len(steps))]
            ax.scatter(xs, steps, s=16, color=colour, alpha=0.6, linewidths=0)
            highest = max(highest, *steps)
        if steps_by_lr:
            centres = [jittered(lr, unit, slot, len(names)) for lr in steps_by_lr]
            medians = [float(np.median(s)) for s in steps_by_lr.values()]
            ax.plot(centres, medians, ls="none", marker="_", ms=16, mew=2.5, color=colour)
    _reached_labels(study, ax, unit)
    handles: list[Artist] = [
        Line2D([], [], ls="none", marker="o", color=study.colours[v], label=study.label(v)) for v in groups
    ]
    handles.append(Line2D([], [], ls="none", marker="_", ms=12, mew=2.5, color="0.3", label="median"))
    legend(figure, handles)
    # headroom above the dots for the k/n labels, one row per variant
    ax.set_ylim(0, (1.1 + 0.1 * len(names)) * max(highest, study.spec.budget.steps))
    lr_axis(ax, study.lrs)
    ax.set_ylabel("steps to threshold")
    return figure


def _pair_marks(ax: Axes, d: LRDifference, x: float, colour: str) -> set[str]:
    """Pairs decided by a divergence, on the axes' edges: ▲ the baseline diverged (a win), ▼ the
    variant did (a loss), × both (a tie, on the zero line). Returns the kinds drawn."""
    kinds: set[str] = set()
    edge = {"baseline": (0.97, "^"), "variant": (0.03, "v")}
    for side, (y, marker) in edge.items():
        n = sum(p.diverged == side for p in d.pairs)
        if n:
            ax.plot([x] * n, [y] * n, ls="none", marker=marker, color=colour, ms=6,
                    transform=ax.get_xaxis_transform())  # fmt: skip
            kinds.add(side)
    both = sum(p.diverged == "both" for p in d.pairs)
    if both:
        ax.plot([x] * both, [0.0] * both, ls="none", marker="x", color=colour, ms=6)
        kinds.add("both")
    return kinds


def paired_difference(study: StudyView) -> Figure:
    """Per non-baseline variant and lr: each pair's difference with the baseline (dots), their mean
    and its 95% t-interval (dashed where it rests on 2 to FEW_PAIRS_PER_LR pairs: unreliable)."""
    figure = new_figure()
    ax = figure.subplots()
    better = "variant − baseline" if study.summary.higher_is_better else "baseline − variant"
    what = f"paired difference with {study.label(study.summary.baseline)}, mean and 95% t-interval"
    figure.suptitle(study.title(what), fontsize="medium")
    ax.set_ylabel(f"test {study.metric}: {better} (> 0: variant better)")
    ax.axhline(0.0, color="0.3", lw=1)
    lr_axis(ax, study.lrs)
    comparisons = study.summary.comparisons
    if not comparisons:
        note(ax, "only one variant: nothing to compare")
        return figure
    unit = jitter_unit(study.lrs)
    handles: list[Artist] = []
    kinds: set[str] = set()
    shown: list[float] = [0.0]
    few = False
    for slot, c in enumerate(comparisons):
        colour = study.colours.get(c.variant, "0.3")
        for d in c.by_lr:
            values = [p.difference for p in d.pairs if p.difference is not None]
            xs = [jittered(d.lr, unit, slot, len(comparisons), i, len(values)) for i in range(len(values))]
            ax.scatter(xs, values, s=14, color=colour, alpha=0.6, linewidths=0)
            shown += values
            centre = jittered(d.lr, unit, slot, len(comparisons))
            kinds |= _pair_marks(ax, d, centre, colour)
            if d.mean_difference is None:
                continue
            shown.append(d.mean_difference)
            low, high = d.mean_difference_ci_low, d.mean_difference_ci_high
            if low is None or high is None:
                ax.plot([centre], [d.mean_difference], marker="D", ms=5, color=colour)
                continue
            unreliable = d.n_value_pairs <= FEW_PAIRS_PER_LR
            few |= unreliable
            yerr = [[d.mean_difference - low], [high - d.mean_difference]]
            face = "white" if unreliable else colour
            bars = ax.errorbar(
                [centre], [d.mean_difference], yerr=yerr, fmt="D", ms=5, color=colour, capsize=3, mfc=face
            )
            if unreliable:
                bars[2][0].set_linestyle("--")
        handles.append(Line2D([], [], marker="D", color=colour, label=f"{study.label(c.variant)}: mean"))
    if few:
        handles.append(Line2D([], [], marker="D", mfc="white", ls="--", color="0.3",
                              label=f"interval from 2–{FEW_PAIRS_PER_LR} pairs: unreliable"))  # fmt: skip
    marks = {"baseline": ("^", "baseline diverged (win)"), "variant": ("v", "variant diverged (loss)"),
             "both": ("x", "both diverged (tie)")}  # fmt: skip
    handles += [
        Line2D([], [], ls="none", marker=m, color="0.3", label=t) for k, (m, t) in marks.items() if k in kinds
    ]
    if len(shown) == 1:
        note(ax, "no pairs both variants ran yet")
    else:  # the dots decide the scale: intervals from few pairs may reach far beyond them
        low, high = min(shown), max(shown)
        pad = 0.15 * (high - low) or 0.05 * max(abs(high), abs(low), 1e-12)
        ax.set_ylim(low - pad, high + pad)
    legend(figure, handles)
    return figure
