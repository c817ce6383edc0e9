"""FastAPI dependencies, declared once: the backend and the bearer-token checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deployment.backend import Backend
from deployment.settings import Settings

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
