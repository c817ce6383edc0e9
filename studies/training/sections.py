"""The sections of a study spec that a trainer runs on: the model, the budget, the success rule and
the optimisation options, with the deployment limits they are checked against.

`TrainingConfig` holds these sections as they are, so a study's trials train on exactly what the
spec says, without a copy of each field. Every section is as strict as the spec (see studies.spec).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from studies.storable import JSONInt

Metric = Literal["accuracy", "mse", "loss"]
HIGHER_IS_BETTER: dict[str, bool] = {"accuracy": True, "mse": False, "loss": False}


class SpecLimits(BaseModel):
    """What a deployment accepts: upper bounds on submitted studies, and where MNIST may be read.

    `mnist_dir` is the one directory (with everything below it) a spec's `task.mnist_root` may
    name; an MNIST spec without `mnist_root` trains on it when it holds the IDX files. Without it,
    or without the files, an MNIST study needs `"allow_subset": true` (see `mnist_source`)."""

    model_config = ConfigDict(frozen=True)

    max_grid_size: int = 10_000
    max_T: int = 2_000
    max_steps: int = 1_000_000
    max_hidden_size: int = 2_048
    mnist_dir: str | None = None


DEFAULT_LIMITS = SpecLimits()


def context_limits(info: ValidationInfo) -> SpecLimits | None:
    """The limits passed in the validation context; without them (plain parsing) none apply."""
    limits = (info.context or {}).get("limits")
    if limits is None or isinstance(limits, SpecLimits):
        return limits
    return SpecLimits(**limits)


class StrictModel(BaseModel):
    """A spec section: no coercion, no NaN or infinity, no unknown fields, immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ModelSpec(StrictModel):
    hidden_size: JSONInt = Field(128, ge=1, description="LSTM hidden size")
    num_layers: JSONInt = Field(1, ge=1, le=4)

    @field_validator("hidden_size")
    @classmethod
    def _hidden_within_limits(cls, value: int, info: ValidationInfo) -> int:
        limits = context_limits(info)
        if limits is not None and value > (limit := limits.max_hidden_size):
            raise ValueError(f"hidden_size {value} exceeds this deployment's limit of {limit}")
        return value


class SuccessRule(BaseModel):
    """What a good outcome is: the success metric, its direction and its threshold. The one home of
    "higher is better" and of "meets the threshold" (the study's `success`, the trainer's rule)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: Metric = "accuracy"
    threshold: float = Field(0.99, description="a finite number")

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]

    def meets(self, value: float) -> bool:
        """Whether a value of the metric is at least as good as the threshold (accuracy: >=; mse,
        loss: <=). NaN never does."""
        return value >= self.threshold if self.higher_is_better else value <= self.threshold

    def better(self, value: float, than: float) -> bool:
        """Whether `value` is strictly better than `than` (a tie is not)."""
        return value > than if self.higher_is_better else value < than


class BudgetSpec(StrictModel):
    steps: JSONInt = Field(2000, ge=1, description="optimizer steps per trial")
    eval_every: JSONInt = Field(100, ge=1)
    batch_size: JSONInt = Field(100, ge=1, le=10_000)
    eval_batch_size: JSONInt = Field(500, ge=1, le=100_000)

    @field_validator("steps")
    @classmethod
    def _steps_within_limits(cls, value: int, info: ValidationInfo) -> int:
        limits = context_limits(info)
        if limits is not None and value > (limit := limits.max_steps):
            raise ValueError(f"steps {value} exceeds this deployment's limit of {limit}")
        return value


class SuccessSpec(SuccessRule):
    """The study's success rule (metric, direction, threshold), and whether a trial ends on success."""

    model_config = StrictModel.model_config

    stop_on_success: bool = False


class TrainingOptions(StrictModel):
    """Optimisation settings; the defaults are the paper's (Adam, clipping at 1.0)."""

    clip_norm: float | None = Field(1.0, gt=0.0, description="gradient-norm clipping; null for none")
    p_off_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="switch p_detach off for this final fraction"
    )
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
