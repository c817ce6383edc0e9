"""One error shape for every response that is not a success: RFC 9457 problem details.

Every error (a refused token, a body too large, a spec refused field by field, an unknown study, a
conflict, a route or method that does not exist, and a bug) is `application/problem+json` with
`type`, `title`, `status` and `detail`; a refused request body or query adds `errors`, one per
field. The handlers are installed by `install_problem_handlers`, the gate answers with
`problem_response` too, and the routes declare `Problem` (`service.schemas`) as the schema of each
error they give.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from service.schemas import Problem
from studies.exceptions import Conflict, NotFound

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger(__name__)


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


def problem_response(
    status: int,
    detail: str,
    instance: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = plain_json(detail)
    if instance is not None:
        body["instance"] = plain_json(instance)
    if errors is not None:
        body["errors"] = plain_json(errors)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def field_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    keep = ("loc", "msg", "type", "input")
    return [{key: e[key] for key in keep if key in e} for e in error.errors()]


def validation_detail(errors: list[dict[str, Any]]) -> str:
    named = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
    return f"{len(errors)} invalid field{'s' if len(errors) != 1 else ''}: {named}"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = field_errors(error)
        return problem_response(422, validation_detail(errors), request.url.path, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return problem_response(error.status_code, str(error.detail), request.url.path, headers=error.headers)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        return problem_response(404, str(error), request.url.path)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict) -> JSONResponse:
        return problem_response(409, str(error), request.url.path)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        # a 5xx is always a bug: logged with its traceback, answered in the one shape without it
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error: see the service's log", request.url.path)


PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
WRITE_METHODS = ("post", "put", "patch", "delete")


def declare_problems(schema: dict[str, Any]) -> None:
    """Make the OpenAPI document say what the errors really are: every 4xx/5xx response is a
    `Problem` as application/problem+json (FastAPI declares them as application/json, and its own
    422 as a schema we do not send), every write may be refused with 413 by the gate, and any
    operation may meet a bug (500)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(components["Problem"].pop("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            responses = operation.setdefault("responses", {})
            if method in WRITE_METHODS:
                responses.setdefault("413", {"description": "the request body is larger than the limit"})
            responses.setdefault("500", {"description": "a bug: the service's log has its traceback"})
            if "422" in responses:
                responses["422"]["description"] = "the request is invalid: `errors` names each field"
            for code, response in responses.items():
                if code[0] in "45" and not response.get("x-not-a-problem"):
                    response["content"] = {PROBLEM_JSON: {"schema": PROBLEM_REF}}
                response.pop("x-not-a-problem", None)
