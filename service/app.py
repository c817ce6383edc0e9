"""The FastAPI application: `create_app(settings)`; served by `hdetach serve` (uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from deployment.backend import Backend
from deployment.settings import Settings
from service.gate import Gate
from service.metrics import make_registry
from service.problems import declare_problems, install_problem_handlers
from service.routes import ops, presets, reports, studies
from studies.spec import StudySpec

DESCRIPTION = """Submit robustness studies of LSTM training (variants x learning rates x seeds),
follow them, and read how robust each variant is: per-learning-rate statistics, success rates
with Wilson intervals, robust learning-rate ranges, and paired comparisons with a baseline.
Writes need a bearer token (HDETACH_API_TOKENS)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = (settings or Settings()).for_serving()  # its tokens read and checked (ValueError)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = Backend(settings)
        app.state.backend, app.state.settings = backend, settings
        app.state.registry = make_registry(backend)
        try:
            yield
        finally:
            backend.close()

    # FastAPIOffline: /docs with Swagger UI's files served by the app itself (no CDN: clusters are
    # often air-gapped); ReDoc is left out, it would be a second copy of the same page
    app = FastAPIOffline(
        title="hdetach-studies",
        version=version("hdetach-studies"),
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
        static_url="/docs-assets",
    )
    app.include_router(studies.router)
    app.include_router(reports.router)
    app.include_router(presets.router)
    app.include_router(ops.router)
    app.add_middleware(Gate, settings=settings)

    def openapi() -> dict[str, Any]:
        """The schema as this deployment enforces it: reads declare the bearer token only when
        HDETACH_READ_REQUIRES_TOKEN is set (the routes declare it, for that case)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            # the spec routes read their body raw and validate it once (see service.deps.JsonBody)
            spec_schema = StudySpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec_schema.pop("$defs", {}))
            components["StudySpec"] = spec_schema
            declare_problems(schema)
            if not settings.read_requires_token:
                for item in schema.get("paths", {}).values():
                    for operation in (item.get(method) for method in ("get", "head")):
                        if operation is not None:
                            operation.pop("security", None)
                            for code in ("401", "403"):
                                operation.get("responses", {}).pop(code, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    install_problem_handlers(app)
    return app
