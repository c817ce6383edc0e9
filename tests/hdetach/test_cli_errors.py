"""Errors a person can act on, through the installed entry point: one line on stderr (one per field
for a spec), no traceback, and the exit code of its kind (hdetach.errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hdetach.errors import EXIT_DATABASE_UNREACHABLE, EXIT_NO_DATABASE, EXIT_USAGE

HDETACH = str(Path(sys.executable).parent / "hdetach")
ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/hdetach"  # nothing listens on port 1
# no HDETACH_* from the calling shell: each test says what it sets
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("HDETACH_")}


def hdetach(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [HDETACH, *args], capture_output=True, text=True, timeout=180, env={**CLEAN, **(env or {})}, cwd=cwd
    )


def assert_error_lines(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    """Exit `code`, one stderr line per needle, each holding its needle, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(needles), result.stderr[-3000:]
    for line, needle in zip(lines, needles, strict=True):
        assert line.startswith("error: ") and needle in line, line
    assert "Traceback" not in result.stdout + result.stderr


READ_COMMANDS = [
    ["studies", "list"],
    ["studies", "show", "1"],
    ["studies", "watch", "1"],
    ["status", "1"],
    ["summary", "1"],
    ["export", "1"],
    ["studies", "cancel", "1"],
    ["requeue", "1", "--failed"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path, command: list[str]):
    typo = tmp_path / "typo.db"
    result = hdetach(*command, "--database-url", f"sqlite:///{typo}")
    assert_error_lines(result, EXIT_NO_DATABASE, f"no SQLite database at {typo}")
    assert list(tmp_path.iterdir()) == []


def test_a_database_without_our_tables_says_to_upgrade_it(tmp_path: Path):
    import sqlite3

    with sqlite3.connect(tmp_path / "other.db") as connection:
        connection.execute("CREATE TABLE unrelated (x)")
    result = hdetach("summary", "1", "--database-url", f"sqlite:///{tmp_path / 'other.db'}")
    assert_error_lines(result, EXIT_NO_DATABASE, "holds no hdetach tables: run `hdetach db upgrade`")


@pytest.mark.parametrize(
    "command",
    [["status", "1"], ["submit", "--preset", "adding-T50-small"], ["db", "upgrade"], ["serve"]],
    ids=" ".join,
)
def test_an_unreachable_postgresql_is_one_line(command: list[str]):
    result = hdetach(*command, env={"HDETACH_DATABASE_URL": UNREACHABLE})
    assert_error_lines(result, EXIT_DATABASE_UNREACHABLE, f"database {UNREACHABLE} unreachable")


def test_an_unreachable_database_at_worker_and_ray_run_start_up_is_one_line():
    worker = hdetach("worker", "--wait-for-database", "0", "--database-url", UNREACHABLE)
    assert_error_lines(worker, EXIT_DATABASE_UNREACHABLE, "unreachable")
    ray = hdetach("ray-run", "1", "--database-url", UNREACHABLE)
    assert_error_lines(ray, EXIT_DATABASE_UNREACHABLE, "unreachable")


@pytest.mark.parametrize("command", [["status", "1"], ["worker"], ["ray-run", "1"]], ids=" ".join)
def test_an_unsupported_database_is_one_line(command: list[str]):
    from_env = hdetach(*command, env={"HDETACH_DATABASE_URL": "mysql://u@h/db"})
    assert_error_lines(from_env, EXIT_USAGE, "settings: HDETACH_DATABASE_URL: mysql is not supported")
    from_option = hdetach(*command, "--database-url", "mysql://u@h/db")
    assert_error_lines(from_option, EXIT_USAGE, "--database-url: mysql is not supported")


def test_every_bad_setting_is_named_on_its_own_line():
    env = {"HDETACH_LEASE_SECONDS": "-1", "HDETACH_MAX_ATTEMPTS": "zero"}
    assert_error_lines(
        hdetach("studies", "list", env=env),
        EXIT_USAGE,
        "settings: HDETACH_LEASE_SECONDS: ",
        "settings: HDETACH_MAX_ATTEMPTS: ",
    )


def test_the_example_env_file_lets_commands_run_and_only_serve_refuses_its_placeholder(tmp_path: Path):
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")  # production, with the placeholder token
    one_seed = ("--overrides", '{"seeds": [1]}')
    submitted = hdetach("submit", "--preset", "adding-T50-small", *one_seed, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    status = hdetach("status", submitted.stdout.strip(), cwd=tmp_path)
    assert status.returncode == 0 and "queued, 0/6 cells finished" in status.stdout, status.stderr
    assert_error_lines(hdetach("serve", cwd=tmp_path), EXIT_USAGE, "still holds the placeholder token")


def test_every_spec_error_is_shown_naming_its_field(tmp_path: Path):
    spec = {
        "name": "bad",
        "task": {"name": "copying", "T": 0},
        "model": {"hidden_size": 0},
        "variants": [{"name": "vanilla", "p_detach": 0.0}],
        "learning_rates": [-0.1],
        "seeds": [1],
        "budget": {"steps": 10, "eval_every": 5},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    url = f"sqlite:///{tmp_path / 'h.db'}"
    result = hdetach("submit", str(tmp_path / "spec.json"), "--database-url", url)
    assert_error_lines(
        result,
        EXIT_USAGE,
        "invalid spec: task.T: ",
        "invalid spec: model.hidden_size: ",
        "invalid spec: learning_rates.0: Input should be greater than 0",
    )


def test_an_empty_or_corrupt_sqlite_file_is_one_line_and_left_as_it_was(tmp_path: Path):
    empty, corrupt = tmp_path / "empty.db", tmp_path / "corrupt.db"
    empty.write_bytes(b"")
    corrupt.write_text("this is not a database\n" * 100)
    before = corrupt.read_bytes()
    result = hdetach("studies", "list", "--database-url", f"sqlite:///{empty}")
    assert_error_lines(result, EXIT_NO_DATABASE, "no SQLite database")
    assert empty.read_bytes() == b""  # not turned into a database by the read
    result = hdetach("studies", "list", "--database-url", f"sqlite:///{corrupt}")
    assert_error_lines(result, EXIT_NO_DATABASE, "cannot be read: file is not a database")
    assert corrupt.read_bytes() == before


def test_a_spec_file_that_is_not_json_text_and_overrides_that_are_not_an_object(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    binary, broken = tmp_path / "binary.json", tmp_path / "broken.json"
    binary.write_bytes(b"\xff\xfe{}")
    broken.write_text('{"seeds": [1, 2')

    def submit(*args: str) -> subprocess.CompletedProcess[str]:
        return hdetach("submit", *args, "--database-url", url)

    assert_error_lines(submit(str(binary)), EXIT_USAGE, "not UTF-8 text")
    assert_error_lines(submit(str(broken)), EXIT_USAGE, "broken.json: not JSON")
    assert_error_lines(submit(str(tmp_path)), EXIT_USAGE, "a directory")
    for overrides in ("[1]", "3", '"seeds"'):
        result = submit("--preset", "adding-T50-small", "--overrides", overrides)
        assert_error_lines(result, EXIT_USAGE, "--overrides must be a JSON object")
    huge = hdetach("studies", "show", str(2**31), "--database-url", url)
    assert huge.returncode == EXIT_USAGE and "2147483647" in huge.stderr and "Traceback" not in huge.stderr
    assert not (tmp_path / "h.db").exists()
