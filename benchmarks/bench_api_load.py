"""Load one API process holds: submits per second and robustness summaries per second, p50 and p99.

Starts one real `hdetach serve` (uvicorn, one process) on a fresh database, and a finished study
whose comparisons have ties and 12 pairs each (3 variants x 3 learning rates x 4 seeds, metrics on
a 0.01 grid; its results recorded straight through the queue: claim, complete). Then `--clients`
concurrent HTTP clients (threads, one httpx.Client each, keep-alive) run each phase for
`--seconds`:

- submit: POST /studies with a small valid spec (8 cells) and the token;
- summary, computed: GET /studies/{id}/summary?robust_level=... with a new level per request, so each one
  computes the summary (what the first request for a finished study costs);
- summary, kept: GET /studies/{id}/summary, the same URL every time (a finished study's summary
  is kept in the API process).

Throughput is completed requests over the phase's wall time; latencies are per request, as the
client sees them. Every response must succeed.

    python benchmarks/bench_api_load.py [--url sqlite | postgresql://...] [--clients 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _databases import fresh_database

from studies import queue
from studies.db.engine import make_engine, session_factory

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789"
SMALL_SPEC = {
    "name": "bench-submit",
    "task": {"name": "copying", "T": 3, "n_val": 16, "n_test": 32},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.003, 0.03],
    "seeds": [1, 2],
    "budget": {"steps": 9, "eval_every": 3, "batch_size": 4},
}
SEEDS = [1, 2, 3, 4]
TIED_SPEC = {
    **SMALL_SPEC,
    "name": "bench-tied",
    "variants": [
        {"name": "vanilla", "p_detach": 0.0},
        {"name": "h-detach", "p_detach": 0.5},
        {"name": "h-detach-25", "p_detach": 0.25},
    ],
    "learning_rates": [0.001, 0.003, 0.01],
    "seeds": SEEDS,
}
# paired differences (variant - vanilla) per (lr, seed) cell, in grid order: mixed signs, ties, no zeros
DELTAS = {
    "h-detach": [0.02, -0.01, 0.03, 0.01, 0.02, -0.02, 0.01, 0.03, -0.01, 0.02, 0.01, 0.04],
    "h-detach-25": [-0.01, 0.01, 0.02, -0.02, 0.01, 0.01, -0.03, 0.02, 0.01, -0.01, 0.02, 0.03],
}
PHASES = ["submit", "summary, computed", "summary, kept"]
BASE = {0.001: 0.50, 0.003: 0.60, 0.01: 0.55}


def tied_accuracy(variant: str, lr: float, seed: int) -> float:
    """On a 0.01 grid; the baseline's metric depends on lr only, so equal deltas tie exactly."""
    cell = sorted(BASE).index(lr) * len(SEEDS) + SEEDS.index(seed)
    return round(BASE[lr] + (DELTAS[variant][cell] if variant in DELTAS else 0.0), 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "HDETACH_API_TOKENS": TOKEN, "HDETACH_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "hdetach", "serve", "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise TimeoutError("the API did not start")


def finished_tied_study(url: str, database_url: str) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    study_id = httpx.post(f"{url}/studies", json=TIED_SPEC, headers=headers, timeout=60).json()["id"]
    engine = make_engine(database_url)
    factory = session_factory(engine)
    while claimed := queue.claim(factory, "bench", 16, lease_seconds=600):
        results = [(job.job_id, job.lease_token, job) for job in claimed]
        queue.complete_many(
            factory,
            [
                (
                    job_id,
                    token,
                    {"status": "completed", "final": {"accuracy": tied_accuracy(j.variant, j.lr, j.seed)}},
                )
                for job_id, token, j in results
            ],
        )
    engine.dispose()
    summary = httpx.get(
        f"{url}/studies/{study_id}/summary", params={"robust_level": 0.81}, timeout=120
    ).json()
    assert summary["complete"] and [c["n_pairs"] for c in summary["comparisons"]] == [12, 12], summary
    return study_id


def load(
    url: str, clients: int, seconds: float, request: Callable[[httpx.Client, int], httpx.Response]
) -> dict[str, Any]:
    """`clients` threads send requests back to back for `seconds`; request(client, i) sends the i-th."""
    latencies: list[float] = []
    counter = iter(range(10**9))
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client_loop() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as client:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter)
                started = time.perf_counter()
                response = request(client, i)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                with lock:
                    latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = sorted(1000 * t for t in latencies)
    return {
        "requests": len(ms),
        "wall_s": wall,
        "per_second": len(ms) / wall,
        "p50_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "max_ms": ms[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="sqlite", help="'sqlite' (a new file) or a PostgreSQL server URL")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=PHASES, help="default: all")
    parser.add_argument("--out", type=Path, default=None, help="default: results/api_load_<backend>.json")
    args = parser.parse_args()
    backend = "sqlite" if args.url.startswith("sqlite") else "postgresql"

    with fresh_database(args.url) as database_url:
        server, url = start_server(database_url)
        try:
            study_id = finished_tied_study(url, database_url)
            summary_url = f"/studies/{study_id}/summary"
            phases = {
                "submit": lambda c, i: c.post("/studies", json={**SMALL_SPEC, "name": f"bench-{i}"}),
                "summary, computed": lambda c, i: c.get(
                    summary_url, params={"robust_level": 0.5 + (i % 4000) / 10_000}
                ),
                "summary, kept": lambda c, i: c.get(summary_url),
            }
            results = {
                name: load(url, args.clients, args.seconds, request) for name, request in phases.items()
            }
            kept = httpx.get(f"{url}{summary_url}", timeout=60)
            wilcoxon = [(c["wilcoxon_p"], c.get("wilcoxon_method")) for c in kept.json()["comparisons"]]
        finally:
            server.terminate()
            server.wait(timeout=30)

    print(f"one API process ({backend}), {args.clients} clients, {args.seconds:g} s per phase")
    print(f"{'phase':<20} {'requests':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in results.items():
        print(
            f"{name:<20} {r['requests']:>8} {r['per_second']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
        )
    print(f"Wilcoxon (p, method) per comparison: {wilcoxon}")
    print(f"summary response: X-Cache {kept.headers.get('x-cache')}, ETag {kept.headers.get('etag')}")

    out = args.out or Path(__file__).parent / "results" / f"api_load_{backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "backend": backend,
        "clients": args.clients,
        "seconds_per_phase": args.seconds,
        "study": {"variants": 3, "lrs": 3, "seeds": 4, "pairs_per_comparison": 12, "wilcoxon": wilcoxon},
        "phases": results,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
