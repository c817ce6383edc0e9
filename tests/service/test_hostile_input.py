"""Hostile input at the gate: the spec, the token and the body size, over real HTTP on both databases.

Whatever the spec lets through must be usable downstream, so every value below is a 4xx naming the
field, with a JSON body, and writes nothing; a 5xx is always a bug.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from deployment.settings import Settings
from tests.service.conftest import TOKEN, Server, free_port, start, stop, wait_http
from tests.service.test_studies_api import SPEC

NAN, INF = float("nan"), float("inf")
LIMIT = 1 << 20  # the default HDETACH_MAX_BODY_BYTES


def with_change(path: str, value: Any) -> dict[str, Any]:
    """SPEC with the value at a dotted path replaced (a new copy)."""
    spec = json.loads(json.dumps(SPEC))
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return spec


# (what is changed, the value, the field the 422 must name)
HOSTILE_VALUES: list[tuple[str, Any, str]] = [
    # non-finite numbers: accepted and stored as null before, or a 422 that could not be serialised
    ("success.threshold", NAN, "threshold"),
    ("success.threshold", INF, "threshold"),
    ("success.threshold", -INF, "threshold"),
    ("training.eps", NAN, "eps"),
    ("training.eps", INF, "eps"),
    ("training.clip_norm", INF, "clip_norm"),
    ("training.clip_norm", NAN, "clip_norm"),
    ("training.beta1", NAN, "beta1"),
    ("training.p_off_fraction", NAN, "p_off_fraction"),
    ("learning_rates", [NAN], "learning_rates"),
    ("learning_rates", [0.01, INF], "learning_rates"),
    ("learning_rates", {"low": NAN, "high": 0.1, "num": 3}, "learning_rates"),
    ("learning_rates", {"low": 0.001, "high": INF, "num": 3}, "learning_rates"),
    ("variants", [{"name": "h-detach", "p_detach": NAN}], "p_detach"),
    # integers no column or generator can hold
    ("seeds", [2**31], "seeds"),
    ("seeds", [2**63], "seeds"),
    ("seeds", [2**64 + 1], "seeds"),
    ("task.data_seed", 2**63, "data_seed"),
    ("task.permutation_seed", 2**64, "permutation_seed"),
    ("task.n_val", 10**9, "n_val"),
    ("task.n_test", 10**12, "n_test"),
    ("model.hidden_size", 2**70, "hidden_size"),
    ("priority", 2**63, "priority"),
    # booleans and strings are not numbers, numbers are not booleans
    ("seeds", [True], "seeds"),
    ("seeds", [1, False], "seeds"),
    ("priority", True, "priority"),
    ("budget.steps", True, "steps"),
    ("task.T", "3", "T"),
    ("success.stop_on_success", 1, "stop_on_success"),
    ("learning_rates", [True], "learning_rates"),
    ("learning_rates", {"low": 0.001, "high": 0.1, "num": 3, "log": "yes"}, "learning_rates"),
    # text a database cannot store
    ("name", "nul\x00byte", "name"),
    ("name", "lone \ud800 surrogate", "name"),
    ("name", "\udfff", "name"),
    ("baseline", "vanilla\x00", "baseline"),
    ("task.mnist_root", "/data/\udc80", "mnist_root"),
    ("task.mnist_root", "/data\x00/mnist", "mnist_root"),
]

# raw bodies: what json.dumps would not write
HOSTILE_BODIES: list[tuple[str, str]] = [
    (json.dumps(SPEC).replace('"threshold": 0.3', '"threshold": 1e400'), "threshold"),
    (json.dumps(SPEC).replace('"seeds": [1, 2]', '"seeds": [1, 2.5e0]'), "seeds"),
    (json.dumps({**SPEC, "\ud800": 1}), "body"),  # a key that is not text: the body, and the key echoed
]


def body_of(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity as JavaScript literals, surrogates as \\uXXXX


def rejection_problem(response: httpx.Response, field: str) -> str | None:
    """Why the response is not a 422 with a plain-JSON body naming the field (None if it is)."""
    if response.status_code != 422:
        return f"{response.status_code} {response.text[:200]}"
    try:
        detail = json.loads(response.text, parse_constant=lambda c: 1 / 0)["errors"]  # no NaN allowed
    except (ValueError, ZeroDivisionError, KeyError) as error:
        return f"body is not plain JSON: {error!r}"
    locations = [".".join(map(str, e["loc"])) for e in detail]
    return None if any(field in loc for loc in locations) else f"field not named: {locations}"


def post_raw(api: httpx.Client, path: str, body: str) -> httpx.Response:
    content = body.encode("utf-8")  # json.dumps escaped every surrogate: plain UTF-8
    try:
        return api.post(path, content=content, headers={"Content-Type": "application/json"})
    except httpx.HTTPError as error:  # e.g. the server dropped the connection: report it like a 5xx
        return httpx.Response(599, text=f"no response: {error!r}")


def test_the_spec_refuses_what_nothing_downstream_can_use(server):
    api = server.client()
    problems = []
    for path, value, field in HOSTILE_VALUES:
        response = post_raw(api, "/studies", body_of(with_change(path, value)))
        if problem := rejection_problem(response, field):
            problems.append(f"{path}={value!r}: {problem}")
    for body, field in HOSTILE_BODIES:
        if problem := rejection_problem(post_raw(api, "/studies", body), field):
            problems.append(f"...{body[-40:]!r}: {problem}")
    # the same values as preset overrides
    for path, value, field in [h for h in HOSTILE_VALUES if h[2] in ("threshold", "seeds", "eps", "name")]:
        override: dict[str, Any] = {}
        node = override
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
        response = post_raw(api, "/presets/copying-T100-small/studies", body_of(override))
        if problem := rejection_problem(response, field):
            problems.append(f"preset override {path}={value!r}: {problem}")
    assert not problems, "\n".join(problems)
    assert api.get("/studies").json()["items"] == []  # nothing written
    assert api.post("/studies", json={**SPEC, "seeds": [0, 2**31 - 1]}).status_code == 201  # the bounds
    integral = json.dumps(SPEC).replace('"seeds": [1, 2]', '"seeds": [1, 2.0]').replace('"T": 3', '"T": 3e0')
    created = post_raw(api, "/studies", integral)  # JSON Schema's integers: 2.0 is 2
    assert created.status_code == 201, created.text
    assert api.get(f"/studies/{created.json()['id']}").json()["spec"]["seeds"] == [1, 2]


def test_settings_refuse_production_without_tokens_and_tokens_that_are_not_ascii():
    for tokens in ("", " , ,"):
        with pytest.raises(ValueError, match="HDETACH_API_TOKENS"):
            Settings(environment="production", api_tokens=tokens).for_serving()
    with pytest.raises(ValueError, match="ASCII"):
        Settings(api_tokens="ключ").for_serving()
    serving = Settings(environment="production", api_tokens="a-real-token").for_serving()
    assert serving.tokens() == {"a-real-token"}
    assert Settings().max_body_bytes == LIMIT


def test_production_with_no_token_refuses_to_start(tmp_path):
    env = {
        "HDETACH_ENVIRONMENT": "production",
        "HDETACH_API_TOKENS": "",
        "HDETACH_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
    }
    proc = start([sys.executable, "-m", "hdetach", "serve", "--port", str(free_port())], env)
    proc.wait(timeout=60)
    assert proc.returncode == 2 and "HDETACH_API_TOKENS" in stop(proc)


NON_ASCII_TOKENS = ["ключ".encode(), "t\xe9st".encode("latin-1"), b"\xff\xfe", TOKEN.encode() + b"\xc3\xa9"]


def test_a_non_ascii_token_is_a_403_never_a_500(server):
    for token in NON_ASCII_TOKENS:
        headers = {"Authorization": b"Bearer " + token}
        response = httpx.post(f"{server.url}/studies", json=SPEC, headers=headers, timeout=30)
        assert response.status_code == 403, (token, response.status_code, response.text)
        assert response.json()["detail"] == "token not accepted" and response.json()["status"] == 403
    assert httpx.get(f"{server.url}/studies", timeout=30).json()["items"] == []


def raw_request(server: Server, head: str, body: bytes = b"", wait: float = 10) -> tuple[int, bytes, float]:
    """Send a request head and (part of) a body over a plain socket; the status, the reply and the time
    the reply took. Used where the client must not send the whole body: the server must answer first."""
    host, port = server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    reply = b""
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
            while not complete(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except (TimeoutError, ConnectionError):
            pass  # the reply stays as far as it came
    elapsed = time.monotonic() - started
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0
    return status, reply, elapsed


def complete(reply: bytes) -> bool:
    """Whether a reply holds its head and the body its Content-Length announces."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return False
    lengths = [
        line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    ]
    return len(body) >= int(lengths[0]) if lengths else False


