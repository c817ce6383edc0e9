"""`hdetach demo`: the whole product on the embedded default, start to finish.

It starts the API and two local workers on a fresh SQLite file, submits a small copying study
over HTTP, shows progress, prints the robustness summary, saves the HTML report and its plots,
and says how to open optuna-dashboard on the same database. Every process it starts is stopped
on exit, Ctrl-C included.
"""

from __future__ import annotations

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
from rich.table import Table

DEMO_PRESET = "copying-T100-small"


def demo_overrides(steps: int) -> dict[str, Any]:
    return {"name": "demo-copying-small", "budget": {"steps": steps, "eval_every": max(1, steps // 6)}}


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


def run_demo(steps: int, workers: int, out_dir: Path, console: Console) -> Path:
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
        created = api.post(f"/presets/{DEMO_PRESET}/studies", json=demo_overrides(steps))
        created.raise_for_status()
        study = created.json()
        console.print(
            f"submitted study {study['id']} ({study['cells']} trials): vanilla vs h-detach, copying T=10"
        )
        for i in range(workers):
            _spawn(
                stack,
                ["worker", "--threads", "1", "--pack", "6", "--exit-when-idle"],
                env,
                run_dir / f"worker-{i}.log",
            )
        _follow(api, study["id"], study["cells"], console)
        summary = api.get(f"/studies/{study['id']}/summary").json()
        _print_summary(summary, console)
        report = run_dir / "report.html"
        html = api.get(f"/studies/{study['id']}/report").text
        for name in ("metric_vs_lr", "success_vs_lr", "learning_curves", "steps_to_threshold"):
            (run_dir / f"{name}.svg").write_bytes(api.get(f"/studies/{study['id']}/plots/{name}.svg").content)
            html = html.replace(f"/studies/{study['id']}/plots/{name}.svg", f"{name}.svg")
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


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"robustness summary: test {summary['metric']} (success: >= {summary['threshold']})")
    for column in (
        "variant",
        "success rate [95% CI]",
        "best lr",
        "mean at best lr",
        "worst seed at best lr",
        "robust lr range",
        "success AUC",
    ):
        table.add_column(column)
    for v in summary["variants"]:
        worst = v["worst_seed_at_best_lr"]
        robust = "–" if v["robust_lr_low"] is None else f"{v['robust_lr_low']:g}–{v['robust_lr_high']:g}"
        table.add_row(
            v["name"],
            f"{_fmt(v['success_rate'], '.2f')} [{_fmt(v['success_ci_low'], '.2f')}, "
            f"{_fmt(v['success_ci_high'], '.2f')}]",
            _fmt(v["best_lr"], "g"),
            _fmt(v["best_mean"]),
            "–" if worst is None else f"{worst['value']:.3f} (seed {worst['seed']})",
            robust,
            _fmt(v["success_auc"], ".2f"),
        )
    console.print(table)
    for c in summary["comparisons"]:
        console.print(
            f"{c['variant']} vs {c['baseline']}: mean difference {_fmt(c['mean_difference'], '+.3f')} "
            f"[{_fmt(c['mean_difference_ci_low'], '+.3f')}, {_fmt(c['mean_difference_ci_high'], '+.3f')}], "
            f"P(better) {_fmt(c['prob_improvement'], '.2f')}, Wilcoxon p {_fmt(c['wilcoxon_p'], '.3g')}, "
            f"{c['n_pairs']} pairs"
        )
