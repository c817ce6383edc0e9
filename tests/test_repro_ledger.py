"""The reproduction ledger (benchmarks/repro) stays honest: specs valid, results match their specs.

No training here: a spec changed without its study being run again fails, because the committed
result still carries the spec it was run with.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from studies.spec import StudySpec

REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "repro"
SPECS = sorted((REPRO / "specs").glob("*.json"))
RESULTS = sorted((REPRO / "results").glob("*.json"))


def _claims() -> dict:
    module_spec = importlib.util.spec_from_file_location("repro_claims", REPRO / "claims.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.CLAIMS


def test_the_ledger_has_specs_and_a_claim_for_each():
    assert {p.stem for p in SPECS} >= {"adding-high-lr", "adding-no-clip", "copying-cpu"}
    assert {p.stem for p in SPECS} == set(_claims())


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_validates(path):
    StudySpec.model_validate_json(path.read_text())


def test_every_spec_has_a_result():
    assert {p.stem for p in RESULTS} == {p.stem for p in SPECS}


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.stem)
def test_result_was_run_with_the_committed_spec(path):
    result = json.loads(path.read_text())
    spec_file = Path(__file__).resolve().parents[1] / result["spec_file"]
    assert spec_file.stem == path.stem == result["name"]
    assert result["spec"] == json.loads(spec_file.read_text()), "spec changed since this result: re-run it"
    assert result["status"] in ("run", "not yet run")
    if result["status"] == "run":
        assert (
            sum(v["trials"] for v in result["variants"]) == StudySpec.model_validate(result["spec"]).grid_size
        )
        assert result["git_commit"] and result["wall_time_s"] > 0


def test_runner_help():
    done = subprocess.run(
        [sys.executable, str(REPRO / "run.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--workers" in done.stdout and "adding-high-lr" in done.stdout
