"""One pack trained on the CPU and on the GPU from the same seeds: how far apart the results are.

Copying T=20, hidden 64, 3 trials (vanilla, h-detach, h-detach without clipping), 200 steps, in
float64 (the devices differ only in summation order: expect 1e-12-ish) and float32 (expect 1e-5 to
1e-3 after 200 Adam steps). Writes the largest absolute difference of every curve value and test
metric, each device's wall time, and whether the GPU's iterations ran as a CUDA graph
(HDETACH_CUDA_GRAPHS, default auto).

    python3 benchmarks/gpu/cuda_vs_cpu.py --out results/cuda_vs_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
from studies.training.sections import BudgetSpec, ModelSpec

TRIALS = [
    TrialParams(variant="vanilla", p_detach=0.0, lr=3e-3, seed=1),
    TrialParams(variant="h-detach", p_detach=0.5, lr=3e-3, seed=2),
    TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=3, clip_norm=None),
]


def largest_difference(a: list, b: list) -> float:
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for pa, pb in zip(
            [ra.final, ra.best_val, *ra.curve], [rb.final, rb.best_val, *rb.curve], strict=True
        ):
            worst = max([worst, *(abs(pa[k] - pb[k]) for k in pa)])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {}
    for dtype in ("float64", "float32"):
        config = TrainingConfig(
            task=TaskConfig(name="copying", T=20, n_val=500, n_test=1000),
            model=ModelSpec(hidden_size=64),
            budget=BudgetSpec(steps=200, batch_size=100, eval_every=50, eval_batch_size=500),
            dtype=dtype,
        )
        records, seconds = {}, {}
        for device in ("cpu", args.device):
            started = time.perf_counter()
            trainer = PackTrainer(config, TRIALS, device)
            records[device] = trainer.run()
            seconds[device] = time.perf_counter() - started
        result[dtype] = {
            "largest_abs_difference": largest_difference(records["cpu"], records[args.device]),
            "statuses": {d: [r.status for r in rs] for d, rs in records.items()},
            "seconds": seconds,
            # on the GPU: per pack shape, whether the training iteration ran as a CUDA graph
            "cuda_graphs": trainer.graphed_step.outcomes if trainer.graphed_step is not None else None,
        }
        print(dtype, result[dtype])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
