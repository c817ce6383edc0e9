"""The one-shot GPU check can run as written: its scripts and flags exist, its wheels match the pins.

What it measures needs a GPU (benchmarks/gpu/check.sh); this only keeps it from rotting here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu" / "check.sh"


def test_the_script_parses_and_every_python_script_it_runs_exists_and_takes_its_flags():
    assert subprocess.run(["bash", "-n", str(CHECK)], check=False).returncode == 0
    text = CHECK.read_text()
    scripts = set(re.findall(r"\$py ((?:benchmarks|tests)/\S+\.py)", text))
    assert scripts == {
        "benchmarks/bench_lstm.py",
        "benchmarks/gpu/cuda_vs_cpu.py",
        "benchmarks/gpu/study_e2e.py",
    }
    for script in scripts:
        helped = subprocess.run(
            [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True
        )
        assert helped.returncode == 0, helped.stderr
        for flag in re.findall(rf"{re.escape(script)}([^\n]*(?:\\\n[^\n]*)*)", text)[0].split():
            if flag.startswith("--"):
                assert flag in helped.stdout, (script, flag)
    assert (ROOT / "tests" / "studies" / "test_cuda.py").is_file()


def test_the_wheels_it_installs_are_the_versions_the_tests_run():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    wanted = [
        line.split("==")
        for line in (ROOT / "benchmarks" / "gpu" / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    assert wanted
    for name, version in wanted:
        assert pins[re.sub(r"[-_.]+", "-", name).lower()] == version, name
    assert "/benchmarks/gpu/wheels/" in (ROOT / ".gitignore").read_text().splitlines()
