"""Each package's `__all__` is what it really exports (as httpx's test_exported_members).

Every package under the top-level packages that pyproject ships is checked. A package's own
names are the public names its `__init__.py` binds: imports from the project, definitions,
assignments, the names under `if TYPE_CHECKING:` that mirror what it loads lazily, and the keys
of a lazy table (a dict of name -> project module). Every own name is listed in `__all__`, every
listed name can be got from the package, none twice. A package without `__all__` exports nothing
of its own. What `__init__` imports from outside the project (typing, importlib, __future__) is
not part of its face. Order is ruff's (RUF022), checked by `ruff check`.
"""

from __future__ import annotations

import ast
import importlib
import tomllib
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the top-level packages the distribution ships (pyproject's setuptools include patterns)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = tuple(p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"])
PACKAGES = sorted(
    ".".join(init.parent.relative_to(ROOT).parts)
    for top in PROJECT
    for init in (ROOT / top).rglob("__init__.py")
)


def in_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def bindings(source: str) -> tuple[set[str], set[str]]:
    """The names a module's top level binds: (its own, those imported from outside the project)."""
    own: set[str] = set()
    foreign: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.ImportFrom):
                project = node.level > 0 or in_project(node.module or "")
                for alias in node.names:
                    (own if project else foreign).add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    name = alias.asname or alias.name.split(".")[0]
                    (own if in_project(alias.name) else foreign).add(name)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                own.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
                if isinstance(node.value, ast.Dict):  # a lazy table: name -> project module
                    pairs = zip(node.value.keys, node.value.values, strict=True)
                    own.update(
                        key.value
                        for key, value in pairs
                        if isinstance(key, ast.Constant)
                        and isinstance(key.value, str)
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                        and in_project(value.value)
                    )
            elif isinstance(node, ast.If | ast.Try):  # if TYPE_CHECKING:, try/except ImportError
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(source).body)
    return own, foreign


def public(names: set[str]) -> set[str]:
    return {name for name in names if not name.startswith("_")}


def exported(package: ModuleType) -> list[str]:
    return list(getattr(package, "__all__", []))


def test_every_package_is_checked():
    assert {
        "studies",
        "studies.queue",
        "studies.robustness",
        "studies.training",
        "service",
        "workers",
    } <= set(PACKAGES)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_lists_each_name_once(name: str) -> None:
    package = importlib.import_module(name)
    assert [n for n, count in Counter(exported(package)).items() if count > 1] == []


@pytest.mark.parametrize("name", PACKAGES)
def test_every_listed_name_exists(name: str) -> None:
    package = importlib.import_module(name)
    assert [n for n in exported(package) if not hasattr(package, n)] == []


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_is_listed(name: str) -> None:
    package = importlib.import_module(name)
    assert package.__file__ is not None
    own, foreign = bindings(Path(package.__file__).read_text())
    listed = set(exported(package))
    assert sorted(public(own) - listed) == []
    # and what got into the namespace otherwise (not a submodule, not imported from outside)
    present = {n for n, value in vars(package).items() if not isinstance(value, ModuleType)}
    assert sorted(public(present) - foreign - listed) == []


def test_studies_faces_load_on_first_use():
    import studies

    for face in ("queue", "results", "robustness", "tracking"):
        module = getattr(studies, face)
        assert isinstance(module, ModuleType) and module.__name__ == f"studies.{face}"
