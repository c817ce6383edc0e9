"""Queue throughput: claim + complete per second with concurrent claimer processes.

A study of N jobs is submitted to a fresh database, then P processes each loop
`claim(pack jobs) -> complete them` until the queue is empty; every job must end done exactly
once. Repeated `--repeats` times (a new database each); the median is the figure. Default:
PostgreSQL (a temporary database on the server at --url, dropped afterwards), 8 claimers, one
job per claim.

    python benchmarks/bench_queue.py [--url postgresql://...] [--claimers 8] [--jobs 4000] [--pack 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
import uuid
from pathlib import Path

from _databases import fresh_database

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
        results = [(job.job_id, job.lease_token, {"status": "completed"}) for job in jobs]
        done += len(queue.complete_many(factory, results))  # a pack's results in one statement, as a worker's
    counts.put(done)


def one_run(url: str, claimers: int, jobs: int, pack: int) -> float:
    """Jobs per second of one drain of a `jobs`-cell study by `claimers` processes."""
    upgrade(url)
    spec = StudySpec.model_validate(
        {
            "name": f"bench-{uuid.uuid4().hex[:6]}",
            "task": {"name": "copying", "T": 10},
            "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
            "learning_rates": {"low": 1e-4, "high": 1e-1, "num": 10},
            "seeds": list(range(jobs // 20)),
        }
    )
    engine = make_engine(url)
    factory = session_factory(engine)
    study_id = queue.submit_study(factory, spec)
    ctx = mp.get_context("spawn")
    start, counts = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claimer, args=(url, pack, start, counts)) for _ in range(claimers)]
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
    engine.dispose()
    assert total == spec.grid_size and states["done"] == spec.grid_size, (total, states)
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--claimers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--pack", type=int, default=1, help="jobs per claim (a worker's --pack)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="default: results/queue[_packN].json")
    args = parser.parse_args()
    rates = []
    for _ in range(args.repeats):
        with fresh_database(args.url) as url:
            rates.append(one_run(url, args.claimers, args.jobs, args.pack))
        print(f"  run {len(rates)}: {rates[-1]:.0f} jobs/s")
    backend = args.url.split(":", 1)[0]
    median = statistics.median(rates)
    print(
        f"{backend}, {args.claimers} claimers, pack {args.pack}, {args.jobs} jobs: median {median:.0f} jobs/s"
    )
    suffix = "" if args.pack == 1 else f"_pack{args.pack}"
    out = args.out or Path(__file__).parent / "results" / f"queue{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "backend": backend,
        "claimers": args.claimers,
        "jobs": args.jobs,
        "pack": args.pack,
        "jobs_per_second_runs": rates,
        "jobs_per_second_median": median,
    }
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