def post_head(path: str, token: str | None, extra: str) -> str:
    auth = f"Authorization: Bearer {token}\n" if token else ""
    return f"POST {path} HTTP/1.1\nHost: test\nContent-Type: application/json\n{auth}{extra}"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_write_without_a_good_token_is_refused_before_its_body_is_read(server, token):
    # 35 MB announced, 1 kB sent: the server must answer without waiting for the rest
    head = post_head("/studies", token, "Content-Length: 35000000\n")
    status, reply, elapsed = raw_request(server, head, b" " * 1000)
    assert status == (401 if token is None else 403), reply[:300]
    assert elapsed < 5


def test_a_body_over_the_limit_is_a_413_before_it_is_read(server):
    limit = LIMIT
    head = post_head("/studies", TOKEN, f"Content-Length: {35_000_000}\n")
    status, reply, elapsed = raw_request(server, head, b" " * 1000)
    assert status == 413 and b"bytes" in reply, reply[:300]
    assert elapsed < 5
    # chunked: no length announced, so the server counts what it reads, and stops past the limit
    chunk = b" " * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 2))
    head = post_head("/studies", TOKEN, "Transfer-Encoding: chunked\n")
    status, reply, elapsed = raw_request(server, head, chunks)
    assert status == 413, reply[:300]
    api = server.client()
    assert api.get("/studies").json()["items"] == []
    # just under the limit is a body like any other
    spec = json.dumps({**SPEC, "name": "padded"})
    padded = spec + " " * (limit - len(spec))
    created = api.post("/studies", content=padded, headers={"Content-Type": "application/json"})
    assert created.status_code == 201, created.text[:300]
    over = api.post("/studies", content=padded + " ", headers={"Content-Type": "application/json"})
    assert over.status_code == 413 and over.json()["detail"].startswith("request body")


