"""Share of a study's wall time spent outside training (queue, Optuna, set-up, start-up).

A 40-trial copying study (2 variants x 4 learning rates x 5 seeds) is submitted to a fresh
database and drained by one in-process worker, started beforehand as in a deployment. The
study's wall time runs from its submission to its last result. The worker times what it
spends inside `PackTrainer.run`, less the time the run's callbacks spend writing learning
curves; everything else counts as overhead, and the worker's start-up is reported apart.

    python benchmarks/bench_overhead.py [--url sqlite:///...] [--pack 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hdetach.settings import Settings
from hdetach.studies_app import Backend
from studies.spec import StudySpec
from workers.worker import Worker, WorkerOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="default: a new SQLite file")
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "overhead.json")
    args = parser.parse_args()
    url = args.url or f"sqlite:///{tempfile.mkdtemp()}/overhead.db"
    spec = StudySpec.model_validate(
        {
            "name": "overhead",
            "task": {"name": "copying", "T": 10, "n_val": 200, "n_test": 500},
            "model": {"hidden_size": 32},
            "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
            "learning_rates": [1e-3, 3e-3, 1e-2, 3e-2],
            "seeds": [1, 2, 3, 4, 5],
            "budget": {"steps": args.steps, "eval_every": max(1, args.steps // 5), "batch_size": 32},
        }
    )
    started = time.perf_counter()
    with Backend(Settings(database_url=url)):  # creates the schema, as `hdetach db upgrade` would
        pass
    worker = Worker(WorkerOptions(database_url=url, pack=args.pack, exit_when_idle=True, poll_seconds=0.1))
    startup = time.perf_counter() - started  # once per database and worker process
    submitted = time.perf_counter()
    with Backend(Settings(database_url=url)) as backend:
        backend.submit(spec)
    worker.run()
    wall = time.perf_counter() - submitted
    seconds = dict(worker.seconds)
    training = seconds.get("training", 0.0)
    share = 1 - training / wall
    with_startup = 1 - training / (wall + startup)
    print(
        f"40 trials x {args.steps} steps, pack {args.pack}, {url.split(':')[0]}: study wall {wall:.2f} s, "
        f"training {training:.2f} s, outside training {100 * share:.1f}% "
        f"({100 * with_startup:.1f}% counting the {startup:.2f} s start-up of database and worker)"
    )
    outside = {"submitting and waiting": wall - sum(seconds.values())} | {
        phase: s for phase, s in seconds.items() if phase != "training"
    }
    for phase, phase_seconds in outside.items():
        print(f"  {phase:24s} {1000 * phase_seconds:8.1f} ms  {100 * phase_seconds / wall:5.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "backend": url.split(":")[0],
                "pack": args.pack,
                "steps": args.steps,
                "study_wall_s": wall,
                "training_s": training,
                "outside_training_s": outside,
                "startup_s": startup,
                "outside_training_share": share,
                "outside_training_share_with_startup": with_startup,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
