"""Run reproduction claims through the product and write their ledger entries.

    python benchmarks/repro/run.py adding-high-lr adding-no-clip copying-cpu [--workers 2]
    python benchmarks/repro/run.py copying-T100-gpu --workers 1          # GPU claims: --device cuda
    python benchmarks/repro/run.py pixel-mnist-gpu --not-run             # write a "not yet run" entry

Each claim (specs/NAME.json, described in claims.py) runs as a user would run it: a fresh SQLite
database in a temporary folder, `hdetach db upgrade`, `hdetach submit`, then N `hdetach worker
--exit-when-idle` processes (one pack each) until the study is finished. The trials and the
robustness summary are read back with studies.results, as the REST service reads them, and
written to results/NAME.json with the claim, the paper's figure, both budgets, the machine and
the git commit; a short table is printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from claims import CLAIMS

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# The workers run `python -m hdetach` in REPO, so they train with this checkout's code; the results
# are read with it too, whichever checkout the environment has installed.
sys.path.insert(0, str(REPO))
SPECS = HERE / "specs"
RESULTS = HERE / "results"
# what decides a trial's numbers: a run with local changes here is marked dirty in its entry
CODE_PATHS = ["studies", "workers", "hdetach", "benchmarks/repro/specs"]
MAX_ROUNDS = 3  # worker rounds before giving up on a study that does not finish
PROGRESS_SECONDS = 30


def spec_path(name: str) -> Path:
    return SPECS / f"{name}.json"


def load_spec(name: str) -> dict[str, Any]:
    return json.loads(spec_path(name).read_text())


def _hdetach(args: list[str], env: dict[str, str]) -> str:
    """One `hdetach` command, as a user types it; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "hdetach", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"hdetach {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip()


def _git(*args: str) -> str:
    # only the trailing newline: porcelain status lines begin with a significant space
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.rstrip("\n")


