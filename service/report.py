"""A study's report: one HTML page of its robustness summary, plots and trials.

Served, its links (plots, the trials' CSV, the summary's JSON) are relative to the report's own URL
(`/studies/{id}/report`), so a saved copy beside its files, a path prefix behind a proxy, and
clients that send a token with every read all resolve them. `standalone_report` writes one file
with everything inlined as data: URIs, for reading without the server.

Every string from the spec, the rows or the caller is escaped (study names are user input).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.orm import Session, sessionmaker

from deployment.backend import Backend
from service.deps import load
from service.plots import PLOT_NAMES, render_plot
from service.report_tables import (
    comparison_table,
    esc,
    lr_table,
    lr_text,
    paper_section,
    transfer_section,
    trials_table,
    variant_table,
)
from studies import queue
from studies.results import (
    CurvePoint,
    TrialRow,
    curve_points,
    flat_trial_rows,
    job_result,
    study_summary,
    to_csv,
    trial_row,
)
from studies.robustness import RobustnessSummary
from studies.spec import StudySpec

# the report's links, relative to /studies/{id}/report (the routes in service.routes.reports)
TRIALS_CSV = "trials.csv"
SUMMARY_JSON = "summary"


def relative_plot_url(name: str, fmt: str) -> str:
    return f"plots/{name}.{fmt}"


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
    "learning_curves": "Validation metric during training, one panel per learning rate: per variant the "
    "mean over seeds (thick) and their range (band), each seed a thin line with its own dashes and marker.",
    "steps_to_threshold": "Steps each successful seed needed to reach the threshold, and their median; "
    "k/n above each learning rate: how many of the seeds that ran reached it (failed trials named).",
    "paired_difference": "Each variant minus the baseline per learning rate, paired on seed (positive: the "
    "variant is better): each pair (dots), their mean and its 95% t-interval; an interval from 2 or 3 "
    "pairs is dashed (unreliable); pairs a divergence decided on the edges.",
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


def render_report(
    study_id: int,
    study_name: str,
    status: str,
    spec: StudySpec,
    rows: Sequence[TrialRow],
    summary: RobustnessSummary,
    plot_url: Callable[[str, str], str] = relative_plot_url,
    inline_plots: Mapping[str, bytes] | None = None,
) -> str:
    """The study's report as a complete HTML5 page (inline CSS, no scripts).

    Plots are <img> of `plot_url(name, "svg")` with a link to the PNG, and the trials' CSV and the
    summary's JSON are linked relative to the report; with `inline_plots` (name -> SVG bytes) the
    plots, the CSV and the JSON are all data: URIs instead, and the page needs nothing else.
    """
    if inline_plots is None:
        plots = [_plot(name, plot_url(name, "svg"), plot_url(name, "png")) for name in PLOT_NAMES]
        csv_link, json_link = TRIALS_CSV, SUMMARY_JSON
    else:
        plots = [_plot(name, _data_uri("image/svg+xml", inline_plots[name])) for name in PLOT_NAMES]
        csv_link = _data_uri("text/csv;charset=utf-8", to_csv(flat_trial_rows(rows)).encode())
        json_link = _data_uri("application/json", summary.model_dump_json().encode())
    downloads = (
        f'<p class=downloads>Data: <a href="{esc(csv_link)}" download="study-{study_id}-trials.csv">'
        f'trials (CSV)</a> · <a href="{esc(json_link)}" download="study-{study_id}-summary.json">'
        "summary (JSON)</a></p>"
    )
    sections = [
        _header(study_id, study_name, status, spec, summary),
        downloads,
        "<h2>Variants</h2>",
        variant_table(summary),
        "<h2>Per learning rate</h2>",
        *(lr_table(variant) for variant in summary.variants),
        "<h2>Comparison with the baseline</h2>",
        comparison_table(summary),
        *transfer_section(summary),
        *paper_section(spec, rows, summary),
        "<h2>Plots</h2>",
        *plots,
        "<h2>Trials</h2>",
        trials_table(rows),
    ]
    title = esc(f"{study_name} – study {study_id}")
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


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
    lrs = ", ".join(lr_text(lr) for lr in spec.lr_values())
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
    items = "\n".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items())
    note = (
        "A diverged run is the worst outcome: a failure in every success rate, the worst seed of its "
        "learning rate, and a loss in its pair (P(better), the rank test, the success difference); "
        "means, medians and the mean difference are over the runs that did not diverge. The best "
        "learning rate has the highest success rate, then the best mean. Failed trials only appear in "
        f"the counts. A learning rate is robust when its success rate is at least {summary.robust_level:g}, "
        "and robust with confidence when the lower end of its Wilson interval is. Intervals are 95%: "
        "Wilson for success rates and P(better), t-intervals for means and the mean difference."
    )
    caveats = "".join(f"<li>{esc(c)}</li>" for c in summary.caveats)
    limits = (
        f"<p><strong>What these numbers can support</strong></p>\n<ul>{caveats}</ul>\n" if caveats else ""
    )
    return (
        f"<h1>{esc(name)}</h1>\n<p>Study {study_id}</p>\n<dl class=facts>\n{items}\n</dl>\n"
        f"{limits}<p class=note>{esc(note)}</p>"
    )


def _plot(name: str, src: str, png: str | None = None) -> str:
    caption = esc(PLOT_CAPTIONS.get(name, name))
    if png is not None:
        caption += f' <a href="{esc(png)}">PNG</a>'
    return (
        f'<figure>\n<img src="{esc(src)}" alt="{esc(name.replace("_", " "))} plot">\n'
        f"<figcaption>{caption}</figcaption>\n</figure>"
    )


def _data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# -- reading a study -----------------------------------------------------------------------------


def study_results(
    factory: sessionmaker[Session], study_id: int, spec: StudySpec
) -> tuple[list[TrialRow], dict[int, list[CurvePoint]]]:
    """The study's trial rows and each cell's learning curve, as its jobs stand."""
    jobs = queue.list_jobs(factory, study_id)
    rows = [trial_row(job, spec.success.metric, spec.selection) for job in jobs]
    return rows, {job.cell_index: curve_points(job_result(job)) for job in jobs}


def standalone_report(backend: Backend, study_id: int, robust_level: float = 0.8) -> str:
    """The study's report as one self-contained HTML file: plots (SVG), the trials' CSV and the
    summary's JSON inlined as data: URIs, so it opens anywhere without the server (for
    `hdetach report`). Raises NotFound for an unknown study, Conflict for an unreadable spec."""
    study, spec = load(backend, study_id)
    rows, curves = study_results(backend.factory, study.id, spec)
    summary = study_summary(spec, rows, robust_level=robust_level)
    plots = {name: render_plot(name, "svg", spec, rows, curves, summary) for name in PLOT_NAMES}
    return render_report(study.id, study.name, study.status, spec, rows, summary, inline_plots=plots)
