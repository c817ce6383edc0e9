"""The trainer: pack equals alone, determinism, resume, divergence, success and annealing."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from studies.tasks import make_task
from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
from studies.training.config import (
    PAPER_ANNEAL_EPOCHS,
    PAPER_COPYING_EPOCHS,
    PAPER_COPYING_P_OFF_FRACTION,
    PAPER_MNIST_EPOCHS,
    PAPER_MNIST_P_OFF_FRACTION,
)
from studies.training.sections import BudgetSpec, ModelSpec, SuccessRule, SuccessSpec, TrainingOptions

SMALL = TrainingConfig(
    task=TaskConfig(name="copying", T=4, n_val=200, n_test=400),
    model=ModelSpec(hidden_size=8),
    budget=BudgetSpec(steps=24, batch_size=8, eval_every=8, eval_batch_size=256),
)
TRIALS = [
    TrialParams(variant="vanilla", p_detach=0.0, lr=1e-3, seed=1),
    TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=2),
    TrialParams(variant="h-detach", p_detach=0.5, lr=3e-3, seed=3, clip_norm=None),
]


def _curves(records):
    return [[point for point in r.curve] for r in records]


def _close(a: dict, b: dict, tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


def test_trial_in_a_pack_equals_the_trial_alone():
    config = SMALL.model_copy(update={"dtype": "float64"})
    packed = PackTrainer(config, TRIALS).run()
    for k, trial in enumerate(TRIALS):
        alone = PackTrainer(config, [trial]).run()[0]
        assert len(alone.curve) == len(packed[k].curve) == 3
        for p, q in zip(alone.curve, packed[k].curve, strict=True):
            assert _close(p, q, 1e-9), (p, q)
        assert _close(alone.final, packed[k].final, 1e-9)


def test_same_seed_same_result_and_different_seed_differs():
    first = PackTrainer(SMALL, TRIALS[:2]).run()
    second = PackTrainer(SMALL, TRIALS[:2]).run()
    assert _curves(first) == _curves(second) and [r.final for r in first] == [r.final for r in second]
    other = PackTrainer(SMALL, [TRIALS[0].model_copy(update={"seed": 99})]).run()
    assert other[0].curve[-1]["train_loss"] != first[0].curve[-1]["train_loss"]


def test_resume_from_checkpoint_ends_where_an_uninterrupted_run_ends(tmp_path):
    path = tmp_path / "pack.ckpt"
    uninterrupted = PackTrainer(SMALL, TRIALS).run()
    interrupted = PackTrainer(SMALL, TRIALS).run(checkpoint_path=path, max_steps=8)
    assert all(r.status == "interrupted" and r.steps_run == 8 for r in interrupted)
    resumed = PackTrainer.from_checkpoint(path).run(checkpoint_path=path)
    assert _curves(resumed) == _curves(uninterrupted)
    assert [r.final for r in resumed] == [r.final for r in uninterrupted]
    assert all(r.status == "completed" for r in resumed)


def test_divergence_is_an_outcome_and_the_rest_of_the_pack_goes_on():
    trials = [TRIALS[0], TrialParams(variant="vanilla", p_detach=0.0, lr=1e38, seed=4, clip_norm=None)]
    records = PackTrainer(SMALL, trials).run()
    healthy, diverged = records
    assert (
        diverged.status == "diverged"
        and diverged.diverged_at is not None
        and diverged.diverged_at <= SMALL.budget.steps
    )
    assert diverged.final == {}
    assert healthy.status == "completed" and healthy.steps_run == SMALL.budget.steps
    alone = PackTrainer(SMALL, [TRIALS[0]]).run()[0]
    assert all(math.isfinite(v) for v in healthy.final.values())
    assert _close(alone.final, healthy.final, 1e-5)


def test_each_trial_is_timed_only_while_it_trains(monkeypatch):
    """A trial's wall_time_s is its own: a pack-mate that diverged early stops counting then."""
    import studies.training.trainer as trainer_module

    clock = itertools.count()  # one second per reading: a step or an evaluation takes 1 s
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    trials = [TRIALS[0], TrialParams(variant="vanilla", p_detach=0.0, lr=1e38, seed=4, clip_norm=None)]
    healthy, diverged = PackTrainer(SMALL, trials).run()
    evaluations = SMALL.budget.steps // SMALL.budget.eval_every
    assert healthy.wall_time_s == SMALL.budget.steps + evaluations
    assert diverged.status == "diverged"
    # the steps it ran and the evaluations it was part of, nothing after
    assert diverged.wall_time_s == diverged.steps_run + len(diverged.curve) < healthy.wall_time_s


