"""docker-compose and the Dockerfiles, checked statically (no Docker engine here), and each
service's command run natively."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hdetach.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_compose_has_the_whole_deployment():
    default = {name for name, service in SERVICES.items() if "profiles" not in service}
    assert default == {"postgres", "migrate", "api", "worker", "dashboard"}
    assert "pgdata" in COMPOSE["volumes"] and SERVICES["postgres"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert SERVICES["api"]["ports"] == ["${API_PORT:-8000}:8000"]
    assert SERVICES["dashboard"]["ports"] == ["${DASHBOARD_PORT:-8080}:8080"]
    assert SERVICES["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    gpu = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1 and gpu["capabilities"] == ["gpu"]


def test_ray_profile_has_a_head_with_the_driver_and_gpu_nodes():
    head, node = SERVICES["ray-head"], SERVICES["ray-worker"]
    assert head["profiles"] == node["profiles"] == ["ray"]
    assert "ray start --head --port=6379" in head["command"][-1]
    assert "exec hdetach ray-run --watch" in head["command"][-1]
    assert head["environment"]["HDETACH_RAY_ADDRESS"] == "auto"
    assert (
        head["environment"]["HDETACH_DATABASE_URL"] == SERVICES["api"]["environment"]["HDETACH_DATABASE_URL"]
    )
    assert node["command"] == ["ray", "start", "--address=ray-head:6379", "--block"]
    assert node["depends_on"]["ray-head"]["condition"] == "service_healthy"
    gpu = node["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    help_run = subprocess.run(
        [sys.executable, "-m", "hdetach", "ray-run", "--help"], capture_output=True, text=True, timeout=120
    )
    driver = head["command"][-1].split("exec ", 1)[1]
    assert all(option in help_run.stdout for option in re.findall(r"--[a-z-]+", driver))


def test_every_setting_is_in_env_example_and_compose_passes_them_on():
    example = env_example()
    settings = {f"HDETACH_{name.upper()}" for name in Settings.model_fields}
    assert settings <= set(example), settings - set(example)
    app_env = SERVICES["api"]["environment"]
    assert {k for k in app_env if k.startswith("HDETACH_")} <= settings
    interpolated = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert interpolated <= set(example), interpolated - set(example)


def test_no_secret_is_baked_into_an_image():
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert "PASSWORD" not in text and "API_TOKENS" not in text and "USER " in text  # and not root


@pytest.mark.parametrize("service", ["migrate", "api"])
def test_compose_commands_are_real_cli_commands(service):
    command = SERVICES[service]["command"]
    assert command[0] == "hdetach"
    help_run = subprocess.run(
        [sys.executable, "-m", "hdetach", *command[1:2], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert help_run.returncode == 0, help_run.stderr
    for option in (a for a in command[2:] if a.startswith("--")):
        assert option in help_run.stdout


def test_worker_command_options_exist():
    command = SERVICES["worker"]["command"][-1]
    help_run = subprocess.run(
        [sys.executable, "-m", "hdetach", "worker", "--help"], capture_output=True, text=True, timeout=120
    )
    assert all(option in help_run.stdout for option in re.findall(r"--[a-z-]+", command))


def test_migration_service_command_runs_natively(database_url):
    upgrade = subprocess.run(
        [sys.executable, "-m", "hdetach", "db", "upgrade", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    assert "database at head" in upgrade.stdout


def test_dockerfiles_lint_clean_with_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    assert len(files) == 4
    result = subprocess.run(
        [hadolint, "--ignore", "DL3008", "--ignore", "DL3013", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
