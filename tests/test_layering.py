"""The house's one-way dependencies, read from every import statement (function-level ones too),
and the core staying light to import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each package and the packages of ours it may import: the core, the deployment's settings and
# database handle, the two app layers standing on them, and the command line on top
MAY_IMPORT = {
    "studies": set(),
    "deployment": {"studies"},
    "workers": {"studies", "deployment"},
    "service": {"studies", "deployment"},
    "hdetach": {"studies", "deployment", "workers", "service"},
}


def our_imports(package: str) -> Iterator[tuple[str, str]]:
    """(file:line, package of ours) for every import in `package` of another package of ours."""
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in MAY_IMPORT and top != package:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", top


def test_every_package_of_ours_has_its_place_in_the_layers():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "scripts"}
    assert packages == set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = [
        f"{where} imports {top}" for where, top in our_imports(package) if top not in MAY_IMPORT[package]
    ]
    assert not wrong


def test_the_import_reader_sees_imports_inside_functions():
    found = dict(our_imports("hdetach"))
    assert "service" in found.values() and "workers" in found.values()  # cli.py imports them lazily


def loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    "module",
    ["studies", "studies.spec", "studies.queue", "studies.db", "studies.robustness", "deployment.backend"],
)
def test_core_modules_load_neither_the_app_layers_nor_torch(module):
    loaded = loaded_after(f"import {module}")
    assert not {m for m in loaded if m.split(".")[0] in ("service", "workers", "hdetach")}
    assert "torch" not in loaded  # the API process that only queues jobs must not pay for torch


def test_the_whole_core_still_loads_no_app_layer():
    loaded = loaded_after("import studies.training.trainer, studies.tracking, studies.tasks, studies.lstm")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("service", "workers", "hdetach")}