def test_steps_to_threshold_and_stop_on_success():
    # accuracy >= 0 always holds, so the first evaluation records success
    config = SMALL.model_copy(update={"success": SuccessSpec(threshold=0.0, stop_on_success=True)})
    record = PackTrainer(config, TRIALS[:1]).run()[0]
    assert record.steps_to_threshold == SMALL.budget.eval_every
    assert record.status == "succeeded" and record.steps_run == SMALL.budget.eval_every
    assert record.final  # a trial that stopped on success is still tested


def test_p_off_for_the_whole_run_equals_vanilla():
    config = SMALL.model_copy(update={"training": TrainingOptions(p_off_fraction=1.0)})
    detach = PackTrainer(config, [TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=5)]).run()[0]
    vanilla = PackTrainer(config, [TrialParams(variant="h-detach", p_detach=0.0, lr=1e-2, seed=5)]).run()[0]
    assert detach.curve == vanilla.curve
    with_p = PackTrainer(SMALL, [TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=5)]).run()[0]
    assert with_p.curve != vanilla.curve


def test_transfer_copying_tests_the_final_and_the_best_validation_models_at_other_delays():
    # transfer_T includes the training delay itself: those values must be the plain test results
    task = SMALL.task.model_copy(update={"transfer_T": [4, 8, 12]})
    config = SMALL.model_copy(update={"task": task, "dtype": "float64"})
    trainer = PackTrainer(config, TRIALS[:2])
    records = trainer.run()
    for k, record in enumerate(records):
        assert set(record.transfer) == set(record.best_val_transfer) == {"4", "8", "12"}
        assert record.transfer["4"] == record.final
        assert record.best_val_transfer["4"] == record.best_val
        # the final weights are in place after run(): T=8 evaluated directly gives the same value
        direct = trainer.evaluate("test", make_task("copying", T=8, n_val=200, n_test=400))
        assert record.transfer["8"]["accuracy"] == pytest.approx(float(direct["accuracy"][k]), abs=1e-12)
        assert "copying, T=4" in record.data


def test_transfer_T_and_train_size_belong_to_copying_only():
    with pytest.raises(ValueError, match="transfer_T applies to copying"):
        TaskConfig(name="adding", T=10, transfer_T=[20])
    with pytest.raises(ValueError, match="train_size applies to copying"):
        TaskConfig(name="pixel_mnist", train_size=10)
    with pytest.raises(ValueError, match="distinct"):
        TaskConfig(name="copying", T=10, transfer_T=[20, 20])


def test_a_fixed_training_set_draws_every_batch_from_it():
    config = SMALL.model_copy(update={"task": SMALL.task.model_copy(update={"train_size": 3})})
    trainer = PackTrainer(config, TRIALS[:1])
    x, _ = trainer.trial_tasks[0].train_batch(64, torch.Generator().manual_seed(0))  # (T+20, 64, 1)
    assert len({tuple(x[:10, b, 0].tolist()) for b in range(64)}) <= 3


@pytest.mark.parametrize(
    ("field", "value"), [("lr", -1.0), ("lr", 0.0), ("p_detach", 1.5), ("p_detach", -0.1), ("seed", -1)]
)
def test_bad_trial_params_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        TrialParams(**{field: value})


def test_vanilla_with_p_detach_is_rejected():
    with pytest.raises(ValueError, match="vanilla"):
        TrialParams(variant="vanilla", p_detach=0.5)


@pytest.mark.parametrize(
    ("fraction", "on"),
    [
        (0.2, [True] * 8 + [False] * 2),  # round(0.2 * 10) = 2: steps 8 and 9 (0-based) run without
        (0.0, [True] * 10),
        (1.0, [False] * 10),
        (0.34, [True] * 7 + [False] * 3),  # round(3.4) = 3
    ],
)
def test_detach_schedule_on_ten_steps(fraction, on):
    config = SMALL.model_copy(
        update={
            "budget": SMALL.budget.model_copy(update={"steps": 10, "eval_every": 5}),
            "training": TrainingOptions(p_off_fraction=fraction),
        }
    )
    assert [config.detach_on(step) for step in range(10)] == on
    # and the trainer draws masks exactly on those steps (p_detach 1: every time step blocked)
    trainer = PackTrainer(config, [TrialParams(variant="h-detach", p_detach=1.0, lr=1e-3, seed=1)])
    drawn: list[bool] = []
    forward = trainer.model.forward

    def spy(x, mask=None):
        if trainer.model.training:
            drawn.append(bool(mask.any()))
        return forward(x, mask)

    trainer.model.forward = spy
    trainer.run()
    assert drawn == on


