"""Time `summarize` on a synthetic 10,000-trial study: 2 variants x 50 learning rates x 100 seeds.

Accuracy-like metrics peak near lr = 1e-3; h-detach is a little better and diverges less at high
learning rates. Prints a table of timings (median of `--repeats` runs after one warm-up, which pays
the one-off scipy.stats import) and writes them as JSON.

    python benchmarks/bench_summary.py [--repeats 7] [--n-boot 2000] [--out benchmarks/results/summary.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from studies.robustness import RobustnessSummary, TrialOutcome, summarize

VARIANTS = [("vanilla", 0.0, 0.0), ("h-detach", 0.5, 0.02)]  # name, p_detach, accuracy bonus
LRS = np.logspace(-5, -1, 50)
SEEDS = range(100)


def synthetic_study(rng: np.random.Generator) -> list[TrialOutcome]:
    trials = []
    for name, p_detach, bonus in VARIANTS:
        for lr in LRS:
            distance = abs(np.log10(lr) + 3)  # decades from the sweet spot
            p_diverge = min(0.9, max(0.0, (np.log10(lr) + 2.5) * 0.4)) * (0.5 if bonus else 1.0)
            for seed in SEEDS:
                diverged = bool(rng.random() < p_diverge)
                accuracy = float(np.clip(0.95 + bonus - 0.12 * distance**2 + rng.normal(0, 0.02), 0, 1))
                trials.append(
                    TrialOutcome(
                        variant=name,
                        p_detach=p_detach,
                        lr=float(lr),
                        seed=seed,
                        state="done",
                        metric=None if diverged else accuracy,
                        diverged=diverged,
                        steps_to_threshold=None if diverged else int(rng.integers(500, 5000)),
                    )
                )
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "summary.json")
    args = parser.parse_args()

    trials = synthetic_study(np.random.default_rng(0))

    def run() -> RobustnessSummary:
        return summarize(trials, "accuracy", 0.9, higher_is_better=True)

    started = time.perf_counter()
    summary = run()
    first_s = time.perf_counter() - started
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)

    median_ms = 1000 * statistics.median(times)
    rows = [
        ("trials", f"{len(trials):,}"),
        ("first call (with imports)", f"{1000 * first_s:.1f} ms"),
        (f"median of {args.repeats}", f"{median_ms:.1f} ms"),
        ("min / max", f"{1000 * min(times):.1f} / {1000 * max(times):.1f} ms"),
        ("h-detach - vanilla", f"{summary.comparisons[0].mean_difference:+.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "trials": len(trials),
        "variants": len(VARIANTS),
        "lrs": len(LRS),
        "seeds": len(SEEDS),
        "repeats": args.repeats,
        "first_call_ms": 1000 * first_s,
        "median_ms": median_ms,
        "times_ms": [1000 * t for t in times],
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
