"""The paper's experiments as ready specs; submit one by name, with overrides."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from service.deps import (
    AUTH,
    CREATED,
    BackendDep,
    IdempotencyKey,
    JsonBody,
    ReadAccess,
    WriteAccess,
    overrides_request_body,
    submit_spec,
)
from service.schemas import Problem, StudyCreated
from studies.paper import PaperFigure, paper_figures
from studies.presets import PRESETS, preset_spec
from studies.spec import StudySpec

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", dependencies=[ReadAccess], responses=AUTH)
def list_presets() -> dict[str, dict[str, Any]]:
    """Every preset's spec by name: copying T=100/T=300 (p=0.5), pixel/permuted MNIST (p=0.25), and -small."""
    return PRESETS


class PresetDetail(BaseModel):
    spec: dict[str, Any] = Field(description="the preset's spec")
    paper_figures: list[PaperFigure] = Field(
        description="what the paper or its authors reported for this task, with source and budget; "
        "empty where the task is not one of the paper's experiments at its sizes"
    )


@router.get(
    "/{name}",
    dependencies=[ReadAccess],
    responses={**AUTH, 404: {"model": Problem, "description": "no such preset"}},
)
def get_preset(name: str) -> PresetDetail:
    """One preset's spec and the paper's figures for it (the report shows them beside a study's own)."""
    try:
        spec = preset_spec(name)
    except KeyError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error.args[0])) from error
    return PresetDetail(spec=spec, paper_figures=paper_figures(StudySpec.model_validate(spec).task))


@router.post(
    "/{name}/studies",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyCreated,
    dependencies=[WriteAccess],
    responses={**AUTH, **CREATED, 404: {"model": Problem, "description": "no such preset"}},
    openapi_extra=overrides_request_body({"more seeds": {"value": {"seeds": [1, 2, 3], "priority": 5}}}),
)
def submit_preset(
    request: Request, response: Response, backend: BackendDep, key: IdempotencyKey, name: str, body: JsonBody
) -> StudyCreated:
    """Submit a preset; the body's overrides (an object, or none) are merged into its spec (nested
    objects merge, the rest replaces)."""
    if body is not None and not isinstance(body, dict):
        refused = {"type": "dict_type", "loc": ("body",), "input": body}
        raise RequestValidationError([{**refused, "msg": "the overrides must be a JSON object"}])
    overrides: dict[str, Any] | None = body
    try:
        data = preset_spec(name, overrides)
    except KeyError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error.args[0])) from error
    return submit_spec(request, response, backend, data, key)
