"""The `hdetach` command line, run as a real process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HDETACH = [sys.executable, "-m", "hdetach"]
TINY = ["--T", "3", "--steps", "6", "--eval-every", "3", "--hidden-size", "8", "--batch-size", "4"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HDETACH, *args], capture_output=True, text=True, timeout=120)


def test_train_json_packs_every_lr_and_seed():
    result = run("train", *TINY, "--lr", "1e-3", "--lr", "1e-2", "--seed", "1", "--seed", "2", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    trials = out["trials"]
    assert sorted((t["params"]["lr"], t["params"]["seed"]) for t in trials) == [
        (1e-3, 1),
        (1e-3, 2),
        (1e-2, 1),
        (1e-2, 2),
    ]
    assert all(t["status"] == "completed" and 0.0 <= t["final"]["accuracy"] <= 1.0 for t in trials)
    assert all(len(t["curve"]) == 2 for t in trials)


def test_train_prints_one_row_per_trial():
    result = run("train", *TINY, "--variant", "vanilla", "--variant", "h-detach")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("completed") == 2
    assert "vanilla" in result.stdout and "h-detach" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "-0.1"], "lr"),
        (["--p-detach", "1.5"], "p_detach"),
        (["--task", "sorting"], "unknown task"),
        (["--variant", "zoneout"], "unknown variant"),
        (["--steps", "0"], "steps"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_code_2(args, needle):
    result = run("train", *TINY, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert result.stdout == ""


def test_missing_mnist_directory_is_a_clear_error(tmp_path: Path):
    result = run("train", "--task", "pixel_mnist", "--mnist-root", str(tmp_path), "--steps", "1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte" in lines[0]


SPEC = {
    "name": "copy-T20-small",
    "task": {"name": "copying", "T": 20},
    "model": {"hidden_size": 32},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.001, 0.01],
    "seeds": [1, 2],
    "budget": {"steps": 60, "eval_every": 20, "batch_size": 16},
    "success": {"metric": "accuracy", "threshold": 0.99},
}


def test_submit_then_status(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    submitted = run("submit", str(spec_file), "--database-url", url)
    assert submitted.returncode == 0, submitted.stderr
    study_id = submitted.stdout.strip()
    status = run("status", study_id, "--database-url", url, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["name"] == "copy-T20-small" and info["status"] == "queued" and info["jobs"]["queued"] == 8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"learning_rates": [-0.1]}, "learning_rates"),
        ({"variants": [{"name": "vanilla", "p_detach": 1.5}]}, "variants"),
        ({"task": {"name": "sorting"}}, "task"),
        ({"budget": {"steps": 0}}, "budget.steps"),
        ({"seeds": []}, "seeds"),
    ],
)
def test_bad_spec_is_rejected_naming_the_field_and_writes_nothing(tmp_path: Path, change, field):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**SPEC, **change}))
    result = run("submit", str(spec_file), "--database-url", url)
    assert result.returncode == 2
    assert field in result.stderr and len(result.stderr.strip().splitlines()) == 1
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
        if "hd_studies" in tables:
            assert conn.execute(text("SELECT count(*) FROM hd_studies")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM hd_jobs")).scalar() == 0
    engine.dispose()


def test_demo_runs_the_whole_product_trials_learn_and_cleans_up(tmp_path: Path):
    # one seed per learning rate (6 trials, ~45 s on 2 cores); the full demo runs 3 seeds (18 trials)
    result = subprocess.run(
        [*HDETACH, "demo", "--seeds", "1", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "COLUMNS": "200"},  # one printed line per line
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "robustness summary: test mse (success: <= 0.01)" in out
    # both variants learn at some learning rate: the success counts are parsed from the printed lines
    for variant in ("vanilla", "h-detach"):
        (line,) = [line for line in out.splitlines() if line.startswith(f"  {variant}: lr ")]
        counts = re.findall(r"lr [0-9.e-]+: (\d+)/(\d+)", line)
        assert len(counts) == 3 and all(n == "1" for _, n in counts), line
        assert sum(int(k) for k, _ in counts) >= 1, line
        assert "robust lr range: " in line
    assert "paired comparison, h-detach vs vanilla" in out and "3 pairs" in out and "Wilcoxon p" in out
    assert "It does not test the paper's claims" in out
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.html").read_text()
    assert "demo-adding-T50" in report
    for plot in ("metric_vs_lr", "success_vs_lr", "learning_curves", "steps_to_threshold"):
        assert f'src="{plot}.svg"' in report
        assert (run_dir / f"{plot}.svg").read_bytes().lstrip().startswith(b"<?xml")
    assert f"optuna-dashboard sqlite:///{run_dir.resolve()}/hdetach.db" in out
    leftover = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""  # the API and the workers are gone


def test_presets_and_submit_by_preset(tmp_path: Path):
    listing = run("presets", "--json")
    assert listing.returncode == 0 and "copying-T300-small" in json.loads(listing.stdout)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    submitted = run(
        "submit", "--preset", "pixel-mnist-small", "--overrides", '{"seeds": [3]}', "--database-url", url
    )
    assert submitted.returncode == 0, submitted.stderr
    status = json.loads(run("status", submitted.stdout.strip(), "--database-url", url, "--json").stdout)
    assert status["jobs"]["queued"] == 6
    unknown = run("submit", "--preset", "nope", "--database-url", url)
    assert unknown.returncode == 2 and "unknown preset" in unknown.stderr
    # the full MNIST preset on a machine without MNIST: one line naming what is missing, nothing queued
    refused = run("submit", "--preset", "pixel-mnist", "--database-url", url)
    assert refused.returncode == 2 and "HDETACH_MNIST_DIR" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    table = run("presets")
    assert table.returncode == 0 and "pixel-mnist: h-detach: 98.5% test accuracy" in table.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["1", "--watch"], "not both"),
        (["--cpus-per-pack", "0"], "some CPUs or GPUs"),
        (["--address", "ray://head:10001"], "Ray Client addresses"),
    ],
)
def test_ray_run_refuses_bad_arguments_in_one_line(tmp_path: Path, args, needle):
    result = run("ray-run", "--database-url", f"sqlite:///{tmp_path / 'r.db'}", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
