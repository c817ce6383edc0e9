"""The report's tables: variants, learning rates, the comparison with the baseline, transfer, the
paper's figures and the trials, as HTML built from escaped parts.

Every string from the spec, the rows or the caller is escaped (study names are user input).
Cells are built as text and escaped by `_table`; only `_Html` values pass through as markup.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Iterable, Sequence

from studies.paper import PaperFigure, paper_figures
from studies.results import TrialRow
from studies.robustness import (
    FEW_PAIRS_PER_LR,
    Comparison,
    LRStats,
    RobustnessSummary,
    SeedValue,
    VariantSummary,
)
from studies.spec import StudySpec

DASH = "–"  # an undefined value
ERROR_PREVIEW = 80  # characters of a trial's error shown before "details"


class _Html(str):
    """Markup built here from escaped parts: `_table` passes it through unescaped."""


# -- formatting ----------------------------------------------------------------------------------


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None, fmt: str = ".4g") -> str:
    return DASH if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.0f}%"


def _with_ci(value: str, low: str, high: str) -> str:
    return value if value == DASH or low == DASH else f"{value} [{low}, {high}]"


def _rate(rate: float | None, low: float | None, high: float | None) -> str:
    return _with_ci(_pct(rate), _pct(low), _pct(high))


def lr_text(value: float | None) -> str:
    return _num(value, ".3g")


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: int = 1, row_class: str = ""
) -> str:
    """An HTML table, its first `text_columns` columns left-aligned; cells escaped unless _Html."""
    head = "".join(f"<th{_align(i, text_columns)}>{esc(h)}</th>" for i, h in enumerate(headers))
    tr = f'<tr class="{row_class}">' if row_class else "<tr>"
    body = [
        tr
        + "".join(
            f"<td{_align(i, text_columns)}>{cell if isinstance(cell, _Html) else esc(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    ]
    if not body:
        body.append(f'<tr><td class=text colspan="{len(headers)}">none</td></tr>')
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _align(column: int, text_columns: int) -> str:
    return " class=text" if column < text_columns else ""


# -- tables --------------------------------------------------------------------------------------


def variant_table(summary: RobustnessSummary) -> str:
    headers = [
        "variant", "p_detach", "runs", "diverged", "failed", "success rate [95% CI]", "best lr",
        "mean at best lr", "worst seed at best lr", "robust lr range", "width (decades)",
        "robust with confidence", "success AUC", "expected best, k=1", "expected best, k=max",
    ]  # fmt: skip
    return _table(headers, (_variant_row(v) for v in summary.variants))


def _variant_row(v: VariantSummary) -> list[object]:
    robust = DASH
    if v.robust_lr_low is not None:
        robust = f"{lr_text(v.robust_lr_low)} – {lr_text(v.robust_lr_high)}"
        robust += "" if v.robust_contiguous else " (with gaps)"
    confident = DASH
    if v.confidently_robust_lr_low is not None:
        confident = f"{lr_text(v.confidently_robust_lr_low)} – {lr_text(v.confidently_robust_lr_high)}"
    expected = v.expected_max_k
    k_max = f"{_num(expected[-1])} (k={len(expected)})" if expected else DASH
    return [
        v.name, _num(v.p_detach, "g"), v.runs, v.diverged, v.failed,
        _rate(v.success_rate, v.success_ci_low, v.success_ci_high), lr_text(v.best_lr), _num(v.best_mean),
        _seed(v.worst_seed_at_best_lr), robust, _num(v.robust_width_decades, ".2f"), confident,
        _num(v.success_auc, ".2f"),
        _num(expected[0]) if expected else DASH, k_max,
    ]  # fmt: skip


def _seed(worst: SeedValue | None) -> str:
    if worst is None:
        return DASH
    return f"diverged (seed {worst.seed})" if worst.diverged else f"{_num(worst.value)} (seed {worst.seed})"


def lr_table(variant: VariantSummary) -> str:
    headers = [
        "lr", "seeds run", "diverged", "failed", "mean [95% CI]", "median", "std", "worst",
        "success rate [95% CI]", "median steps to threshold",
    ]  # fmt: skip
    return f"<h3>{esc(variant.name)}</h3>\n" + _table(headers, (_lr_row(s) for s in variant.lrs))


def _lr_row(s: LRStats) -> list[object]:
    return [
        lr_text(s.lr), s.seeds_run, s.diverged, s.failed,
        _with_ci(_num(s.mean), _num(s.mean_ci_low), _num(s.mean_ci_high)), _num(s.median), _num(s.std),
        "diverged" if s.worst_diverged else _num(s.worst),
        _rate(s.success_rate, s.success_ci_low, s.success_ci_high),
        _num(s.median_steps_to_threshold, ".0f"),
    ]  # fmt: skip


def comparison_table(summary: RobustnessSummary) -> str:
    if not summary.comparisons:
        return "<p class=note>Only one variant: nothing to compare.</p>"
    headers = [
        "variant", "baseline", "pairs", "pairs with a divergence (variant / baseline / both)",
        "mean difference [95% CI] (pairs)", "P(improvement) [95% CI]", "Wilcoxon p (smallest possible)",
        "Holm-adjusted p", "success-rate difference (paired)",
    ]  # fmt: skip
    note = (
        "Paired on (lr, seed); positive differences favour the variant. A pair where one side diverged "
        "is a loss for that side (a tie if both did) in P(improvement), the rank test and the success "
        "difference; the mean difference is over the pairs where neither diverged (their number in "
        "brackets). Wilcoxon p is exact up to 50 non-zero differences (ties included), a normal "
        "approximation above (marked); beside it, the smallest p these pairs could give."
    )
    table = _table(headers, (_comparison_row(c) for c in summary.comparisons), text_columns=2)
    per_lr = "\n".join(_comparison_by_lr(c) for c in summary.comparisons)
    return f"{table}\n<p class=note>{note}</p>\n{per_lr}"


def _comparison_by_lr(c: Comparison) -> str:
    """The comparison at each learning rate: what the paired-difference plot draws."""
    headers = ["lr", "pairs", "mean difference [95% CI] (pairs)", "diverged (variant / baseline / both)"]
    rows = []
    for d in c.by_lr:
        difference = _with_ci(
            _num(d.mean_difference, "+.4g"), _num(d.mean_difference_ci_low, "+.4g"),
            _num(d.mean_difference_ci_high, "+.4g"),
        ) + f" ({d.n_value_pairs})"  # fmt: skip
        if d.mean_difference_ci_low is not None and d.n_value_pairs <= FEW_PAIRS_PER_LR:
            difference += " unreliable: too few pairs"
        divergences = f"{d.only_variant_diverged} / {d.only_baseline_diverged} / {d.both_diverged}"
        rows.append([lr_text(d.lr), d.n_pairs, difference, divergences])
    return f"<h3>{esc(c.variant)} vs {esc(c.baseline)} per learning rate</h3>\n" + _table(headers, rows)


def _comparison_row(c: Comparison) -> list[object]:
    difference = _with_ci(
        _num(c.mean_difference, "+.4g"), _num(c.mean_difference_ci_low, "+.4g"),
        _num(c.mean_difference_ci_high, "+.4g"),
    ) + f" ({c.n_value_pairs})"  # fmt: skip
    p_value = _num(c.wilcoxon_p, ".2g") + (" (normal approx.)" if c.wilcoxon_method == "normal" else "")
    if c.wilcoxon_min_p is not None:
        p_value += f" (≥ {c.wilcoxon_min_p:.2g})"
    return [
        c.variant, c.baseline, c.n_pairs,
        f"{c.only_variant_diverged} / {c.only_baseline_diverged} / {c.both_diverged}", difference,
        _with_ci(_num(c.prob_improvement, ".2f"), _num(c.prob_improvement_ci_low, ".2f"),
                 _num(c.prob_improvement_ci_high, ".2f")),
        p_value, _num(c.wilcoxon_p_holm, ".2g"),
        DASH if c.success_rate_difference is None else f"{100 * c.success_rate_difference:+.0f} pp",
    ]  # fmt: skip


def transfer_section(summary: RobustnessSummary) -> list[str]:
    if not summary.transfer:
        return []
    headers = ["variant", "lr", "tested at T", "runs", "mean", "median", "min", "max"]
    rows = (
        [t.variant, lr_text(t.lr), t.T, t.runs, _num(t.mean, ".3g"), _num(t.median, ".3g"),
         _num(t.min, ".3g"), _num(t.max, ".3g")]
        for t in summary.transfer
    )  # fmt: skip
    note = (
        "Accuracy of each trial's model (the one its metric comes from) on copying test sets at other "
        "delays; diverged runs are left out."
    )
    return ["<h2>Transfer copying</h2>", _table(headers, rows), f"<p class=note>{esc(note)}</p>"]


def paper_section(spec: StudySpec, rows: Sequence[TrialRow], summary: RobustnessSummary) -> list[str]:
    figures = paper_figures(spec.task)
    if not figures:
        return []
    headers = ["variant", "reported", "how chosen", "source", "their budget", "this study", "this budget"]
    table = _table(headers, (_paper_row(f, spec, rows, summary) for f in figures), text_columns=6)
    notes = [
        "The paper's figures come from far longer training than most studies give a trial; the share "
        "of their training sequences (steps x batch) is stated beside each. 'Best' here is the best "
        "seed by its test value, not by validation as the authors chose."
    ]
    paper = figures[0]
    detach = [v.p_detach for v in spec.variants if v.p_detach > 0]
    differences = []
    if spec.model.hidden_size != paper.hidden_size:
        differences.append(f"hidden size {spec.model.hidden_size} (theirs {paper.hidden_size})")
    if detach and detach != [paper.p_detach]:
        differences.append(f"p_detach {', '.join(f'{p:g}' for p in detach)} (theirs {paper.p_detach:g})")
    if differences:
        notes.append("This study differs from the authors' settings: " + "; ".join(differences) + ".")
    if any("NOT full MNIST" in data for data in summary.data):
        notes.append("This study ran on a subset of MNIST: its numbers are not comparable.")
    return [
        "<h2>The paper's figures beside this study</h2>",
        table,
        *(f"<p class=note>{esc(n)}</p>" for n in notes),
    ]


def _paper_row(
    figure: PaperFigure, spec: StudySpec, rows: Sequence[TrialRow], summary: RobustnessSummary
) -> list[object]:
    # the paper's "vanilla" is p_detach 0, its "h-detach" any p_detach > 0, whatever the variants are called
    variants = [
        v.name
        for v in spec.variants
        if figure.variant == "both" or (v.p_detach > 0) == (figure.variant == "h-detach")
    ]
    ours = "; ".join(_ours(name, figure.lr, spec, rows, summary) for name in variants) or "no such variant"
    share = spec.budget.steps * spec.budget.batch_size / figure.sequences
    budget = (
        f"{spec.budget.steps:,} steps of batch {spec.budget.batch_size} "
        f"({100 * share:.3g}% of their training sequences)"
    )
    theirs = f"{figure.steps:,} steps of batch {figure.batch_size}, lr {figure.lr:g} ({figure.budget})"
    return [figure.variant, figure.reported, figure.selection, figure.source, theirs, ours, budget]


def _ours(
    variant: str, paper_lr: float, spec: StudySpec, rows: Sequence[TrialRow], summary: RobustnessSummary
) -> str:
    """The variant's test accuracy at the paper's learning rate (or at its best one) over seeds."""
    stats = next((v for v in summary.variants if v.name == variant), None)
    lr = paper_lr if paper_lr in spec.lr_values() else (stats.best_lr if stats else None)
    if lr is None:
        return f"{variant}: no result yet"
    chosen = [r for r in rows if r.variant == variant and r.lr == lr and r.state == "done" and not r.diverged]
    values = sorted(
        v
        for r in chosen
        if (v := (r.best_val if spec.selection == "best_val" else r.final).get("accuracy")) is not None
    )
    where = f"lr {lr_text(lr)}" + ("" if lr == paper_lr else " (its best; the paper's is not in the grid)")
    if not values:
        return f"{variant} at {where}: no finished run"
    seeds = f"{len(values)} seed" + ("" if len(values) == 1 else "s")
    median = _pct1(statistics.median(values))
    return f"{variant} at {where}: best {_pct1(values[-1])}, median {median} of {seeds}"


def _pct1(value: float) -> str:
    return f"{100 * value:.1f}%"


def trials_table(rows: Sequence[TrialRow]) -> str:
    headers = [
        "cell", "variant", "p_detach", "lr", "seed", "state", "attempts", "metric", "metric from",
        "steps to threshold", "diverged", "error",
    ]  # fmt: skip
    return _table(
        headers,
        (_trial_row(r) for r in sorted(rows, key=lambda r: r.cell)),
        text_columns=2,
        row_class="trial",
    )


def _trial_row(r: TrialRow) -> list[object]:
    return [
        r.cell, r.variant, _num(r.p_detach, "g"), lr_text(r.lr), r.seed, r.state, r.attempts, _num(r.metric),
        r.metric_from if r.state == "done" else DASH,
        DASH if r.steps_to_threshold is None else r.steps_to_threshold,
        "yes" if r.diverged else "", _error(r.error),
    ]  # fmt: skip


def _error(error: str | None) -> object:
    if not error:
        return ""
    first_line = error.strip().splitlines()[0] if error.strip() else error
    if len(error) <= ERROR_PREVIEW and "\n" not in error.strip():
        return error
    preview = first_line[:ERROR_PREVIEW] + ("…" if len(first_line) > ERROR_PREVIEW else "")
    return _Html(f"<details><summary>{esc(preview)}</summary><pre>{esc(error)}</pre></details>")
