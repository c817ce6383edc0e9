"""`--api URL`: every study command through the REST service (a real `hdetach serve`) prints what it
prints from the database, errors included; the token comes from HDETACH_API_TOKEN."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.hdetach.conftest import HDETACH, TINY, WIDE, hdetach, one_line_error
from tests.hdetach.test_cli_studies import _fail_for_good
from tests.service.conftest import free_port, start, stop, wait_http

TOKEN = "api-token-0123456789"


@pytest.fixture(scope="module")
def service(trained: tuple[str, int]) -> Iterator[str]:
    port = free_port()
    env = {"HDETACH_DATABASE_URL": trained[0], "HDETACH_API_TOKENS": TOKEN}
    server = start([HDETACH, "serve", "--port", str(port)], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def via_api(api: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in WIDE.items() if k not in ("HDETACH_API_TOKEN", "HDETACH_DATABASE_URL")}
    if token is not None:
        env["HDETACH_API_TOKEN"] = token
    command = [HDETACH, *args, "--api", api]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def test_read_commands_print_the_same_through_the_api(trained, service, tmp_path):
    url, study_id = trained
    for command in (
        ["studies", "list"],
        ["studies", "list", "--json"],
        ["studies", "show", str(study_id)],
        ["summary", str(study_id)],
        ["summary", str(study_id), "--json", "--robust-level", "0.5"],
        ["export", str(study_id), "--format", "json"],
        ["studies", "show", "999"],
    ):
        direct = hdetach(*command, url=url, env=WIDE)
        remote = via_api(service, *command)
        assert (remote.returncode, remote.stdout, remote.stderr) == (
            direct.returncode,
            direct.stdout,
            direct.stderr,
        ), command
    assert "no study with id 999" in direct.stderr and direct.returncode == 1

    saved = {}
    for source, run in (("db", lambda *a: hdetach(*a, url=url)), ("api", lambda *a: via_api(service, *a))):
        target = tmp_path / f"{source}.html"
        result = run("report", str(study_id), "-o", str(target))
        assert result.returncode == 0 and f"wrote {target}" in result.stdout, result.stderr
        saved[source] = target.read_text()
    assert saved["db"] == saved["api"]
    html = saved["api"]
    assert "tiny-copy" in html and html.count("data:image/svg+xml;base64,") == 5
    links = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert links and all(link.startswith(("data:", "#")) for link in links), links[:5]


def test_writes_go_through_the_api_with_the_token(trained, factory, service, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**TINY, "name": "via-api"}))
    submitted = via_api(service, "submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    study_id = int(submitted.stdout)
    assert via_api(service, "studies", "show", str(study_id)).stdout.splitlines() == [
        f"study {study_id} (via-api): queued, 0/4 cells finished",
        "  queued 4",
    ]
    requeued = via_api(service, "requeue", str(study_id), "--failed")
    assert requeued.stdout.strip() == f"study {study_id}: no failed cells; nothing queued (study queued)"
    _fail_for_good(factory, study_id, 2)
    requeued = via_api(service, "requeue", str(study_id), "--failed")
    assert requeued.stdout.strip() == f"study {study_id}: 2 failed cells queued again; study running"
    assert via_api(service, "studies", "cancel", str(study_id)).stdout.splitlines()[0] == (
        f"study {study_id} (via-api): cancelled, 4/4 cells finished"
    )
    one_line_error(via_api(service, "requeue", str(study_id), "--failed"), 1, "is cancelled")
    deleted = via_api(service, "studies", "delete", str(study_id), "--yes")
    assert deleted.stdout.strip() == f"deleted study {study_id} (via-api)"
    one_line_error(via_api(service, "studies", "show", str(study_id)), 1, f"no study with id {study_id}")

    for token in (None, "wrong-token"):
        refused = via_api(service, "submit", str(spec), token=token)
        one_line_error(refused, 8, "set HDETACH_API_TOKEN")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "seeds": [-1], "model": {"hidden_size": 0}}))
    direct = hdetach("submit", str(bad), url=trained[0])
    remote = via_api(service, "submit", str(bad))
    assert remote.returncode == direct.returncode == 2
    assert remote.stderr == direct.stderr and len(remote.stderr.splitlines()) == 2, remote.stderr
    for text, needle in (
        (json.dumps({**TINY, "success": {"metric": "accuracy", "threshold": float("nan")}}), "threshold"),
        ('{"name": "broken', "not JSON"),
    ):
        bad.write_text(text)
        direct, remote = hdetach("submit", str(bad), url=trained[0]), via_api(service, "submit", str(bad))
        assert (remote.returncode, remote.stderr) == (direct.returncode, direct.stderr), text
        one_line_error(remote, 2, needle)


def test_api_errors_are_one_line(trained, service):
    one_line_error(via_api("http://127.0.0.1:1", "studies", "list"), 8, "API http://127.0.0.1:1 unreachable")
    for wrong in (f"{service}/api", f"{service}/studies"):  # answers, but is not the service's root
        for command in (["studies", "list"], ["studies", "show", "1"]):
            one_line_error(via_api(wrong, *command), 8, "does not answer as an hdetach-studies service")
    one_line_error(via_api("http://[::1", "studies", "list"), 2, "--api http://[::1")
    one_line_error(via_api("ftp://127.0.0.1", "studies", "list"), 2, "give the service's URL")
    for token in ("ключ", "tok\nen"):
        refused = via_api(service, "studies", "list", token=token)
        one_line_error(refused, 2, "not printable ASCII")
        assert token not in refused.stderr
    too_big = str(2**31)  # ids are 32-bit: a usage error either way
    direct = hdetach("studies", "show", too_big, url=trained[0])
    remote = via_api(service, "studies", "show", too_big)
    assert remote.returncode == direct.returncode == 2
    assert all("2147483647" in r.stderr for r in (direct, remote))
    both = subprocess.run(
        [HDETACH, "studies", "list", "--api", "http://127.0.0.1:1", "--database-url", trained[0]],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    one_line_error(both, 2, "not both")
