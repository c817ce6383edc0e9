"""The FastAPI application: `create_app(settings)`; served by `hdetach serve` (uvicorn)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from deployment.backend import Backend
from deployment.settings import Settings
from service.gate import Gate
from service.metrics import make_registry
from service.routes import ops, presets, reports, studies
from studies.exceptions import Conflict, NotFound
from studies.spec import StudySpec

DESCRIPTION = """Submit robustness studies of LSTM training (variants x learning rates x seeds),
follow them, and read how robust each variant is: per-learning-rate statistics, success rates
with Wilson intervals, robust learning-rate ranges, and paired comparisons with a baseline.
Writes need a bearer token (HDETACH_API_TOKENS)."""


def plain_json(value: Any) -> Any:
    """`value` made safe to serialise as strict JSON: a 422 echoes the input it refused, and that may
    hold NaN, infinities, lone surrogates or exception objects (which would turn the 422 into a 500)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, dict):
        return {str(plain_json(key)): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain_json(item) for item in value]
    return plain_json(str(value))


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

    app = FastAPI(title="hdetach-studies", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
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
            if not settings.read_requires_token:
                for item in schema.get("paths", {}).values():
                    for operation in (item.get(method) for method in ("get", "head")):
                        if operation is not None:
                            operation.pop("security", None)
                            for code in ("401", "403"):
                                operation.get("responses", {}).pop(code, None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{k: v for k, v in e.items() if k != "url"} for e in error.errors()]
        return JSONResponse({"detail": plain_json(detail)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_409_CONFLICT)

    return app
