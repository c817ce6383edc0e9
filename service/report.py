"""A study's report: one self-contained HTML page of its robustness summary, plots and trials.

Every string from the spec, the rows or the caller is escaped (study names are user input).
Cells are built as text and escaped by `_table`; only `_Html` values pass through as markup.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Callable, Iterable, Sequence

from service.plots import PLOT_NAMES
from studies.paper import PaperFigure, paper_figures
from studies.results import TrialRow
from studies.robustness import Comparison, LRStats, RobustnessSummary, SeedValue, VariantSummary
from studies.spec import StudySpec

DASH = "–"  # an undefined value
ERROR_PREVIEW = 80  # characters of a trial's error shown before "details"
SELECTION_TEXT = {
    "final": "final: each trial's metric is the final model's test value",
    "best_val": "best validation: each trial's metric is the test value of its model with the best "
    "validation value (the step is in the trials table)",
}

PLOT_CAPTIONS = {
    "metric_vs_lr": "Test metric per seed (dots; of the model the study's selection names), mean per "
    "learning rate with its 95% t-interval over the seeds that did not diverge; diverged runs as ×.",
    "success_vs_lr": "Success rate per learning rate with its Wilson 95% interval; the dotted line is the "
    "robust level.",
    "learning_curves": "Validation metric during training, one panel per learning rate, one line per seed.",
    "steps_to_threshold": "Steps each successful seed needed to reach the threshold, and their median.",
}

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
       color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; } tr.trial td:last-child { text-align: left; }
p.note { color: #555; max-width: 60em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; } details pre { white-space: pre-wrap; max-width: 50em; }
"""


class _Html(str):
    """Markup built here from escaped parts: `_table` passes it through unescaped."""


def render_report(
    study_id: int,
    study_name: str,
    status: str,
    spec: StudySpec,
    rows: Sequence[TrialRow],
    summary: RobustnessSummary,
    plot_url: Callable[[str, str], str],
) -> str:
    """The study's report as a complete HTML5 page (inline CSS, no scripts, no external assets)."""
    sections = [
        _header(study_id, study_name, status, spec, summary),
        "<h2>Variants</h2>",
        _variant_table(summary),
        "<h2>Per learning rate</h2>",
        *(_lr_table(variant) for variant in summary.variants),
        "<h2>Comparison with the baseline</h2>",
        _comparison_table(summary),
        *_transfer_section(summary),
        *_paper_section(spec, rows, summary),
        "<h2>Plots</h2>",
        *(_plot(name, plot_url) for name in PLOT_NAMES),
        "<h2>Trials</h2>",
        _trials_table(rows),
    ]
    title = _e(f"{study_name} – study {study_id}")
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# -- formatting ----------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float | None, fmt: str = ".4g") -> str:
    return DASH if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.0f}%"


def _with_ci(value: str, low: str, high: str) -> str:
    return value if value == DASH or low == DASH else f"{value} [{low}, {high}]"


def _rate(rate: float | None, low: float | None, high: float | None) -> str:
    return _with_ci(_pct(rate), _pct(low), _pct(high))


