"""A real API server (uvicorn in a subprocess) on a real database, and helpers to drive it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    url: str
    database_url: str
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        """An HTTP client for the server (closed with the fixture)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.clients.append(httpx.Client(base_url=self.url, headers=headers, timeout=60))
        return self.clients[-1]


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a server process whose output goes to a temporary file: a pipe nobody reads would
    fill up with access-log lines and block the server."""
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen[str]) -> str:
    log = proc.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read()


def stop(proc: subprocess.Popen[str]) -> str:
    """Terminate the process and return everything it printed."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = output(proc)
    proc.log.close()  # type: ignore[attr-defined]
    return text


@pytest.fixture
def server(database_url) -> Iterator[Server]:
    port = free_port()
    env = {"HDETACH_API_TOKENS": TOKEN, "HDETACH_DATABASE_URL": database_url}
    proc = start([sys.executable, "-m", "hdetach", "serve", "--port", str(port)], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        server = Server(url, database_url)
        yield server
        for client in server.clients:
            client.close()
    finally:
        output = stop(proc)
        assert TOKEN not in output  # tokens are never logged


def run_worker(database_url: str, timeout: float = 240) -> str:
    cmd = [
        sys.executable,
        "-m",
        "hdetach",
        "worker",
        "--database-url",
        database_url,
        "--threads",
        "1",
        "--pack",
        "8",
        "--exit-when-idle",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr
