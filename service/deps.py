"""What the routes share, declared once: the backend, the bearer-token checks, the documented error
responses, loading a study, submitting a spec, and the cached summary."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from deployment.backend import Backend
from deployment.settings import Settings
from service.cache import Entry, ResponseCache, lookup
from service.schemas import Links, Problem, StudyCreated
from studies import queue
from studies.db.models import Study
from studies.exceptions import KeyReused
from studies.results import stored_spec, study_summary, trial_row
from studies.spec import StudySpec

_bearer = HTTPBearer(auto_error=False, description="an API token from HDETACH_API_TOKENS")


def get_backend(request: Request) -> Backend:
    return request.app.state.backend


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


BackendDep = Annotated[Backend, Depends(get_backend)]
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
StudyId = Annotated[int, Path(ge=1, le=MAX_ID, description="study id")]
CellIndex = Annotated[int, Path(ge=0, le=MAX_ID, description="grid cell index")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


MISSING, REFUSED = "missing bearer token", "token not accepted"  # never echo the token


def token_accepted(settings: Settings, presented: str) -> bool:
    """Whether `presented` is one of the deployment's tokens, compared in constant time as bytes.

    Header values arrive decoded as Latin-1, so they may hold any character up to U+00FF, which
    `compare_digest` refuses on str; our tokens are printable ASCII (see Settings), so anything
    else is simply not one of them.
    """
    if not presented.isascii():
        return False
    given = presented.encode("ascii")
    return any(secrets.compare_digest(given, token.encode("ascii")) for token in settings.tokens())


def auth_failure(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """The status and message that refuse an `Authorization` header value, or None if it is good."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return status.HTTP_401_UNAUTHORIZED, MISSING
    if not token_accepted(settings, credentials.strip()):
        return status.HTTP_403_FORBIDDEN, REFUSED
    return None


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    # service.gate already refused the request before its body was read; this keeps every route
    # protected on its own and declares the bearer scheme in OpenAPI
    header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
    failure = auth_failure(settings, header)
    if failure is not None:
        code, message = failure
        headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
        raise HTTPException(code, message, headers=headers)


def require_write(settings: SettingsDep, credentials: Credentials) -> None:
    _check(settings, credentials)


def require_read(settings: SettingsDep, credentials: Credentials) -> None:
    if settings.read_requires_token:
        _check(settings, credentials)


WriteAccess = Depends(require_write)
ReadAccess = Depends(require_read)


# -- shared by the routes -----------------------------------------------------------------------
Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": Problem, "description": "no such study"}}
# what `load` answers for a study stored with a spec this version refuses
STORED_SPEC: Responses = {
    409: {"model": Problem, "description": "the study was stored with a spec this version refuses"}
}
CREATED: Responses = {
    201: {
        "description": "the study was queued (or, for a replayed Idempotency-Key, had been)",
        "headers": {
            "Location": {"description": "the study's URL", "schema": {"type": "string"}},
            "Idempotent-Replayed": {
                "description": "`true` when an earlier request with this Idempotency-Key created it",
                "schema": {"type": "string"},
            },
        },
    },
    422: {"description": "the spec is invalid, or the Idempotency-Key was used with another spec"},
}
AUTH: Responses = {
    401: {"model": Problem, "description": "no bearer token"},
    403: {"model": Problem, "description": "bad token"},
}


def links(study_id: int) -> Links:
    base = f"/studies/{study_id}"
    return Links(
        self=base,
        trials=f"{base}/trials",
        summary=f"{base}/summary",
        report=f"{base}/report",
        cancel=f"{base}/cancel",
    )


MAX_BODY_DEPTH = 32  # a study spec nests 3 levels; deeper bodies are refused before anything recurses


def _refused_body(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": message, "input": None}])


def nesting_depth(value: Any) -> int:
    """How deep JSON containers nest in `value` (0 for a scalar), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def json_body(request: Request) -> Any:
    """The request's body parsed as JSON and not validated further (the gate has capped its size;
    an empty body is None): a spec route hands it to the one validation the backend gives a spec,
    and documents its schema with `spec_request_body`. Python's parser, as FastAPI's own: it keeps
    lone surrogates, so the spec's validators refuse them naming their field instead of the parser
    refusing the body. Nesting deeper than MAX_BODY_DEPTH is refused here, before the validators,
    the merge of a preset's overrides or an error's echo of the input recurse into it."""
    raw = await request.body()
    if not raw.strip():
        return None
    too_deep = f"the body nests deeper than {MAX_BODY_DEPTH} levels"
    try:
        value = json.loads(raw)
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise _refused_body(f"the body is not JSON: {error}") from None
    except RecursionError:  # so deep that the parser itself gave up
        raise _refused_body(too_deep) from None
    if nesting_depth(value) > MAX_BODY_DEPTH:
        raise _refused_body(too_deep)
    return value


JsonBody = Annotated[Any, Depends(json_body)]


def spec_request_body(examples: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI's requestBody for a route that reads a StudySpec from `JsonBody` (see service.app's
    `openapi`, which puts StudySpec's schema among the components)."""
    content = {"schema": {"$ref": "#/components/schemas/StudySpec"}, "examples": examples}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


def overrides_request_body(examples: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI's requestBody for a preset's overrides, read from `JsonBody`: an optional object."""
    content = {"schema": {"type": "object", "additionalProperties": True}, "examples": examples}
    return {"requestBody": {"required": False, "content": {"application/json": content}}}


IDEMPOTENCY_KEY = "Idempotency-Key"


def idempotency_key(
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY,
            description="any 1-255 visible ASCII characters, bare or as a quoted string (e.g. a UUID): "
            "a POST retried with the same key and spec returns the study the first one created "
            "(with `Idempotent-Replayed: true`) instead of a second study; with another spec, a 422",
            pattern=r'^(?:[!#-~]{1,255}|"[!#-~]{1,255}")$',
        ),
    ] = None,
) -> str | None:
    if len(request.headers.getlist(IDEMPOTENCY_KEY)) > 1:  # which one would the client mean?
        sent = {"type": "too_many_keys", "loc": ("header", IDEMPOTENCY_KEY), "input": key}
        raise RequestValidationError([{**sent, "msg": "send one Idempotency-Key header, not several"}])
    # the IETF draft writes the key as a structured-field string ("..."); bare keys are common too
    return None if key is None else key.strip('"')


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]


def submit_spec(
    request: Request, response: Response, backend: Backend, data: Any, key: str | None
) -> StudyCreated:
    """Submit spec data (validated once, by the backend, with the deployment's limits) at most once
    per idempotency key, and describe the study, its URL in `Location`; a rejected spec is a 422
    naming each field, a key reused with another spec a 422 naming the header."""
    try:
        submission = backend.submit_once(data, key)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from error
    except KeyReused as error:
        reused = {"type": "idempotency_key_reused", "loc": ("header", IDEMPOTENCY_KEY), "input": key}
        raise RequestValidationError([{**reused, "msg": str(error)}]) from None
    study_id = submission.study_id
    response.headers["Location"] = str(request.url_for("get_study", study_id=study_id))
    if submission.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    study = queue.get_study(backend.factory, study_id)
    return StudyCreated(
        id=study_id,
        name=study.name,
        optuna_study_name=study.optuna_study_name,
        cells=sum(queue.job_counts(backend.factory, study_id).values()),
        links=links(study_id),
    )


def next_page(request: Request, response: Response, offset: int, limit: int, total: int) -> str | None:
    """The next page's reference, relative to this page's URL (only its query changes, so it holds
    behind a proxy's path prefix), also sent as a `Link` header; None on the last page."""
    if offset + limit >= total:
        return None
    query = request.url.include_query_params(offset=offset + limit, limit=limit).query
    reference = f"?{query}"
    response.headers["Link"] = f'<{reference}>; rel="next"'
    return reference


def load(backend: BackendDep, study_id: int) -> tuple[Study, StudySpec]:
    study = queue.get_study(backend.factory, study_id)  # NotFound -> 404 (see app)
    return study, stored_spec(study)  # Conflict -> 409: a spec this version refuses


def summary_entry(
    backend: BackendDep,
    cache: ResponseCache,
    study: Study,
    spec: StudySpec,
    robust_level: float = 0.8,
) -> tuple[Entry, str]:
    """The study's summary (as JSON, the model in `value`), from the cache if the study is finished."""

    def render() -> Entry:
        rows = [
            trial_row(job, spec.success.metric, spec.selection)
            for job in queue.list_jobs(backend.factory, study.id)
        ]
        result = study_summary(spec, rows, robust_level=robust_level)
        return Entry.of(result.model_dump_json().encode(), "application/json", result)

    return lookup(cache, study, ("summary", robust_level), render)