def _lr(value: float | None) -> str:
    return _num(value, ".3g")


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], text_columns: int = 1, row_class: str = ""
) -> str:
    """An HTML table, its first `text_columns` columns left-aligned; cells escaped unless _Html."""
    head = "".join(f"<th{_align(i, text_columns)}>{_e(h)}</th>" for i, h in enumerate(headers))
    tr = f'<tr class="{row_class}">' if row_class else "<tr>"
    body = [
        tr
        + "".join(
            f"<td{_align(i, text_columns)}>{cell if isinstance(cell, _Html) else _e(cell)}</td>"
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


# -- sections ------------------------------------------------------------------------------------


def _header(study_id: int, name: str, status: str, spec: StudySpec, summary: RobustnessSummary) -> str:
    task = spec.task.name if spec.task.length is None else f"{spec.task.name}, T={spec.task.length}"
    relation = "≥" if summary.higher_is_better else "≤"
    completeness = (
        f"{summary.done} of {summary.cells_total} cells done, {summary.failed} failed, "
        f"{summary.pending} pending"
    )
    if summary.cancelled:
        completeness += f", {summary.cancelled} cancelled"
    lrs = ", ".join(_lr(lr) for lr in spec.lr_values())
    facts = {
        "Status": status,
        "Task": task,
        "Completeness": completeness + ("" if summary.complete else " (partial: numbers may change)"),
        "Success": f"test {summary.metric} {relation} {summary.threshold:g}",
        "Model selection": SELECTION_TEXT[spec.selection],
        "Variants": ", ".join(f"{v.name} (p_detach {v.p_detach:g})" for v in spec.variants),
        "Baseline": summary.baseline,
        "Learning rates": lrs,
        "Seeds": ", ".join(str(s) for s in spec.seeds),
        "Budget": f"{spec.budget.steps} steps, batch {spec.budget.batch_size}, "
        f"hidden size {spec.model.hidden_size}",
        "Data": "; ".join(summary.data) or "not reported yet (no trial finished)",
    }
    items = "\n".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items())
    note = (
        "A diverged run is the worst outcome: a failure in every success rate, the worst seed of its "
        "learning rate, and a loss in its pair (P(better), the rank test, the success difference); "
        "means, medians and the mean difference are over the runs that did not diverge. The best "
        "learning rate has the highest success rate, then the best mean. Failed trials only appear in "
        f"the counts. A learning rate is robust when its success rate is at least {summary.robust_level:g}, "
        "and robust with confidence when the lower end of its Wilson interval is. Intervals are 95%: "
        "Wilson for success rates and P(better), t-intervals for means and the mean difference."
    )
    caveats = "".join(f"<li>{_e(c)}</li>" for c in summary.caveats)
    limits = (
        f"<p><strong>What these numbers can support</strong></p>\n<ul>{caveats}</ul>\n" if caveats else ""
    )
    return (
        f"<h1>{_e(name)}</h1>\n<p>Study {study_id}</p>\n<dl class=facts>\n{items}\n</dl>\n"
        f"{limits}<p class=note>{_e(note)}</p>"
    )


def _variant_table(summary: RobustnessSummary) -> str:
    headers = [
        "variant", "p_detach", "runs", "diverged", "failed", "success rate [95% CI]", "best lr",
        "mean at best lr", "worst seed at best lr", "robust lr range", "width (decades)",
        "robust with confidence", "success AUC", "expected best, k=1", "expected best, k=max",
    ]  # fmt: skip
    return _table(headers, (_variant_row(v) for v in summary.variants))


def _variant_row(v: VariantSummary) -> list[object]:
    robust = DASH
    if v.robust_lr_low is not None:
        robust = f"{_lr(v.robust_lr_low)} – {_lr(v.robust_lr_high)}"
        robust += "" if v.robust_contiguous else " (with gaps)"
    confident = DASH
    if v.confidently_robust_lr_low is not None:
        confident = f"{_lr(v.confidently_robust_lr_low)} – {_lr(v.confidently_robust_lr_high)}"
    expected = v.expected_max_k
    k_max = f"{_num(expected[-1])} (k={len(expected)})" if expected else DASH
    return [
        v.name, _num(v.p_detach, "g"), v.runs, v.diverged, v.failed,
        _rate(v.success_rate, v.success_ci_low, v.success_ci_high), _lr(v.best_lr), _num(v.best_mean),
        _seed(v.worst_seed_at_best_lr), robust, _num(v.robust_width_decades, ".2f"), confident,
        _num(v.success_auc, ".2f"),
        _num(expected[0]) if expected else DASH, k_max,
    ]  # fmt: skip


def _seed(worst: SeedValue | None) -> str:
    if worst is None:
        return DASH
    return f"diverged (seed {worst.seed})" if worst.diverged else f"{_num(worst.value)} (seed {worst.seed})"


def _lr_table(variant: VariantSummary) -> str:
    headers = [
        "lr", "seeds run", "diverged", "failed", "mean [95% CI]", "median", "std", "worst",
        "success rate [95% CI]", "median steps to threshold",
    ]  # fmt: skip
    return f"<h3>{_e(variant.name)}</h3>\n" + _table(headers, (_lr_row(s) for s in variant.lrs))


def _lr_row(s: LRStats) -> list[object]:
    return [
        _lr(s.lr), s.seeds_run, s.diverged, s.failed,
        _with_ci(_num(s.mean), _num(s.mean_ci_low), _num(s.mean_ci_high)), _num(s.median), _num(s.std),
        "diverged" if s.worst_diverged else _num(s.worst),
        _rate(s.success_rate, s.success_ci_low, s.success_ci_high),
        _num(s.median_steps_to_threshold, ".0f"),
    ]  # fmt: skip


def _comparison_table(summary: RobustnessSummary) -> str:
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
    return f"{table}\n<p class=note>{note}</p>"


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


def _transfer_section(summary: RobustnessSummary) -> list[str]:
    if not summary.transfer:
        return []
    headers = ["variant", "lr", "tested at T", "runs", "mean", "median", "min", "max"]
    rows = (
        [t.variant, _lr(t.lr), t.T, t.runs, _num(t.mean, ".3g"), _num(t.median, ".3g"), _num(t.min, ".3g"),
         _num(t.max, ".3g")]
        for t in summary.transfer
    )  # fmt: skip
    note = (
        "Accuracy of each trial's model (the one its metric comes from) on copying test sets at other "
        "delays; diverged runs are left out."
    )
    return ["<h2>Transfer copying</h2>", _table(headers, rows), f"<p class=note>{_e(note)}</p>"]


def _paper_section(spec: StudySpec, rows: Sequence[TrialRow], summary: RobustnessSummary) -> list[str]:
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
        *(f"<p class=note>{_e(n)}</p>" for n in notes),
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
    where = f"lr {_lr(lr)}" + ("" if lr == paper_lr else " (its best; the paper's is not in the grid)")
    if not values:
        return f"{variant} at {where}: no finished run"
    seeds = f"{len(values)} seed" + ("" if len(values) == 1 else "s")
    median = _pct1(statistics.median(values))
    return f"{variant} at {where}: best {_pct1(values[-1])}, median {median} of {seeds}"


def _pct1(value: float) -> str:
    return f"{100 * value:.1f}%"


def _plot(name: str, plot_url: Callable[[str, str], str]) -> str:
    caption = PLOT_CAPTIONS.get(name, name)
    svg, png = _e(plot_url(name, "svg")), _e(plot_url(name, "png"))
    return (
        f'<figure>\n<img src="{svg}" alt="{_e(name.replace("_", " "))} plot">\n'
        f'<figcaption>{_e(caption)} <a href="{png}">PNG</a></figcaption>\n</figure>'
    )


def _trials_table(rows: Sequence[TrialRow]) -> str:
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
        r.cell, r.variant, _num(r.p_detach, "g"), _lr(r.lr), r.seed, r.state, r.attempts, _num(r.metric),
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
    return _Html(f"<details><summary>{_e(preview)}</summary><pre>{_e(error)}</pre></details>")
