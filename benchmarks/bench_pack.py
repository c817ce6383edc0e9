"""Trials per hour for a copying grid: one trial after another vs all trials as one pack.

The grid is 2 variants (vanilla, h-detach p=0.5) x 4 learning rates x 5 seeds = 40 trials at
copying T=100 (B=100, H=128), each with the same small step budget and small evaluation sets so
that the benchmark runs in minutes; the ratio is what it measures. Both arms go through the real
trainer (`PackTrainer`), evaluation included.

    python benchmarks/bench_pack.py [--device cuda] [--steps 10] [--pack 40] [--out ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
from studies.training.sections import BudgetSpec, ModelSpec

LRS = [1e-4, 3e-4, 1e-3, 3e-3]
SEEDS = [1, 2, 3, 4, 5]


def grid() -> list[TrialParams]:
    variants = [("vanilla", 0.0), ("h-detach", 0.5)]
    return [
        TrialParams(variant=v, p_detach=p, lr=lr, seed=s)
        for (v, p), lr, s in itertools.product(variants, LRS, SEEDS)
    ]


def timed(config: TrainingConfig, packs: list[list[TrialParams]], device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    for pack in packs:
        PackTrainer(config, pack, device).run()
    sync()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pack", type=int, default=40, help="largest pack (trials per packed run)")
    parser.add_argument("--sequential-trials", type=int, default=40, help="time this many one-after-another")
    parser.add_argument("--repeats", type=int, default=3, help="arms alternate; medians are reported")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    config = TrainingConfig(
        task=TaskConfig(name="copying", T=100, n_val=100, n_test=100),
        model=ModelSpec(hidden_size=128),
        budget=BudgetSpec(steps=args.steps, batch_size=100, eval_every=args.steps, eval_batch_size=100),
    )
    trials = grid()
    PackTrainer(
        config.model_copy(
            update={"budget": BudgetSpec(steps=1, batch_size=100, eval_every=1, eval_batch_size=100)}
        ),
        trials[:2],
        args.device,
    ).run()  # warm-up
    n_seq = min(args.sequential_trials, len(trials))
    packs = [trials[i : i + args.pack] for i in range(0, len(trials), args.pack)]
    seq_runs, packed_runs = [], []
    for _ in range(args.repeats):  # alternating, so drifting machine load hits both arms alike
        seq_runs.append(timed(config, [[t] for t in trials[:n_seq]], args.device))
        packed_runs.append(timed(config, packs, args.device))
    seq_s, packed_s = statistics.median(seq_runs), statistics.median(packed_runs)
    rows = {
        "one after another": {"trials": n_seq, "seconds": seq_s, "trials_per_hour": 3600 * n_seq / seq_s},
        f"packed (K={args.pack})": {
            "trials": len(trials),
            "seconds": packed_s,
            "trials_per_hour": 3600 * len(trials) / packed_s,
        },
    }
    ratio = rows[f"packed (K={args.pack})"]["trials_per_hour"] / rows["one after another"]["trials_per_hour"]
    print(f"copying T=100 grid, {len(trials)} trials x {args.steps} steps, device {args.device}")
    print(f"{'arm':<22}{'trials':>8}{'seconds':>10}{'trials/hour':>14}")
    for name, row in rows.items():
        print(f"{name:<22}{row['trials']:>8}{row['seconds']:>10.1f}{row['trials_per_hour']:>14.0f}")
    print(f"packed / one after another: {ratio:.2f}x")
    out = args.out or Path(__file__).parent / "results" / f"pack_{torch.device(args.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": args.device,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "seconds_runs": {"one after another": seq_runs, "packed": packed_runs},
    }
    out.write_text(json.dumps(result | {"ratio": ratio}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
