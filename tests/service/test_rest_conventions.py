"""REST conventions over real HTTP: one error shape (RFC 9457) everywhere and in OpenAPI, Location
on 201, pages with a total and a next link, Idempotency-Key, and /docs without a CDN."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin

import httpx
import pytest

from deployment.settings import Settings
from service.app import create_app
from tests.service.conftest import TOKEN
from tests.service.test_studies_api import SPEC

PROBLEM_JSON = "application/problem+json"
ANY_PRESET = "/presets/adding-T50-small/studies"


def assert_problem(response: httpx.Response, status: int, path: str) -> dict:
    """The response is a problem document for `status` about `path`; returns its body."""
    assert response.status_code == status, (status, response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    body = response.json()
    assert body["type"] == "about:blank" and body["status"] == status
    assert body["title"] and body["detail"] and body["instance"] == path
    return body


def test_every_kind_of_error_is_a_problem_document(server):
    api, anonymous = server.client(), server.client(token=None)
    assert_problem(anonymous.post("/studies", json=SPEC), 401, "/studies")
    assert_problem(server.client(token="wrong-token").post("/studies", json=SPEC), 403, "/studies")
    assert_problem(api.get("/studies/99"), 404, "/studies/99")
    assert_problem(api.get("/no/such/route"), 404, "/no/such/route")
    assert_problem(api.put("/studies/1"), 405, "/studies/1")
    assert_problem(api.post("/studies", content=b"x" * (2 << 20)), 413, "/studies")
    assert_problem(api.post("/studies", content=b"{not json"), 422, "/studies")

    refused = assert_problem(api.post("/studies", json={**SPEC, "seeds": [-1]}), 422, "/studies")
    assert [e["loc"] for e in refused["errors"]] == [["body", "seeds", 0]]
    assert "seeds" in refused["detail"]  # the detail alone already names the field
    query = assert_problem(api.get("/studies", params={"limit": 0}), 422, "/studies")
    assert query["errors"][0]["loc"] == ["query", "limit"]

    for depth in (33, 900, 5000, 100_000):  # deeper than a spec (3) or anything else needs
        deep = ("[" * depth + "]" * depth).encode()
        for path in ("/studies", ANY_PRESET):
            nested = assert_problem(api.post(path, content=deep), 422, path)
            assert "nests deeper than 32 levels" in nested["detail"], (path, depth)
    for body in (b"[1]", b"3", b'"seeds"'):
        overrides = assert_problem(api.post(ANY_PRESET, content=body), 422, ANY_PRESET)
        assert overrides["errors"][0]["loc"] == ["body"] and "JSON object" in overrides["detail"]
    not_json = assert_problem(api.post(ANY_PRESET, content=b"{bad"), 422, ANY_PRESET)
    assert "the body is not JSON" in not_json["detail"]  # as /studies says it
    headers = [("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")]
    twice = assert_problem(api.post("/studies", json=SPEC, headers=headers), 422, "/studies")
    assert twice["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert api.get("/studies").json()["total"] == 0

    study_id = api.post("/studies", json=SPEC).json()["id"]
    api.post(f"/studies/{study_id}/cancel")
    assert api.delete(f"/studies/{study_id}").status_code == 204
    assert_problem(api.delete(f"/studies/{study_id}"), 404, f"/studies/{study_id}")


def test_openapi_declares_each_error_as_the_problem_it_is():
    schema = create_app(Settings(database_url="sqlite://", api_tokens=TOKEN)).openapi()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    assert {"type", "title", "status", "detail", "errors"} <= set(components["Problem"]["properties"])
    errors = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code[0] not in "45" or (path, code) == ("/readyz", "503"):
                    continue
                errors += 1
                content = response["content"]
                assert list(content) == [PROBLEM_JSON], (method, path, code)
                assert content[PROBLEM_JSON]["schema"] == {"$ref": "#/components/schemas/Problem"}
            if method in ("post", "delete"):
                assert "413" in operation["responses"], (method, path)
            assert "500" in operation["responses"], (method, path)
            if path.startswith("/studies/{study_id}/") and method == "get":  # they read the stored spec
                assert "409" in operation["responses"], (method, path)
    assert errors > 20
    readyz = schema["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    assert readyz["schema"] == {"$ref": "#/components/schemas/Readiness"}
    for path in ("/studies", "/presets/{name}/studies"):
        created = schema["paths"][path]["post"]["responses"]["201"]
        assert {"Location", "Idempotent-Replayed"} <= set(created["headers"]), path
        parameters = {p["name"] for p in schema["paths"][path]["post"]["parameters"]}
        assert "Idempotency-Key" in parameters, path


SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # no database in play


@SQLITE_ONLY
def test_docs_are_served_by_the_app_itself(server):
    api = server.client()
    page = api.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", page.text)
    assert len(assets) >= 3 and all(a.startswith("/docs-assets/") for a in assets), assets
    assert "cdn" not in page.text.lower()
    for asset in assets:
        served = api.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset


def test_created_has_a_location_and_lists_page_with_a_total_and_a_next_link(server):
    api = server.client()
    ids = []
    for n in range(3):
        created = api.post("/studies", json={**SPEC, "name": f"paged-{n}"})
        assert created.status_code == 201
        location = created.headers["location"]
        assert location == f"{server.url}/studies/{created.json()['id']}"
        assert api.get(location).json()["name"] == f"paged-{n}"
        ids.append(created.json()["id"])

    url, seen = f"{server.url}/studies?limit=2", []
    while url:
        page = api.get(url)
        body = page.json()
        assert body["total"] == 3 and body["limit"] == 2
        seen += [s["id"] for s in body["items"]]
        if body["next"] is None:
            assert "link" not in page.headers
            url = None
        else:
            assert page.headers["link"] == f'<{body["next"]}>; rel="next"'
            url = urljoin(url, body["next"])
    assert seen == ids[::-1]  # newest first, each once
    done = api.get("/studies", params={"status": "done"}).json()
    assert done["total"] == 0 and done["items"] == [] and done["next"] is None

    cells = api.get(f"/studies/{ids[0]}/trials").json()
    assert cells["total"] == 8 and cells["next"] is None and len(cells["items"]) == 8
    pages, url = [], f"{server.url}/studies/{ids[0]}/trials?limit=3"
    while url:
        body = api.get(url).json()
        pages.append(body["items"])
        url = body["next"] and urljoin(url, body["next"])
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [row for page in pages for row in page] == cells["items"]


def test_an_idempotency_key_makes_a_retried_submission_return_the_first_study(server):
    api = server.client()
    first = api.post("/studies", json=SPEC, headers={"Idempotency-Key": "run-42"})
    assert first.status_code == 201 and "idempotent-replayed" not in first.headers
    again = api.post("/studies", json=SPEC, headers={"Idempotency-Key": '"run-42"'})  # quoted: the same key
    assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert api.get("/studies").json()["total"] == 1

    other = api.post("/studies", json={**SPEC, "seeds": [7]}, headers={"Idempotency-Key": "run-42"})
    body = assert_problem(other, 422, "/studies")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert f"study {first.json()['id']}" in body["detail"]
    for bad in ("", "x" * 256, "caf\u00e9", "two words", '"unclosed'):
        refused = httpx.post(
            f"{server.url}/studies",
            json=SPEC,
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": bad.encode("latin-1")},
        )
        assert_problem(refused, 422, "/studies")
        assert refused.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"], bad
    assert api.get("/studies").json()["total"] == 1

    preset = {"seeds": [1], "budget": {"steps": 3, "eval_every": 3}}
    from_preset = [
        api.post("/presets/adding-T50-small/studies", json=preset, headers={"Idempotency-Key": "p-1"})
        for _ in range(2)
    ]
    assert [r.status_code for r in from_preset] == [201, 201]
    assert from_preset[0].json()["id"] == from_preset[1].json()["id"]
    assert from_preset[1].headers["idempotent-replayed"] == "true"


def test_concurrent_submissions_with_one_key_make_one_study(server):
    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            return c.post("/studies", json=SPEC, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(submit, range(8)))
    assert {r.status_code for r in replies} == {201}, [r.text for r in replies]
    assert len({r.json()["id"] for r in replies}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in replies) == 7
    assert server.client().get("/studies").json()["total"] == 1


def test_a_bug_is_a_500_problem_that_hides_the_exception():
    import asyncio

    from fastapi import FastAPI

    from service.problems import install_problem_handlers

    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/boom")

    response = asyncio.run(get())
    assert_problem(response, 500, "/boom")
    assert "secret" not in response.text
