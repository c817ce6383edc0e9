"""The REST API over real HTTP on SQLite and PostgreSQL, with a real worker finishing a tiny study."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

import httpx
import pytest
from fastapi.routing import APIRoute

from deployment.settings import Settings
from service.app import create_app
from service.deps import require_write
from studies import queue
from studies.db.engine import make_engine, session_factory
from studies.tracking import open_storage
from tests.service.conftest import TOKEN, free_port, run_worker, start, stop, wait_http

SPEC = {
    "name": "api-tiny",
    "task": {"name": "copying", "T": 3, "n_val": 16, "n_test": 32},
    "model": {"hidden_size": 8},
    "variants": [{"name": "vanilla", "p_detach": 0.0}, {"name": "h-detach", "p_detach": 0.5}],
    "learning_rates": [0.003, 0.03],
    "seeds": [1, 2],
    "budget": {"steps": 9, "eval_every": 3, "batch_size": 4, "eval_batch_size": 32},
    "success": {"metric": "accuracy", "threshold": 0.3},
}


def test_submit_run_and_read_a_study_end_to_end(server):
    api = server.client()
    created = api.post("/studies", json=SPEC)
    assert created.status_code == 201, created.text
    study = created.json()
    study_id = study["id"]
    assert study["cells"] == 8 and study["links"]["summary"] == f"/studies/{study_id}/summary"
    assert api.get(f"/studies/{study_id}").json()["status"] == "queued"
    on_ray = api.post("/studies", json={**SPEC, "name": "api-on-ray", "engine": "ray"}).json()
    assert api.get(f"/studies/{on_ray['id']}").json()["engine"] == "ray"
    assert api.delete(f"/studies/{on_ray['id']}").status_code in (200, 204)

    run_worker(server.database_url)

    info = api.get(f"/studies/{study_id}").json()
    assert info["status"] == "done" and info["progress"] == 1.0 and info["jobs"]["done"] == 8
    assert info["engine"] == "queue"
    assert info["optuna_study_name"] == study["optuna_study_name"]
    assert [s["id"] for s in api.get("/studies", params={"status": "done"}).json()["items"]] == [study_id]
    assert api.get("/studies", params={"status": "queued"}).json()["items"] == []

    page = api.get(f"/studies/{study_id}/trials").json()
    assert page["total"] == 8 and page["next"] is None
    trials = page["items"]
    assert len(trials) == 8 and {t["state"] for t in trials} == {"done"}
    assert {(t["variant"], t["lr"], t["seed"]) for t in trials} == {
        (v, lr, s) for v in ("vanilla", "h-detach") for lr in (0.003, 0.03) for s in (1, 2)
    }
    assert all(0.0 <= t["metric"] <= 1.0 and t["attempts"] == 1 for t in trials)

    curve = api.get(f"/studies/{study_id}/trials/0/curve").json()
    assert curve["partial"] is False and [p["step"] for p in curve["points"]] == [3, 6, 9]
    assert "val_accuracy" in curve["points"][0]["values"]
    assert api.get(f"/studies/{study_id}/trials/99/curve").status_code == 404

    summary = api.get(f"/studies/{study_id}/summary").json()
    assert summary["complete"] is True and summary["done"] == 8 and summary["baseline"] == "vanilla"
    assert [v["name"] for v in summary["variants"]] == ["vanilla", "h-detach"]
    assert [lr["lr"] for lr in summary["variants"][0]["lrs"]] == [0.003, 0.03]
    assert summary["comparisons"][0]["variant"] == "h-detach" and summary["comparisons"][0]["n_pairs"] == 4
    assert api.get(f"/studies/{study_id}/summary").json() == summary  # deterministic: the same summary

    report = api.get(f"/studies/{study_id}/report")
    assert report.status_code == 200 and "text/html" in report.headers["content-type"]
    assert "api-tiny" in report.text and 'src="plots/metric_vs_lr.svg"' in report.text  # relative
    svg = api.get(f"/studies/{study_id}/plots/metric_vs_lr.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.content).tag.endswith("svg")
    png = api.get(f"/studies/{study_id}/plots/success_vs_lr.png")
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert api.get(f"/studies/{study_id}/plots/nonsense.svg").status_code == 404

    workers = api.get("/workers").json()
    assert len(workers) == 1 and workers[0]["device"] == "cpu" and workers[0]["current_jobs"] == []
    metrics = api.get("/metrics").text
    assert (
        'hdetach_jobs{state="done"} 8.0' in metrics and "hdetach_trial_duration_seconds_count 8.0" in metrics
    )
    assert api.get("/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"learning_rates": [-0.1]}, "learning_rates"),
        ({"variants": [{"name": "h-detach", "p_detach": 1.5}]}, "p_detach"),
        ({"task": {"name": "sorting"}}, "task"),
        ({"budget": {"steps": 0}}, "steps"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"model": {"hidden_size": 100_000}}, "hidden_size"),
        ({"learning_rates": {"low": 5e-324, "high": 1e-323, "num": 3}}, "learning_rates"),  # found by fuzzing
        ({"learning_rates": {"low": 1e-3, "high": 1.000001e-3, "num": 4}}, "learning_rates"),
    ],
)
def test_bad_spec_is_a_422_naming_the_field_and_writes_nothing(server, change, field):
    api = server.client()
    response = api.post("/studies", json={**SPEC, **change})
    assert response.status_code == 422
    locations = [".".join(map(str, e["loc"])) for e in response.json()["errors"]]
    assert any(field in loc for loc in locations), locations
    assert api.get("/studies").json()["items"] == []


def test_writes_need_a_valid_token_and_reads_are_open_by_default(server):
    assert server.client(token=None).post("/studies", json=SPEC).status_code == 401
    forbidden = server.client(token="wrong").post("/studies", json=SPEC)
    assert forbidden.status_code == 403 and "wrong" not in forbidden.text
    assert server.client(token=None).get("/studies").status_code == 200
    assert server.client(token=None).post("/studies/1/cancel").status_code == 401


WRITE_METHODS = ("post", "put", "patch", "delete")


def test_every_route_that_writes_refuses_a_missing_or_wrong_token(server):
    """Every write operation in the OpenAPI schema, so that a route is covered the day it is added."""
    paths = server.client().get("/openapi.json").json()["paths"]
    writes = [(method, path) for path, item in paths.items() for method in item if method in WRITE_METHODS]
    assert ("delete", "/studies/{study_id}") in writes and ("post", "/studies") in writes
    for method, path in writes:
        concrete = re.sub(r"\{[^}]+\}", "1", path)  # any id: the token is checked first
        missing = server.client(token=None).request(method.upper(), concrete, json={})
        wrong = server.client(token="wrong").request(method.upper(), concrete, json={})
        assert (missing.status_code, wrong.status_code) == (401, 403), (method, path)


def api_routes(routes: list) -> list[APIRoute]:
    """Every API route, those of included routers too (FastAPI keeps an included router whole)."""
    found = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_route_that_writes_declares_the_write_token_itself():
    """The gate refuses writes by method before any route runs; each route still requires the write
    token on its own, so that no route depends on the gate alone."""
    app = create_app(Settings(database_url="sqlite:///unused.db"))  # routes only: no lifespan, no database
    writes = [r for r in api_routes(app.routes) if r.methods & {"POST", "PUT", "PATCH", "DELETE"}]
    assert len(writes) >= 4
    for route in writes:
        assert require_write in {d.call for d in route.dependant.dependencies}, (route.methods, route.path)


def test_cancel_then_delete_and_delete_refused_while_running(server):
    api = server.client()
    first = api.post("/studies", json=SPEC).json()["id"]
    cancelled = api.post(f"/studies/{first}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["jobs"]["cancelled"] == 8
    optuna_name = api.get(f"/studies/{first}").json()["optuna_study_name"]
    storage = open_storage(server.database_url)
    assert optuna_name in {s.study_name for s in storage.get_all_studies()}
    assert api.delete(f"/studies/{first}").status_code == 204
    assert api.get(f"/studies/{first}").status_code == 404
    assert optuna_name not in {s.study_name for s in storage.get_all_studies()}  # gone from the dashboard too
    storage.engine.dispose()

    second = api.post("/studies", json={**SPEC, "name": "busy"}).json()["id"]
    engine = make_engine(server.database_url)
    claimed = queue.claim(session_factory(engine), "test-worker", 1, lease_seconds=60)
    engine.dispose()
    assert len(claimed) == 1
    assert api.delete(f"/studies/{second}").status_code == 409
    assert api.get(f"/studies/{second}").json()["jobs"]["running"] == 1


def test_placeholder_token_is_refused_outside_development(tmp_path):
    settings = Settings(environment="production", api_tokens="change-me")  # loads: a CLI may read
    with pytest.raises(ValueError, match="placeholder"):
        settings.for_serving()  # but nothing serves with it
    env = {
        "HDETACH_ENVIRONMENT": "production",
        "HDETACH_API_TOKENS": "change-me",
        "HDETACH_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
    }
    proc = start([sys.executable, "-m", "hdetach", "serve", "--port", str(free_port())], env)
    proc.wait(timeout=60)
    assert proc.returncode == 2 and "placeholder" in stop(proc)


def test_reads_can_require_a_token(tmp_path):
    port = free_port()
    env = {
        "HDETACH_API_TOKENS": TOKEN,
        "HDETACH_READ_REQUIRES_TOKEN": "true",
        "HDETACH_DATABASE_URL": f"sqlite:///{tmp_path / 'h.db'}",
    }
    proc = start([sys.executable, "-m", "hdetach", "serve", "--port", str(port)], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        assert httpx.get(f"http://127.0.0.1:{port}/studies").status_code == 401
        ok = httpx.get(f"http://127.0.0.1:{port}/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    finally:
        stop(proc)


def test_presets_list_and_submit_by_name_with_overrides(server):
    api = server.client()
    presets = api.get("/presets").json()
    assert "copying-T100" in presets and presets["pixel-mnist"]["variants"][1]["p_detach"] == 0.25
    detail = api.get("/presets/permuted-mnist").json()
    assert detail["spec"] == presets["permuted-mnist"]
    (figure,) = detail["paper_figures"]
    assert (figure["variant"], figure["accuracy"], figure["steps"]) == ("h-detach", 0.923, 100_000)
    assert "authors' README" in figure["source"]
    assert api.get("/presets/adding-T50-small").json()["paper_figures"] == []
    assert api.get("/presets/nope").status_code == 404
    created = api.post("/presets/copying-T100-small/studies", json={"seeds": [1], "name": "from-preset"})
    assert created.status_code == 201, created.text
    assert created.json()["cells"] == 6 and created.json()["name"] == "from-preset"
    assert api.post("/presets/nope/studies", json={}).status_code == 404
    bad = api.post("/presets/copying-T100-small/studies", json={"seeds": [-1]})
    assert bad.status_code == 422 and "seeds" in str(bad.json()["errors"][0]["loc"])

    # a full MNIST preset on a server without MNIST: refused, naming what is missing; nothing written
    before = api.get("/studies").json()
    refused = api.post("/presets/pixel-mnist/studies", json={"seeds": [1]})
    assert refused.status_code == 422, refused.text
    (error,) = refused.json()["errors"]
    assert error["loc"] == ["body", "task"] and "mnist_root" in error["msg"]
    assert "HDETACH_MNIST_DIR" in error["msg"] and "allow_subset" in error["msg"]
    assert api.get("/studies").json() == before
    subset = api.post("/presets/pixel-mnist/studies", json={"seeds": [1], "task": {"allow_subset": True}})
    assert subset.status_code == 201, subset.text
    stored = api.get(f"/studies/{subset.json()['id']}").json()["spec"]["task"]
    assert stored["allow_subset"] is True and stored["mnist_root"] is None
