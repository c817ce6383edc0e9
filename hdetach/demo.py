"""`hdetach demo`: the whole product on the embedded default, start to finish.

It starts the API and two local workers on a fresh SQLite file, submits the `adding-T50-small`
study over HTTP (vanilla vs h-detach on the adding problem, T=50, three learning rates up to 0.1),
shows progress, prints the robustness summary, what it shows and what it does not, saves the HTML
report and its plots, and says how to open optuna-dashboard on the same database. Every process it
starts is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import math
import secrets
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hdetach.summary_text import join_words, print_summary, summary_lines

DEMO_PRESET = "adding-T50-small"
DEMO_NAME = "demo-adding-T50"


def demo_overrides(steps: int, seeds: int) -> dict[str, Any]:
    """The preset's changes for `hdetach demo --steps N --seeds S`: seeds 1..S, 15 evaluations."""
    return {
        "name": DEMO_NAME,
        "seeds": list(range(1, seeds + 1)),
        "budget": {"steps": steps, "eval_every": max(1, steps // 15)},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(stack: ExitStack, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    import os

    handle = stack.enter_context(log.open("wb"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hdetach", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the API server exited during start-up")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API at {url} did not become ready in {timeout:.0f} s")


def run_demo(steps: int, workers: int, out_dir: Path, console: Console, seeds: int = 3) -> Path:
    """Run the demo; returns the folder holding the database, the report and the logs."""
    run_dir = out_dir / datetime.now().strftime("demo-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{(run_dir / 'hdetach.db').resolve()}"
    token = secrets.token_hex(16)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"HDETACH_DATABASE_URL": database_url, "HDETACH_API_TOKENS": token, "HDETACH_POLL_SECONDS": "0.5"}
    with ExitStack() as stack:
        server = _spawn(stack, ["serve", "--port", str(port)], env, run_dir / "api.log")
        _wait_ready(url, server)
        console.print(f"API at {url} (database {database_url})")
        api = stack.enter_context(
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        )
        created = api.post(f"/presets/{DEMO_PRESET}/studies", json=demo_overrides(steps, seeds))
        created.raise_for_status()
        study = created.json()
        spec = api.get(f"/studies/{study['id']}").json()["spec"]
        console.print(f"submitted study {study['id']} ({study['cells']} trials): {_describe_spec(spec)}")
        pack = math.ceil(study["cells"] / workers)  # one pack per worker: each keeps one core busy
        for i in range(workers):
            _spawn(
                stack,
                ["worker", "--threads", "1", "--pack", str(pack), "--exit-when-idle"],
                env,
                run_dir / f"worker-{i}.log",
            )
        _follow(api, study["id"], study["cells"], console)
        summary = api.get(f"/studies/{study['id']}/summary").json()
        print_summary(summary, console)
        for line in what_it_shows(summary, spec):
            console.print(line, markup=False)  # "[95% CI ...]" is text, not a style
        report = run_dir / "report.html"
        html = api.get(f"/studies/{study['id']}/report").text
        from service.plots import PLOT_NAMES

        for name in PLOT_NAMES:
            (run_dir / f"{name}.svg").write_bytes(api.get(f"/studies/{study['id']}/plots/{name}.svg").content)
            html = html.replace(f'src="plots/{name}.svg"', f'src="{name}.svg"')
        report.write_text(html)
    console.print(f"report: {report.resolve()}")
    console.print(f"dashboard: .venv/bin/optuna-dashboard {database_url}")
    return run_dir


def _follow(api: httpx.Client, study_id: int, cells: int, console: Console) -> None:
    with Progress(
        TextColumn("[bold]trials"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} done"),
        TextColumn("{task.fields[running]} running"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("trials", total=cells, running=0)
        while True:
            info = api.get(f"/studies/{study_id}").json()
            jobs = info["jobs"]
            finished = jobs["done"] + jobs["failed"] + jobs["cancelled"]
            progress.update(bar, completed=finished, running=jobs["running"])
            if info["status"] in ("done", "failed", "cancelled"):
                return
            time.sleep(1.0)


def _describe_spec(spec: dict[str, Any]) -> str:
    task, budget = spec["task"], spec["budget"]
    variants = " vs ".join(
        v["name"] if v["p_detach"] == 0 else f"{v['name']} p={v['p_detach']:g}" for v in spec["variants"]
    )
    lrs = ", ".join(f"{lr:g}" for lr in spec["learning_rates"])
    return (
        f"{variants}, {task['name']} T={task['T']}, hidden {spec['model']['hidden_size']}, "
        f"batch {budget['batch_size']}, {budget['steps']} steps, lr {lrs}, seeds {spec['seeds']}"
    )


def what_it_shows(summary: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """The lines printed after the summary table: the summary's own lines (successes per learning
    rate, the paired comparison, caveats), then what the demo's run shows and does not. Every
    number comes from `summary` and `spec`."""
    return [*summary_lines(summary), "", *_meaning(summary, spec)]


def _meaning(summary: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    variants = summary["variants"]
    by_lr: dict[float, list[tuple[str, int, int]]] = {}
    for v in variants:
        for s in v["lrs"]:
            by_lr.setdefault(s["lr"], []).append((v["name"], s["successes"], s["seeds_run"]))
    differ = [lr for lr, cells in sorted(by_lr.items()) if len({(k, n) for _, k, n in cells}) > 1]
    same = [lr for lr in sorted(by_lr) if lr not in differ]

    def at(lr: float) -> str:
        (first, k, n), *rest = by_lr[lr]
        others = [f"{name} on {k2} of {n2}" for name, k2, n2 in rest]
        return f"{first} succeeded on {k} of {n} seeds" + (f" and {join_words(others)}" if others else "")

    def each(lr: float) -> str:
        _, k, n = by_lr[lr][0]
        return f"{lr:g} ({k} of {n} each)"

    if not differ:
        result = (
            "In this run the variants succeeded equally often at every learning rate: "
            f"lr {join_words([each(lr) for lr in same])}."
        )
    else:
        result = "In this run, " + "; ".join(f"at lr {lr:g} {at(lr)}" for lr in differ)
        if same:
            result += f"; at lr {join_words([each(lr) for lr in same])} they did equally well"
        result += "."
    task, budget = spec["task"], spec["budget"]
    n_seeds = len(spec["seeds"])
    scope = (
        f"What this measures is robustness to a high learning rate on the {task['name']} problem at one "
        f"length (T={task.get('T')}), with {n_seeds} seed{'s' if n_seeds != 1 else ''} per rate and "
        f"{budget['steps']} steps on a CPU: with so few seeds, a difference of a seed or two is weak "
        "evidence (see the intervals and the Wilcoxon p above)."
    )
    limits = (
        "It does not test the paper's claims (copying at T=100-300, pixel and permuted MNIST), which "
        "need GPU budgets: submit the copying-T100 or pixel-mnist presets to GPU workers for those."
    )
    return [result, scope, limits]
