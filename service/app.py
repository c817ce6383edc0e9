"""The FastAPI application: `create_app(settings)`; served by `hdetach serve` (uvicorn)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from hdetach.settings import Settings
from hdetach.studies_app import Backend
from service.metrics import make_registry
from service.routes import ops, presets, reports, studies
from studies.exceptions import Conflict, NotFound

DESCRIPTION = """Submit robustness studies of LSTM training (variants x learning rates x seeds),
follow them, and read how robust each variant is: per-learning-rate statistics, success rates
with Wilson intervals, robust learning-rate ranges, and paired comparisons with a baseline.
Writes need a bearer token (HDETACH_API_TOKENS)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

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

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_409_CONFLICT)

    return app
