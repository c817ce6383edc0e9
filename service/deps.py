"""FastAPI dependencies, declared once: the backend and the bearer-token checks."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hdetach.settings import Settings
from hdetach.studies_app import Backend

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


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    if not any(secrets.compare_digest(credentials.credentials, t) for t in settings.tokens()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "token not accepted")  # never echo the token


def require_write(settings: SettingsDep, credentials: Credentials) -> None:
    _check(settings, credentials)


def require_read(settings: SettingsDep, credentials: Credentials) -> None:
    if settings.read_requires_token:
        _check(settings, credentials)


WriteAccess = Depends(require_write)
ReadAccess = Depends(require_read)