@pytest.fixture
def locked_server(database_url) -> Iterator[Server]:
    port = free_port()
    env = {
        "HDETACH_API_TOKENS": TOKEN,
        "HDETACH_READ_REQUIRES_TOKEN": "true",
        "HDETACH_DATABASE_URL": database_url,
    }
    proc = start([sys.executable, "-m", "hdetach", "serve", "--port", str(port)], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        server = Server(f"http://127.0.0.1:{port}", database_url)
        yield server
        for client in server.clients:
            client.close()
    finally:
        assert TOKEN not in stop(proc)


LOCKED = ["/studies", "/studies/1", "/workers", "/presets", "/metrics", "/openapi.json", "/docs"]
LOCKED += ["/docs-assets/swagger-ui.css"]  # Swagger UI's own files, served by the app
OPEN = ["/healthz", "/readyz"]  # probes: they tell only that the process and its database are up


def test_when_reads_need_a_token_only_the_probes_stay_open(locked_server):
    anonymous = locked_server.client(token=None)
    for path in LOCKED:
        assert anonymous.get(path).status_code == 401, path
        assert locked_server.client(token="wrong").get(path).status_code == 403, path
    for token in NON_ASCII_TOKENS:
        response = httpx.get(f"{locked_server.url}/studies", headers={"Authorization": b"Bearer " + token})
        assert response.status_code == 403, (token, response.text)
    for path in OPEN:
        assert anonymous.get(path).status_code == 200, path
    api = locked_server.client()
    for path in LOCKED:
        assert api.get(path).status_code in (200, 404), path  # 404: study 1 does not exist
    assert "hdetach_jobs" in api.get("/metrics").text


def test_a_study_stored_before_the_spec_was_strict_reads_as_a_409_not_a_500(server):
    """The old gate stored a NaN threshold as null and let 64-bit seeds into SQLite."""
    from sqlalchemy import update

    from studies.db.engine import make_engine, session_factory, session_scope
    from studies.db.models import Study

    api = server.client()
    study_id = api.post("/studies", json=SPEC).json()["id"]
    engine = make_engine(server.database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            spec_json = session.get(Study, study_id).spec_json
            spec = json.loads(spec_json)
            spec["success"]["threshold"] = None
            session.execute(update(Study).where(Study.id == study_id).values(spec_json=json.dumps(spec)))
    finally:
        engine.dispose()
    for path in ["summary", "trials", "report", "plots/metric_vs_lr.svg"]:
        reply = api.get(f"/studies/{study_id}/{path}")
        assert reply.status_code == 409, (path, reply.text)
        assert "success.threshold" in reply.json()["detail"] and "delete it" in reply.json()["detail"]
    assert api.delete(f"/studies/{study_id}").status_code in (200, 204)
