"""Queue throughput: claim + complete per second with concurrent claimer processes.

A study of N jobs is submitted, then P processes each loop `claim(pack jobs) -> complete each`
until the queue is empty; every job must end done exactly once. Default: PostgreSQL, 8
claimers, one job per claim.

    python benchmarks/bench_queue.py [--url postgresql://...] [--claimers 8] [--jobs 4000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid
from pathlib import Path

from studies import queue
from studies.db.engine import make_engine, session_factory, upgrade
from studies.spec import StudySpec


def claimer(url: str, pack: int, start: mp.Event, counts: mp.Queue) -> None:  # type: ignore[type-arg]
    factory = session_factory(make_engine(url, pool_pre_ping=False))  # as a worker's
    worker_id = f"bench-{uuid.uuid4().hex[:8]}"
    done = 0
    start.wait()
    while True:
        jobs = queue.claim(factory, worker_id, pack, lease_seconds=60)
        if not jobs:
            break
        for job in jobs:
            done += queue.complete(factory, job.job_id, job.lease_token, {"status": "completed"})
    counts.put(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--claimers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--pack", type=int, default=1, help="jobs per claim (a worker's --pack)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "queue.json")
    args = parser.parse_args()
    upgrade(args.url)
    seeds = list(range(args.jobs // 20))
    spec = StudySpec.model_validate(
        {
            "name": f"bench-{uuid.uuid4().hex[:6]}",
            "task": {"name": "copying", "T": 10},
            "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
            "learning_rates": {"low": 1e-4, "high": 1e-1, "num": 10},
            "seeds": seeds,
        }
    )
    factory = session_factory(make_engine(args.url))
    study_id = queue.submit_study(factory, spec)
    ctx = mp.get_context("spawn")
    start, counts = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=claimer, args=(args.url, args.pack, start, counts)) for _ in range(args.claimers)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every process import and connect before the clock starts
    t0 = time.perf_counter()
    start.set()
    total = sum(counts.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    states = queue.job_counts(factory, study_id)
    assert total == spec.grid_size and states["done"] == spec.grid_size, (total, states)
    rate = total / elapsed
    backend = args.url.split(":", 1)[0]
    setup = f"{backend}, {args.claimers} claimers, pack {args.pack}, {total} jobs"
    print(f"{setup}: {elapsed:.2f} s, {rate:.0f} jobs/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "backend": backend,
                "claimers": args.claimers,
                "jobs": total,
                "seconds": elapsed,
                "jobs_per_second": rate,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
