"""The house's one-way dependencies: studies imports neither workers nor service, and stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    "module", ["studies", "studies.spec", "studies.queue", "studies.db", "studies.robustness"]
)
def test_core_modules_load_neither_the_app_layers_nor_torch(module):
    loaded = loaded_after(f"import {module}")
    assert not {m for m in loaded if m.split(".")[0] in ("service", "workers", "hdetach")}
    assert "torch" not in loaded  # the API process that only queues jobs must not pay for torch


def test_the_whole_core_still_loads_no_app_layer():
    loaded = loaded_after("import studies.training.trainer, studies.tracking, studies.tasks, studies.lstm")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("service", "workers", "hdetach")}
