"""Share of a study's wall time spent outside training (queue, Optuna, set-up), phase by phase.

A 40-trial copying study (2 variants x 4 learning rates x 5 seeds) is submitted to a fresh
database and drained by one in-process worker, started beforehand as in a deployment. The
study's wall time runs from its submission to its last result. The worker's phases are timed
through the hook the benchmark installs (`Worker.phase_hook`): training is the time inside
`PackTrainer.run`, less the time the run's callbacks spend writing learning curves;
everything else counts as overhead. The start-up of the service's backend and of the
worker (once per process, not per study) is reported apart. Repeated `--repeats` times, a new
database each; the median share is the figure.

    python benchmarks/bench_overhead.py [--url sqlite | postgresql://...] [--pack 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _databases import fresh_database

from deployment.backend import Backend
from deployment.settings import Settings
from studies.spec import StudySpec
from workers.worker import Worker, WorkerOptions


def study_spec(steps: int) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "overhead",
            "task": {"name": "copying", "T": 10, "n_val": 200, "n_test": 500},
            "model": {"hidden_size": 32},
            "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
            "learning_rates": [1e-3, 3e-3, 1e-2, 3e-2],
            "seeds": [1, 2, 3, 4, 5],
            "budget": {"steps": steps, "eval_every": max(1, steps // 5), "batch_size": 32},
        }
    )


class PhaseTimer:
    """The worker's phase hook: seconds per phase, each phase's own (a phase entered inside
    another, the learning curves written during training, is not counted in the outer one)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self._nested: list[float] = []  # per open phase, the seconds spent in phases inside it

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            self.seconds[phase] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed


def one_run(url: str, spec: StudySpec, pack: int) -> dict[str, Any]:
    started = time.perf_counter()
    backend = Backend(Settings(database_url=url))  # creates the schema, as `hdetach db upgrade` would
    assert backend.storage is not None  # opened on first use: part of the service's start-up
    worker = Worker(WorkerOptions(database_url=url, pack=pack, exit_when_idle=True, poll_seconds=0.1))
    timer = worker.phase_hook = PhaseTimer()
    startup = time.perf_counter() - started
    submitted = time.perf_counter()
    backend.submit(spec.model_dump(mode="json"))
    worker.run()
    wall = time.perf_counter() - submitted
    backend.close()
    seconds = dict(timer.seconds)
    training = seconds.pop("training", 0.0)
    outside = {"submitting and the rest": wall - training - sum(seconds.values())} | seconds
    return {
        "study_wall_s": wall,
        "training_s": training,
        "outside_training_s": outside,
        "startup_s": startup,
        "outside_training_share": 1 - training / wall,
        "outside_training_share_with_startup": 1 - training / (wall + startup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="sqlite", help="'sqlite' (a new file) or a PostgreSQL server URL")
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: results/overhead_<backend>.json")
    args = parser.parse_args()
    spec, backend = study_spec(args.steps), args.url.split(":", 1)[0]
    runs = []
    for _ in range(args.repeats):
        with fresh_database("sqlite://" if args.url == "sqlite" else args.url) as url:
            run = one_run(url, spec, args.pack)
        runs.append(run)
        print(
            f"  run {len(runs)}: study wall {run['study_wall_s']:.2f} s, training {run['training_s']:.2f} s, "
            f"outside training {100 * run['outside_training_share']:.1f}% "
            f"({100 * run['outside_training_share_with_startup']:.1f}% with the "
            f"{run['startup_s']:.2f} s start-up of service and worker)"
        )
        for phase, phase_seconds in run["outside_training_s"].items():
            share = phase_seconds / run["study_wall_s"]
            print(f"      {phase:24s} {1000 * phase_seconds:7.1f} ms  {100 * share:4.1f}%")
    median = statistics.median(r["outside_training_share"] for r in runs)
    median_with_startup = statistics.median(r["outside_training_share_with_startup"] for r in runs)
    print(
        f"{backend}, 40 trials x {args.steps} steps, pack {args.pack}: outside training, median of "
        f"{len(runs)}: {100 * median:.1f}% of the study's wall time "
        f"({100 * median_with_startup:.1f}% with start-up)"
    )
    out = args.out or Path(__file__).parent / "results" / f"overhead_{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "backend": backend,
        "pack": args.pack,
        "steps": args.steps,
        "runs": runs,
        "outside_training_share_median": median,
        "outside_training_share_with_startup_median": median_with_startup,
    }
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