@pytest.mark.parametrize(
    ("epochs", "fraction"),
    [(PAPER_COPYING_EPOCHS, PAPER_COPYING_P_OFF_FRACTION), (PAPER_MNIST_EPOCHS, PAPER_MNIST_P_OFF_FRACTION)],
)
@pytest.mark.parametrize("per_epoch", [1, 7, 1000])
def test_detach_schedule_is_the_authors_epoch_rule_in_steps(epochs, fraction, per_epoch):
    """copying.py / pixelmnist.py: `for epoch in range(epochs): if epoch > epochs - 40: p off`."""
    config = TrainingConfig(
        budget=BudgetSpec(steps=epochs * per_epoch), training=TrainingOptions(p_off_fraction=fraction)
    )
    authors = [not (step // per_epoch > epochs - PAPER_ANNEAL_EPOCHS) for step in range(config.budget.steps)]
    assert [config.detach_on(step) for step in range(config.budget.steps)] == authors
    assert authors.count(False) == 39 * per_epoch  # the last 39 epochs, as their loop counts from 0


# -- best-validation model selection -------------------------------------------------------------
# Validation values scripted per evaluation (steps 4, 8, ..., 24) for a pack of two trials, and the
# steps the selection must pick: the first best (a tie keeps the earlier), never a model whose
# validation metrics are not all finite (trial 1's 0.9 / 0.05 at step 16 comes with a NaN).
NAN = math.nan
SCRIPTS = {
    "accuracy": (
        [[0.1, 0.5, 0.5, 0.3, 0.4, 0.2], [0.2, 0.1, 0.3, 0.9, 0.6, 0.6]],
        [[1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, NAN, 1.0, 1.0]],  # loss
        (8, 20),
    ),
    "loss": (
        [[0.9, 0.4, 0.4, 0.6, 0.5, 0.7], [0.8, 0.9, 0.5, 0.05, 0.2, 0.2]],
        [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, NAN, 0.5, 0.5]],  # accuracy
        (8, 20),
    ),
}


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_best_validation_model_is_kept_and_tested(metric):
    selected, other, expected_steps = SCRIPTS[metric]
    other_name = "loss" if metric == "accuracy" else "accuracy"
    config = SMALL.model_copy(
        update={
            "budget": SMALL.budget.model_copy(update={"eval_every": 4}),
            "success": SuccessSpec(metric=metric),
        }
    )
    trainer = PackTrainer(config, TRIALS[:2])
    fingerprints: dict[int, list[float]] = {}  # step -> each trial's weights, summed

    def fingerprint():
        return torch.stack([p.detach().flatten(1).sum(1) for p in trainer.model.parameters()]).sum(0)

    def fake_evaluate(split, task=None):
        if split == "test":  # the "test metrics" identify the weights being tested
            fp = fingerprint()
            return {"accuracy": fp, "loss": fp}
        i = len(fingerprints)
        fingerprints[trainer.step] = fingerprint().tolist()
        return {
            metric: torch.tensor([selected[0][i], selected[1][i]], dtype=torch.float64),
            other_name: torch.tensor([other[0][i], other[1][i]], dtype=torch.float64),
        }

    trainer.evaluate = fake_evaluate
    records = trainer.run()
    assert sorted(fingerprints) == [4, 8, 12, 16, 20, 24]
    for k, (record, step) in enumerate(zip(records, expected_steps, strict=True)):
        assert record.best_val_step == step
        assert record.best_val_value == selected[k][step // 4 - 1]
        assert record.best_val == {"accuracy": fingerprints[step][k], "loss": fingerprints[step][k]}
        assert record.final == {"accuracy": fingerprints[24][k], "loss": fingerprints[24][k]}
        assert record.best_val != record.final  # the weights moved after the best step
    assert torch.allclose(fingerprint(), torch.tensor([fingerprints[24][k] for k in range(2)]))


def test_best_validation_in_a_pack_equals_alone_and_survives_resume(tmp_path):
    config = SMALL.model_copy(update={"dtype": "float64", "eval_every": 4})
    packed = PackTrainer(config, TRIALS).run()
    for k, trial in enumerate(TRIALS):
        alone = PackTrainer(config, [trial]).run()[0]
        assert packed[k].best_val_step == alone.best_val_step is not None
        assert packed[k].best_val_value == pytest.approx(alone.best_val_value, abs=1e-9)
        assert _close(alone.best_val, packed[k].best_val, 1e-9)
    path = tmp_path / "pack.ckpt"
    PackTrainer(config, TRIALS).run(checkpoint_path=path, max_steps=12)
    resumed = PackTrainer.from_checkpoint(path).run(checkpoint_path=path)
    for r, p in zip(resumed, packed, strict=True):
        assert (r.best_val_step, r.best_val_value, r.best_val) == (
            p.best_val_step,
            p.best_val_value,
            p.best_val,
        )


def test_a_diverged_trial_keeps_its_best_validation_model_from_before():
    config = SMALL.model_copy(update={"dtype": "float64"})
    trainer = PackTrainer(config, TRIALS[:2])

    def blow_up(points):  # after the first evaluation (step 8), trial 1's weights turn to NaN
        if trainer.step == 8:
            with torch.no_grad():
                trainer.model.head.bias[1].fill_(math.nan)

    healthy, diverged = trainer.run(on_eval=blow_up)
    assert diverged.status == "diverged" and diverged.diverged_at is not None and diverged.diverged_at == 9
    assert diverged.final == {} and diverged.best_val_step == 8 and diverged.best_val
    until_then = PackTrainer(
        config.model_copy(update={"budget": config.budget.model_copy(update={"steps": 8})}), TRIALS[1:2]
    ).run()[0]
    assert _close(diverged.best_val, until_then.final, 1e-9)
    assert healthy.status == "completed" and healthy.best_val and healthy.final


@pytest.mark.parametrize(
    "metric, value, meets, better_than_half",
    [
        ("accuracy", 0.99, True, True),  # the threshold itself meets it
        ("accuracy", 0.98, False, True),
        ("mse", 0.5, False, False),  # lower is better: a tie is not better
        ("mse", 0.0, True, True),
        ("loss", math.nan, False, False),  # NaN never meets nor beats anything
    ],
)
def test_the_success_rule_is_one_rule_for_direction_threshold_and_improvement(
    metric, value, meets, better_than_half
):
    threshold = 0.99 if metric == "accuracy" else 0.01
    task_default = SuccessRule(metric="accuracy", threshold=0.5)
    rule = TrainingConfig(success=SuccessSpec(metric=metric, threshold=threshold)).success_rule(task_default)
    assert (rule.metric, rule.threshold) == (metric, threshold)
    assert rule.meets(value) is meets and rule.better(value, 0.5) is better_than_half
    assert rule.higher_is_better is (metric == "accuracy")
    # the task's defaults fill what the config leaves unset
    mse = SuccessRule(metric="mse", threshold=0.02)
    assert TrainingConfig().success_rule(mse).model_dump() == {"metric": "mse", "threshold": 0.02}


def test_clipping_that_bites_acts_per_trial_alone_or_in_a_pack():
    """Gradient norms here reach about 0.8; 0.01 clips every step. A pack clips each trial by its
    own norm (float64: pack equals alone to 1e-9), and the clipped trial trains differently from
    the same trial unclipped."""
    config = SMALL.model_copy(update={"dtype": "float64"})
    trials = [
        TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=2, clip_norm=0.01),
        TrialParams(variant="vanilla", p_detach=0.0, lr=1e-2, seed=3, clip_norm=None),
        TrialParams(variant="vanilla", p_detach=0.0, lr=1e-2, seed=5, clip_norm=0.5),
    ]
    packed = PackTrainer(config, trials).run()
    for k, trial in enumerate(trials):
        alone = PackTrainer(config, [trial]).run()[0]
        for p, q in zip(alone.curve, packed[k].curve, strict=True):
            assert _close(p, q, 1e-9), (k, p, q)
    unclipped = PackTrainer(config, [trials[0].model_copy(update={"clip_norm": None})]).run()[0]
    assert abs(unclipped.curve[-1]["train_loss"] - packed[0].curve[-1]["train_loss"]) > 1e-4
