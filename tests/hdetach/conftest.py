"""What the CLI's tests share: the installed entry point, a tiny spec, and one study a real worker
trained (session-wide: training it is most of these tests' time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studies.db import make_engine, session_factory

HDETACH = str(Path(sys.executable).parent / "hdetach")  # the console script pyproject.toml installs
TINY = {
    "name": "tiny-copy",
    "task": {"name": "copying", "T": 5},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.01],
    "seeds": [1, 2],
    "budget": {"steps": 20, "eval_every": 10, "batch_size": 8},
    "success": {"metric": "accuracy", "threshold": 0.5},
}


WIDE = {**os.environ, "COLUMNS": "200"}  # a table row per line


def hdetach(*args: str, url: str | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    extra = ["--database-url", url] if url else []
    return subprocess.run([HDETACH, *args, *extra], capture_output=True, text=True, timeout=180, **kwargs)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def submit(url: str, spec: dict, tmp_path: Path) -> int:
    path = tmp_path / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    result = hdetach("submit", str(path), url=url)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A SQLite database holding one study whose 4 cells a real worker trained (once per run: the
    tests that use it add studies of their own beside it)."""
    tmp = tmp_path_factory.mktemp("trained")
    url = f"sqlite:///{tmp / 'h.db'}"
    study_id = submit(url, TINY, tmp)
    worker = hdetach("worker", "--exit-when-idle", "--threads", "1", "--pack", "4", url=url)
    assert worker.returncode == 0, worker.stderr[-2000:]
    return url, study_id


@pytest.fixture
def factory(trained: tuple[str, int]):
    engine = make_engine(trained[0])
    yield session_factory(engine)
    engine.dispose()
