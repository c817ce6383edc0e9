"""The paper's experiments as ready specs; submit one by name, with overrides."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status

from service.deps import BackendDep, ReadAccess, WriteAccess
from service.routes.studies import AUTH, submit_validated
from service.schemas import Problem, StudyCreated
from studies.presets import PRESETS, preset_spec

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", dependencies=[ReadAccess], responses=AUTH)
def list_presets() -> dict[str, dict[str, Any]]:
    """Every preset's spec by name: copying T=100/T=300 (p=0.5), pixel/permuted MNIST (p=0.25), and -small."""
    return PRESETS


@router.post(
    "/{name}/studies",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyCreated,
    dependencies=[WriteAccess],
    responses={
        **AUTH,
        404: {"model": Problem, "description": "no such preset"},
        422: {"description": "the preset with these overrides is invalid; `detail` names the field"},
    },
)
def submit_preset(
    backend: BackendDep,
    name: str,
    overrides: Annotated[dict[str, Any] | None, Body(examples=[{"seeds": [1, 2, 3], "priority": 5}])] = None,
) -> StudyCreated:
    """Submit a preset; `overrides` are merged into its spec (nested objects merge, the rest replaces)."""
    try:
        data = preset_spec(name, overrides)
    except KeyError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error.args[0])) from error
    return submit_validated(backend, data)
