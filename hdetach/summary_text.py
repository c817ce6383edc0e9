"""A robustness summary (the JSON of `GET /studies/{id}/summary`, `RobustnessSummary` dumped) in
words: the table and the lines under it, printed by `hdetach demo` and `hdetach summary` alike."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _relation(summary: dict[str, Any]) -> str:
    return ">=" if summary["higher_is_better"] else "<="


def print_summary(summary: dict[str, Any], console: Console) -> None:
    console.print(summary_table(summary))


def summary_table(summary: dict[str, Any]) -> Table:
    """Each variant's success rate, best learning rate, worst seed there, robust range and AUC."""
    value = ".3f" if summary["higher_is_better"] else ".3g"
    table = Table(
        title=f"robustness summary: test {summary['metric']} (success: {_relation(summary)} "
        f"{summary['threshold']:g})"
    )
    for column in (
        "variant",
        "success rate [95% CI]",
        "best lr",
        "mean at best lr",
        "worst seed at best lr",
        "robust lr range",
        "success AUC",
    ):
        table.add_column(column)
    for v in summary["variants"]:
        worst = v["worst_seed_at_best_lr"]
        robust = "–" if v["robust_lr_low"] is None else f"{v['robust_lr_low']:g}–{v['robust_lr_high']:g}"
        table.add_row(
            v["name"],
            f"{_fmt(v['success_rate'], '.2f')} [{_fmt(v['success_ci_low'], '.2f')}, "
            f"{_fmt(v['success_ci_high'], '.2f')}]",
            _fmt(v["best_lr"], "g"),
            _fmt(v["best_mean"], value),
            _worst(worst, value),
            robust,
            _fmt(v["success_auc"], ".2f"),
        )
    return table


def _worst(worst: dict[str, Any] | None, value: str) -> str:
    if worst is None:
        return "–"
    shown = "diverged" if worst["diverged"] else format(worst["value"], value)
    return f"{shown} (seed {worst['seed']})"


def _counts(variant: dict[str, Any]) -> str:
    return ", ".join(f"lr {s['lr']:g}: {s['successes']}/{s['seeds_run']}" for s in variant["lrs"])


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The lines printed after the summary table: each variant's successes per learning rate and
    robust range, the paired comparisons, and the caveats (all from `summary`)."""
    level = summary["robust_level"]
    lines = [f"successes per learning rate, and the robust range (success rate >= {level:g}):"]
    for v in summary["variants"]:
        robust = (
            "none"
            if v["robust_lr_low"] is None
            else f"{v['robust_lr_low']:g}–{v['robust_lr_high']:g}"
            + ("" if v["robust_contiguous"] else " (with gaps)")
        )
        lines.append(f"  {v['name']}: {_counts(v)}; robust lr range: {robust}")
    better = "higher" if summary["higher_is_better"] else "lower"
    for c in summary["comparisons"]:
        lines.append(
            f"paired comparison, {c['variant']} vs {c['baseline']} on the same (lr, seed), "
            f"{c['n_pairs']} pairs (positive = {c['variant']} {better} {summary['metric']}): "
            f"mean difference {_fmt(c['mean_difference'], '+.3g')} "
            f"[95% CI {_fmt(c['mean_difference_ci_low'], '+.3g')}, "
            f"{_fmt(c['mean_difference_ci_high'], '+.3g')}], "
            f"P(better) {_fmt(c['prob_improvement'], '.2f')} "
            f"[95% CI {_fmt(c['prob_improvement_ci_low'], '.2f')}, "
            f"{_fmt(c['prob_improvement_ci_high'], '.2f')}], "
            f"Wilcoxon p {_fmt(c['wilcoxon_p'], '.3g')}"
        )
    if summary["caveats"]:
        lines.append("what these numbers can support:")
        lines.extend(f"  {caveat}" for caveat in summary["caveats"])
    return lines
