"""A copying grid through the real product on one GPU: trials per hour packed vs one at a time.

A fresh SQLite file, `hdetach submit` and one `hdetach worker --device cuda:0 --exit-when-idle`,
as a user runs them: first the whole grid (2 variants x 5 learning rates x 4 seeds = 40 trials)
in packs of 40, then the first SEQUENTIAL trials of the same grid in packs of 1, each timed from
the worker's start to its exit (process start and CUDA initialisation included, once per run).
The ratio of trials per hour is issue 15's third target (at least 10x). The budget is short
(copying T=100, hidden 128, batch 100, STEPS steps): what is measured is the throughput, not
whether the trials learn.

    python3 benchmarks/gpu/study_e2e.py --out results/study_gpu.json [--device cuda:0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 100
SEQUENTIAL = 4  # trials timed one at a time (40 would take most of the GPU check's budget)


def grid(seeds: list[int]) -> dict:
    return {
        "name": "gpu-e2e",
        "task": {"name": "copying", "T": 100, "n_val": 500, "n_test": 1000},
        "model": {"hidden_size": 128},
        "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
        "learning_rates": {"low": 1e-4, "high": 1e-2, "num": 5},
        "seeds": seeds,
        "budget": {"steps": STEPS, "eval_every": STEPS // 2, "batch_size": 100, "eval_batch_size": 500},
    }


def hdetach(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "hdetach", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"hdetach {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def run(spec: dict, pack: int, device: str, folder: Path, name: str) -> dict:
    url = f"sqlite:///{folder / name}.db"
    spec_file = folder / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    hdetach("submit", str(spec_file), "--database-url", url)
    started = time.perf_counter()
    hdetach("worker", "--database-url", url, "--device", device, "--pack", str(pack), "--exit-when-idle")
    seconds = time.perf_counter() - started
    status = json.loads(hdetach("status", "1", "--database-url", url, "--json").stdout)
    trials = status["jobs"]["done"]
    return {
        "pack": pack,
        "trials": trials,
        "jobs": status["jobs"],
        "seconds": seconds,
        "trials_per_hour": 3600 * trials / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        packed = run(grid([1, 2, 3, 4]), 40, args.device, folder, "packed")
        # the first SEQUENTIAL cells of the same grid: vanilla, lr 1e-4, seeds 1-4
        one_seed_grid = grid([1, 2, 3, 4]) | {"variants": [{"name": "vanilla", "p_detach": 0.0}]}
        one_seed_grid["learning_rates"] = [1e-4]
        alone = run(one_seed_grid, 1, args.device, folder, "alone")
    assert alone["trials"] == SEQUENTIAL
    ratio = packed["trials_per_hour"] / alone["trials_per_hour"]
    result = {
        "steps_per_trial": STEPS,
        "packed": packed,
        "one_at_a_time": alone,
        "ratio": ratio,
        "target": 10.0,
    }
    print(
        f"packed (40 per pack): {packed['trials']} trials in {packed['seconds']:.1f} s, "
        f"{packed['trials_per_hour']:.0f} trials/h"
    )
    rate = alone["trials_per_hour"]
    print(f"one at a time: {alone['trials']} trials in {alone['seconds']:.1f} s, {rate:.0f} trials/h")
    print(f"ratio {ratio:.1f}x (target >= 10x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
