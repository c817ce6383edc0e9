"""The graphed training step, on a CPU: the device step reads nothing back, the accelerator's
deferred reading of divergences gives the same records, and the graph wrapper's static buffers,
self-check and fallback work (a stand-in capture replays the step's Python; tests/studies/test_cuda.py
captures real CUDA graphs on a GPU)."""

from __future__ import annotations

import gc
import logging
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from studies.training import PackTrainer, TrialParams
from studies.training.graphs import GRAPHS_ENV, GraphedStep, graphs_choice
from tests.studies.test_trainer import SMALL

CONFIG = SMALL  # copying T=4, hidden 8, 24 steps: test_trainer's small pack
TRIALS = [
    TrialParams(variant="vanilla", p_detach=0.0, lr=1e-3, seed=1),
    TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=2, clip_norm=0.05),
    TrialParams(variant="vanilla", p_detach=0.0, lr=1e38, seed=4, clip_norm=None),  # diverges
]


def replaying_capture(run, reset):
    """A stand-in for CUDA graph capture: warm up, reset, and replay by running the step again."""
    run()
    reset()
    return run


def _outcome(records):
    return [(r.status, r.diverged_at, r.steps_run, r.curve, r.final, r.best_val) for r in records]


def _trained(graphed=None, collect_every_step=True):
    trainer = PackTrainer(CONFIG, TRIALS)
    trainer.collect_every_step = collect_every_step
    if graphed is not None:
        trainer.graphed_step = graphed(trainer)
    return trainer, trainer.run()


class ForbidHostReads(TorchDispatchMode):
    """Fails on any op that copies a tensor's value to a Python number (.item(), float(), bool())."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            raise AssertionError(f"the device step read a value back to the host ({func})")
        return func(*args, **(kwargs or {}))


def test_the_device_step_reads_nothing_back_to_the_host():
    trainer = PackTrainer(CONFIG, TRIALS)
    x, y, mask = trainer._draw_batch()
    with ForbidHostReads():
        trainer._device_step(x.to(trainer.dtype), y, mask)
    # and the check itself fails where it should
    with pytest.raises(AssertionError, match="read a value back"), ForbidHostReads():
        float(trainer._loss_sum_on.sum())


def test_reading_divergences_only_at_evaluations_gives_the_same_records():
    _, every_step = _trained()
    _, deferred = _trained(collect_every_step=False)
    assert _outcome(deferred) == _outcome(every_step)
    assert (every_step[2].status, every_step[2].diverged_at, every_step[2].steps_run) == ("diverged", 2, 1)
    assert every_step[0].steps_run == CONFIG.budget.steps


def test_a_replayed_step_gives_the_eager_results():
    _, eager = _trained()
    trainer, graphed = _trained(
        lambda t: GraphedStep(t._device_step, t._step_state, 1e-5, capture=replaying_capture)
    )
    assert _outcome(graphed) == _outcome(eager)
    assert trainer.graphed_step.outcomes == {"(24, 3, 8, 1), (24, 3, 8), (24, 3)": True}


def test_a_graph_that_does_not_match_is_dropped_with_one_line_and_the_results_are_eager(caplog):
    def replays_twice(run, reset):
        run()
        reset()
        return lambda: (run(), run())

    _, eager = _trained()
    with caplog.at_level(logging.WARNING, logger="studies.training.graphs"):
        trainer, fallen_back = _trained(
            lambda t: GraphedStep(t._device_step, t._step_state, 1e-5, capture=replays_twice)
        )
    assert _outcome(fallen_back) == _outcome(eager)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "CUDA graph not used" in lines[0] and "differs from the eager step" in lines[0]
    assert list(trainer.graphed_step.outcomes.values()) == [False]


def test_a_failed_capture_falls_back_unless_graphs_are_required(caplog):
    def cannot_capture(run, reset):
        run()
        reset()
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    _, eager = _trained()
    with caplog.at_level(logging.WARNING, logger="studies.training.graphs"):
        _, fallen_back = _trained(
            lambda t: GraphedStep(t._device_step, t._step_state, 1e-5, capture=cannot_capture)
        )
    assert _outcome(fallen_back) == _outcome(eager)
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    with pytest.raises(RuntimeError, match=f"{GRAPHS_ENV}=on, but the training step cannot be graphed"):
        _trained(
            lambda t: GraphedStep(t._device_step, t._step_state, 1e-5, required=True, capture=cannot_capture)
        )


@pytest.mark.parametrize("choice", ["auto", "on", "off", ""])
def test_graphs_apply_to_cuda_devices_only(monkeypatch, choice):
    monkeypatch.setenv(GRAPHS_ENV, choice)
    assert PackTrainer(CONFIG, TRIALS[:1]).graphed_step is None
    step = GraphedStep.for_device(torch.device("cuda"), torch.float32, lambda: None, list)
    if choice == "off":
        assert step is None
    else:
        assert step is not None and step.required == (choice == "on") and step.tolerance == 1e-5


def test_an_unknown_graphs_setting_is_refused(monkeypatch):
    monkeypatch.setenv(GRAPHS_ENV, "sometimes")
    with pytest.raises(ValueError, match="HDETACH_CUDA_GRAPHS='sometimes': expected one of auto, on, off"):
        graphs_choice()


def test_a_graph_that_replays_nothing_is_dropped(caplog):
    """A capture whose kernels in fact ran while "captured" (sent to another device's stream, say)
    leaves an empty graph; the check puts the state back before replaying, so it cannot pass."""

    def runs_instead_of_capturing(run, reset):
        run()
        reset()
        run()  # ran, not captured
        return lambda: None

    _, eager = _trained()
    with caplog.at_level(logging.WARNING, logger="studies.training.graphs"):
        trainer, fallen_back = _trained(
            lambda t: GraphedStep(t._device_step, t._step_state, 1e-5, capture=runs_instead_of_capturing)
        )
    assert _outcome(fallen_back) == _outcome(eager)
    assert list(trainer.graphed_step.outcomes.values()) == [False] and len(caplog.records) == 1


def test_a_trainer_with_a_graph_is_freed_without_waiting_for_the_garbage_collector(monkeypatch):
    """The graph reaches the trainer's step through weak references, so no cycle keeps a finished
    pack's memory (on a GPU: its parameters, Adam state and graph pool) alive."""
    monkeypatch.setattr(
        GraphedStep,
        "for_device",
        classmethod(
            lambda cls, device, dtype, step, state: cls(step, state, 1e-5, capture=replaying_capture)
        ),
    )
    gc.disable()
    try:
        trainer = PackTrainer(CONFIG, TRIALS[:2])
        trainer.run()
        assert list(trainer.graphed_step.outcomes.values()) == [True]
        model = weakref.ref(trainer.model)
        del trainer
        assert model() is None
    finally:
        gc.enable()
