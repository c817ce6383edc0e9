"""The CUDA path on a real GPU: the same numbers as on the CPU, alone or in a pack.

Skipped without a GPU; `bash benchmarks/gpu/check.sh` runs them on one. Tolerances: float64, where
the devices differ only in the order of floating-point sums, 1e-9 absolute; float32 on one device,
pack against alone and graphed against eager, 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from studies import HDetachLSTM, PackedHDetachLSTM
from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
from studies.training.graphs import GRAPHS_ENV
from studies.training.sections import BudgetSpec, ModelSpec
from workers.worker import check_device

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CONFIG = TrainingConfig(
    task=TaskConfig(name="copying", T=6, n_val=100, n_test=200),
    model=ModelSpec(hidden_size=16),
    budget=BudgetSpec(steps=30, batch_size=8, eval_every=10, eval_batch_size=100),
    dtype="float64",
)
TRIALS = [
    TrialParams(variant="vanilla", p_detach=0.0, lr=3e-3, seed=1),
    TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=2),
    TrialParams(variant="h-detach", p_detach=0.5, lr=3e-3, seed=3, clip_norm=None),
]


def _close(a: dict[str, float], b: dict[str, float], tol: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


def _packed(K: int) -> PackedHDetachLSTM:
    torch.manual_seed(0)
    return PackedHDetachLSTM.from_lstms([HDetachLSTM(3, 16) for _ in range(K)]).double()


@pytest.mark.parametrize("mask_on", ["host", "device"])
def test_packed_lstm_forward_and_gradients_equal_the_cpu_with_mixed_masks(mask_on):
    T, K, B = 12, 4, 5
    x = torch.randn(T, K, B, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    blocked = torch.rand(T, K, generator=torch.Generator().manual_seed(2)) < 0.5  # mixed steps
    blocked[3] = True  # a step every model blocks
    results = []
    for device in ("cpu", "cuda"):
        model = _packed(K).to(device)
        inputs = x.to(device).requires_grad_()
        mask = blocked.to(device) if mask_on == "device" else blocked
        out, (h_n, c_n) = model(inputs, detach_mask=mask)
        (out.square().sum() + h_n.sum() + c_n.sum()).backward()
        grads = [inputs.grad] + [p.grad for p in model.parameters()]
        results.append([t.detach().cpu() for t in (out, h_n, c_n, *grads)])
    for on_cpu, on_cuda in zip(*results, strict=True):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=1e-9)


@pytest.mark.parametrize("graphs", ["on", "off"])
def test_a_pack_trains_on_cuda_as_on_the_cpu(monkeypatch, graphs):
    monkeypatch.setenv(GRAPHS_ENV, graphs)  # on: a graph that fails its check is an error
    cpu = PackTrainer(CONFIG, TRIALS, "cpu").run()
    cuda = PackTrainer(CONFIG, TRIALS, "cuda").run()
    for a, b in zip(cpu, cuda, strict=True):
        assert a.status == b.status and len(a.curve) == len(b.curve) == 3
        for p, q in zip(a.curve, b.curve, strict=True):
            assert _close(p, q, 1e-9), (p, q)
        assert _close(a.final, b.final, 1e-9) and _close(a.best_val, b.best_val, 1e-9)


def test_a_trial_alone_equals_the_trial_in_a_pack_on_cuda_in_float32():
    config = CONFIG.model_copy(update={"dtype": "float32"})
    packed = PackTrainer(config, TRIALS, "cuda").run()
    for k, trial in enumerate(TRIALS):
        alone = PackTrainer(config, [trial], "cuda").run()[0]
        for p, q in zip(alone.curve, packed[k].curve, strict=True):
            assert _close(p, q, 1e-5), (p, q)


def test_graphed_and_eager_training_agree_in_float32_and_the_graph_is_used(monkeypatch):
    config = CONFIG.model_copy(update={"dtype": "float32"})
    trials = [*TRIALS, TrialParams(variant="vanilla", p_detach=0.0, lr=1e38, seed=4, clip_norm=None)]
    results = {}
    for graphs in ("on", "off"):
        monkeypatch.setenv(GRAPHS_ENV, graphs)
        trainer = PackTrainer(config, trials, "cuda")
        results[graphs] = trainer.run()
    monkeypatch.setenv(GRAPHS_ENV, "on")
    graphed = PackTrainer(config, trials, "cuda")
    graphed.run(max_steps=1)
    assert graphed.graphed_step is not None and list(graphed.graphed_step.outcomes.values()) == [True]
    for a, b in zip(results["on"], results["off"], strict=True):
        assert (a.status, a.diverged_at, a.steps_run) == (b.status, b.diverged_at, b.steps_run)
        for p, q in zip(a.curve, b.curve, strict=True):
            assert _close(p, q, 1e-5), (p, q)
        assert _close(a.final, b.final, 1e-5)
    assert results["on"][-1].status == "diverged"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second CUDA GPU")
def test_a_graphed_pack_on_the_second_gpu_trains_as_eager(monkeypatch):
    """Capture and replay happen on the pack's own device, not on the current one (cuda:0)."""
    config = CONFIG.model_copy(update={"dtype": "float32"})
    results = {}
    for graphs in ("on", "off"):
        monkeypatch.setenv(GRAPHS_ENV, graphs)
        results[graphs] = PackTrainer(config, TRIALS, "cuda:1").run()
    for a, b in zip(results["on"], results["off"], strict=True):
        assert _close(a.final, b.final, 1e-5) and a.curve[-1]["step"] == b.curve[-1]["step"]


def test_the_workers_device_check_passes_on_cuda():
    check_device("cuda:0")  # raises on a device that cannot train