def provenance() -> dict[str, Any]:
    dirty = _git("status", "--porcelain", "--", *CODE_PATHS).splitlines()
    return {
        "git_commit": _git("rev-parse", "HEAD") or None,
        "dirty_files": [line[3:] for line in dirty],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def machine(device: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "device": device,
        "torch": version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def budget(spec: dict[str, Any], claim: dict[str, Any]) -> dict[str, Any]:
    steps, batch = spec["budget"]["steps"], spec["budget"]["batch_size"]
    paper = claim["paper_budget"]
    ours = {"steps": steps, "batch_size": batch, "text": f"{steps:,} steps of batch {batch}"}
    entry: dict[str, Any] = {"ours": ours, "paper": paper}
    if paper["steps"]:
        ratio = steps * batch / (paper["steps"] * paper["batch_size"])
        entry["fraction_of_paper_sequences"] = round(ratio, 6)
        entry["smaller_than_paper"] = ratio < 1
    return entry


def _run_workers(
    n: int,
    pack: int,
    device: str,
    threads: int | None,
    env: dict[str, str],
    logs: Path,
    progress: Callable[[], str],
) -> None:
    """N `hdetach worker --exit-when-idle` processes, until every one has exited."""
    command = [sys.executable, "-m", "hdetach", "worker", "--device", device, "--pack", str(pack)]
    command += ["--exit-when-idle"] + (["--threads", str(threads)] if threads else [])
    procs = []
    with ExitStack() as stack:
        for i in range(n):
            log = stack.enter_context((logs / f"worker-{i}.log").open("ab"))
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        started = last = time.monotonic()
        try:
            while any(proc.poll() is None for proc in procs):
                time.sleep(1.0)  # the study's wall time is measured to about this
                if time.monotonic() - last >= PROGRESS_SECONDS:
                    last = time.monotonic()
                    print(f"  {last - started:5.0f} s: {progress()}", flush=True)
        finally:  # Ctrl-C: SIGTERM lets a worker give its jobs back before it exits
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()


def run_study(name: str, workers: int, device: str, threads: int | None) -> dict[str, Any]:
    """Submit the claim's spec to a fresh database, work it off, read the results back."""
    from deployment.backend import Backend
    from deployment.settings import Settings
    from studies import queue
    from studies.db.models import FINISHED_STUDY
    from studies.results import study_summary, trial_row

    with tempfile.TemporaryDirectory(prefix=f"repro-{name}-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'hdetach.db'}"
        env = {**os.environ, "HDETACH_DATABASE_URL": url, "HDETACH_POLL_SECONDS": "0.5"}
        _hdetach(["db", "upgrade"], env)
        study_id = int(_hdetach(["submit", str(spec_path(name))], env).splitlines()[-1])
        with Backend(Settings(database_url=url)) as backend:
            cells = sum(queue.job_counts(backend.factory, study_id).values())
            pack = math.ceil(cells / workers)  # one pack per worker: each keeps its core busy
            print(f"{name}: study {study_id}, {cells} trials, {workers} workers x pack {pack} on {device}")
            started = time.monotonic()

            def progress() -> str:
                counts = queue.job_counts(backend.factory, study_id)
                return ", ".join(f"{state} {k}" for state, k in counts.items() if k)

            for _ in range(MAX_ROUNDS):  # a second round only if a retried cell outlived the workers
                _run_workers(workers, pack, device, threads, env, Path(tmp), progress)
                if queue.get_study(backend.factory, study_id).status in FINISHED_STUDY:
                    break
            wall = time.monotonic() - started
            study = queue.get_study(backend.factory, study_id)
            if study.status not in FINISHED_STUDY:
                logs = "\n".join(p.read_text()[-2000:] for p in sorted(Path(tmp).glob("worker-*.log")))
                raise SystemExit(
                    f"{name}: study {study_id} still {study.status} after {MAX_ROUNDS} rounds\n{logs}"
                )
            parsed = backend.parse_spec(spec_path(name).read_text())
            rows = [
                trial_row(job, parsed.success.metric, parsed.selection)
                for job in queue.list_jobs(backend.factory, study_id)
            ]
            summary = study_summary(parsed, rows)
    return {"status": study.status, "wall_time_s": round(wall, 1), "rows": rows, "summary": summary}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def per_variant(rows: list[Any], summary: Any, metric: str) -> list[dict[str, Any]]:
    out = []
    for v in summary.variants:
        mine = [r for r in rows if r.variant == v.name]
        finals = [r.final[metric] for r in mine if metric in r.final and not r.diverged]
        steps = [r.steps_to_threshold for r in mine if r.steps_to_threshold is not None]
        entry = {
            "variant": v.name,
            "p_detach": v.p_detach,
            "trials": len(mine),
            "successes": v.successes,
            "diverged": v.diverged,
            "failed": v.failed,
            "median_final_metric": _median(finals),
            "median_steps_to_threshold": _median(steps),
        }
        selected = [r.metric for r in mine if r.metric is not None and not r.diverged]
        if mine and mine[0].selection != "final":  # the summary counts successes on this one
            entry["median_selected_metric"] = _median(selected)
        out.append(entry)
    return out


def entry_head(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    claim = CLAIMS[name]
    return {
        "name": name,
        "spec_file": str(spec_path(name).relative_to(REPO)),
        "claim": claim["claim"],
        "paper": claim["paper"],
        "scale": claim["scale"],
        "spec": spec,
        "budget": budget(spec, claim),
    }


def run_claim(name: str, workers: int, device: str, threads: int | None) -> dict[str, Any]:
    spec = load_spec(name)
    origin = provenance()
    outcome = run_study(name, workers, device, threads)
    metric = spec["success"]["metric"]
    summary = outcome["summary"]
    return {
        **entry_head(name, spec),
        "status": "run",
        "command": f"python benchmarks/repro/run.py {name} --workers {workers} --device {device}",
        "metric": metric,
        "threshold": spec["success"]["threshold"],
        "variants": per_variant(outcome["rows"], summary, metric),
        "comparisons": [c.model_dump(mode="json") for c in summary.comparisons],
        "wall_time_s": outcome["wall_time_s"],
        "workers": workers,
        "machine": machine(device),
        **origin,
        "summary": summary.model_dump(mode="json"),
        "trials": [r.model_dump(mode="json") for r in outcome["rows"]],
    }


def not_run_entry(name: str) -> dict[str, Any]:
    return {
        **entry_head(name, load_spec(name)),
        "status": "not yet run",
        "command": f"python benchmarks/repro/run.py {name} --workers 1 --device cuda",
    }


def print_table(entry: dict[str, Any]) -> None:
    print(f"\n{entry['name']}: {entry['claim']}")
    if entry["status"] != "run":
        print(f"  {entry['status']}")
        return
    print(
        f"  {'variant':<10} {'p':>5} {'trials':>6} {'success':>7} {'diverged':>8} "
        f"{'median ' + entry['metric']:>14} {'median steps':>12}"
    )
    for v in entry["variants"]:
        metric = "-" if v["median_final_metric"] is None else f"{v['median_final_metric']:.4g}"
        steps = "-" if v["median_steps_to_threshold"] is None else f"{v['median_steps_to_threshold']:g}"
        print(
            f"  {v['variant']:<10} {v['p_detach']:>5g} {v['trials']:>6} {v['successes']:>7} "
            f"{v['diverged']:>8} {metric:>14} {steps:>12}"
        )
    for c in entry["comparisons"]:
        p = "-" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
        mean = "-" if c["mean_difference"] is None else f"{c['mean_difference']:+.3g}"
        print(
            f"  {c['variant']} vs {c['baseline']}: {c['n_pairs']} pairs, mean difference {mean} "
            f"(positive = {c['variant']} better), Wilcoxon p {p}"
        )
    print(f"  wall {entry['wall_time_s']:.0f} s on {entry['machine']['cores']} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="+", metavar="NAME", choices=sorted(CLAIMS), help=f"claims: {', '.join(CLAIMS)}"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one pack each)")
    parser.add_argument("--device", default=None, help="workers' device (default: cpu, cuda for GPU claims)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (cpu default 1)")
    parser.add_argument("--not-run", action="store_true", help='write "not yet run" entries, train nothing')
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    RESULTS.mkdir(exist_ok=True)
    for name in args.names:
        if args.not_run:
            entry = not_run_entry(name)
        else:
            device = args.device or ("cuda" if CLAIMS[name]["scale"] == "gpu" else "cpu")
            threads = args.threads or (1 if device == "cpu" else None)  # one core per CPU worker
            entry = run_claim(name, args.workers, device, threads)
        (RESULTS / f"{name}.json").write_text(json.dumps(entry, indent=1) + "\n")
        print_table(entry)


if __name__ == "__main__":
    main()
