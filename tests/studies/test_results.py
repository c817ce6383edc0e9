"""A job's row: which model's test value the study's selection reads, and what it is called."""

from __future__ import annotations

import json

import pytest

from service.report import render_report
from studies.db.models import Job
from studies.results import study_summary, trial_row
from studies.spec import StudySpec
from studies.tracking import result_closing

SPEC = {
    "name": "selection",
    "task": {"name": "copying", "T": 10},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [1e-3],
    "seeds": [1],
    "budget": {"steps": 400, "eval_every": 100},
    "success": {"metric": "accuracy", "threshold": 0.9},
}
# the final model is worse than the best-validation one (at step 200); vanilla diverged at 350
RESULTS = [
    {
        "status": "diverged",
        "diverged_at": 350,
        "final": {},
        "best_val": {"accuracy": 0.7},
        "best_val_step": 300,
    },
    {"status": "completed", "final": {"accuracy": 0.6}, "best_val": {"accuracy": 0.95}, "best_val_step": 200},
]


def _jobs() -> list[Job]:
    spec = StudySpec.model_validate(SPEC)
    return [
        Job(
            cell_index=cell.index,
            variant=cell.variant,
            p_detach=cell.p_detach,
            lr=cell.lr,
            seed=cell.seed,
            state="done",
            attempts=1,
            result_json=json.dumps(result),
        )
        for cell, result in zip(spec.cells(), RESULTS, strict=True)
    ]


def test_spec_selection_defaults_to_final_and_takes_only_the_two_names():
    assert StudySpec.model_validate(SPEC).selection == "final"
    assert StudySpec.model_validate({**SPEC, "selection": "best_val"}).selection == "best_val"
    with pytest.raises(ValueError, match="selection"):
        StudySpec.model_validate({**SPEC, "selection": "best"})


def test_rows_carry_both_and_the_metric_of_the_chosen_model_with_its_label():
    diverged, completed = _jobs()
    final = trial_row(completed, "accuracy")
    assert (final.metric, final.metric_from, final.selection) == (0.6, "final", "final")
    best = trial_row(completed, "accuracy", "best_val")
    assert (best.metric, best.metric_from) == (0.95, "test at best validation (step 200)")
    assert (
        best.final == {"accuracy": 0.6} and best.best_val == {"accuracy": 0.95} and best.best_val_step == 200
    )
    # a diverged trial keeps its best from before it diverged, and is still diverged
    row = trial_row(diverged, "accuracy", "best_val")
    assert row.diverged and row.diverged_at == 350
    assert (row.metric, row.metric_from) == (0.7, "test at best validation (step 300)")
    # a result without a best-validation model (never evaluated) has no metric under best_val
    empty = Job(**{c: getattr(completed, c) for c in ("cell_index", "variant", "p_detach", "lr", "seed")})
    empty.state, empty.attempts, empty.result_json = "done", 1, json.dumps({"final": {"accuracy": 0.6}})
    none = trial_row(empty, "accuracy", "best_val")
    assert none.metric is None and none.metric_from == "test at best validation (none recorded)"


@pytest.mark.parametrize(("selection", "expected"), [("final", 0.6), ("best_val", 0.95)])
def test_summary_uses_the_chosen_metric_and_still_counts_divergence(selection, expected):
    spec = StudySpec.model_validate({**SPEC, "selection": selection})
    rows = [trial_row(job, "accuracy", spec.selection) for job in _jobs()]
    summary = study_summary(spec, rows, n_boot=50)
    by_variant = {v.name: v for v in summary.variants}
    assert by_variant["h-detach"].lrs[0].mean == pytest.approx(expected)
    vanilla = by_variant["vanilla"].lrs[0]
    assert (
        vanilla.diverged == 1 and vanilla.n_values == 0 and vanilla.successes == 0
    )  # its best_val value does not count
    closing = result_closing(1, "accuracy", RESULTS[1], selection)
    assert closing.value == pytest.approx(expected)
    assert result_closing(1, "accuracy", RESULTS[0], selection).value is None  # diverged: FAIL


def test_report_says_which_model_the_metric_comes_from():
    spec = StudySpec.model_validate({**SPEC, "selection": "best_val"})
    rows = [trial_row(job, "accuracy", spec.selection) for job in _jobs()]
    page = render_report(1, "s", "done", spec, rows, study_summary(spec, rows, n_boot=50), lambda n, f: "")
    assert "metric from" in page and "test at best validation (step 200)" in page
    assert "best validation: each trial&#x27;s metric is the test value" in page
    final_spec = StudySpec.model_validate(SPEC)
    rows = [trial_row(job, "accuracy") for job in _jobs()]
    page = render_report(
        1, "s", "done", final_spec, rows, study_summary(final_spec, rows, n_boot=50), lambda n, f: ""
    )
    assert "final: each trial&#x27;s metric is the final model&#x27;s test value" in page
