"""What a trial is: the training settings a pack shares, and each trial's own parameters.

A pack is a group of trials with the same task and shapes that train as one stacked
computation. Everything in `TrainingConfig` is shared by the pack; everything in `TrialParams`
may differ from trial to trial.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from studies.storable import JSONInt, Seed, StorableText
from studies.training.sections import (
    BudgetSpec,
    ModelSpec,
    SuccessRule,
    SuccessSpec,
    TrainingOptions,
)

PAPER_CLIP_NORM = 1.0  # gradient-norm clipping in the authors' code
PAPER_BATCH_SIZE = 100
# p_detach switched off at the end of training. The authors' code (copying.py, pixelmnist.py;
# `--anneal-p 40`) loops `for epoch in range(epochs)` and tests `epoch > epochs - 40`: epochs
# 561-599 of 600 (copying) and 161-199 of 200 (MNIST) run without h-detach, the last 39 epochs.
# As a fraction of the steps (TrainingConfig.detach_on), that is 39/600 and 39/200.
PAPER_ANNEAL_EPOCHS = 40
PAPER_COPYING_EPOCHS = 600
PAPER_MNIST_EPOCHS = 200
PAPER_COPYING_P_OFF_FRACTION = (PAPER_ANNEAL_EPOCHS - 1) / PAPER_COPYING_EPOCHS  # 39/600
PAPER_MNIST_P_OFF_FRACTION = (PAPER_ANNEAL_EPOCHS - 1) / PAPER_MNIST_EPOCHS  # 39/200
MAX_EVAL_SET = 100_000  # largest validation or test set of a copying/adding task (n_val, n_test)


DEFAULT_T = 100  # copying delay / adding length when a spec gives none
MAX_TRAIN_SET = 1_000_000  # largest fixed copying training set (train_size); the authors used 100,000
MAX_TRANSFER_T = 8  # most delays a copying study may also test at (transfer_T)
_SEQUENCE_TASKS = ("copying", "adding")
_MNIST_TASKS = ("pixel_mnist", "permuted_mnist")


class TaskConfig(BaseModel):
    """The task and its options, e.g. {"name": "copying", "T": 100}.

    Part of the study spec, so as strict as it: no coercion (a boolean is not a number), bounded
    seeds and set sizes, text a database can store, and no option the task does not use (a
    `train_size` on MNIST is a mistake, not a no-op).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    name: Literal["copying", "adding", "pixel_mnist", "permuted_mnist"] = "copying"
    T: JSONInt | None = Field(None, ge=1, strict=True, description="delay (copying) or length (adding)")
    data_seed: Seed = Field(0, strict=True, description="seed of the fixed evaluation (and training) sets")
    n_val: JSONInt | None = Field(
        None, ge=1, le=MAX_EVAL_SET, strict=True, description="copying/adding: validation sequences"
    )
    n_test: JSONInt | None = Field(
        None, ge=1, le=MAX_EVAL_SET, strict=True, description="copying/adding: test sequences"
    )
    train_size: JSONInt | None = Field(
        None,
        ge=1,
        le=MAX_TRAIN_SET,
        strict=True,
        description="copying: a fixed training set of this many sequences, batches drawn from it with "
        "replacement (the authors': 100,000); null: fresh sequences for every batch",
    )
    transfer_T: list[Annotated[JSONInt, Field(ge=1, strict=True)]] = Field(
        default_factory=list,
        max_length=MAX_TRANSFER_T,
        strict=True,
        description="copying: also test each trial's models at these delays (transfer copying)",
    )
    mnist_root: StorableText | None = Field(
        None,
        max_length=4096,
        strict=True,
        description="MNIST: directory of the IDX files; must be one the server allows (HDETACH_MNIST_DIR)",
    )
    allow_subset: bool = Field(
        False,
        strict=True,
        description="MNIST: without full MNIST, train on the 5,000-digit subset (results say so)",
    )
    permutation: Literal["fixed", "per_seed"] = Field(
        "fixed",
        description="permuted MNIST: one permutation for every trial (from permutation_seed), or each "
        "trial's own, from its seed, as in the authors' code",
    )
    permutation_seed: Seed = Field(
        0, strict=True, description="permuted MNIST, permutation 'fixed': seed of the permutation"
    )

    @model_validator(mode="after")
    def _options_of_this_task(self) -> TaskConfig:
        misplaced = {
            "T": self.T is not None,
            "data_seed": self.data_seed != 0,
            "n_val": self.n_val is not None,
            "n_test": self.n_test is not None,
            "train_size": self.train_size is not None,
            "transfer_T": bool(self.transfer_T),
            "mnist_root": self.mnist_root is not None,
            "allow_subset": self.allow_subset,
            "permutation": self.permutation != "fixed",
            "permutation_seed": self.permutation_seed != 0,
        }
        used_by = {
            "T": _SEQUENCE_TASKS,
            "data_seed": _SEQUENCE_TASKS,
            "n_val": _SEQUENCE_TASKS,
            "n_test": _SEQUENCE_TASKS,
            "train_size": ("copying",),
            "transfer_T": ("copying",),
            "mnist_root": _MNIST_TASKS,
            "allow_subset": _MNIST_TASKS,
            "permutation": ("permuted_mnist",),
            "permutation_seed": ("permuted_mnist",),
        }
        for option, given in misplaced.items():
            if given and self.name not in used_by[option]:
                raise ValueError(f"{option} applies to {' and '.join(used_by[option])}, not to {self.name}")
        if len(set(self.transfer_T)) != len(self.transfer_T):
            raise ValueError("transfer_T values must be distinct")
        if self.permutation == "per_seed" and self.permutation_seed != 0:
            raise ValueError("permutation_seed applies to permutation 'fixed' only")
        return self

    @property
    def is_mnist(self) -> bool:
        return self.name in _MNIST_TASKS

    @property
    def length(self) -> int | None:
        """Copying's delay or adding's length (100 when not given); None for MNIST (784 pixels)."""
        if self.name not in _SEQUENCE_TASKS:
            return None
        return self.T if self.T is not None else DEFAULT_T

    def options(self) -> dict[str, Any]:
        """Keyword arguments for studies.tasks.make_task."""
        if self.name in _SEQUENCE_TASKS:
            sizes = {"n_val": self.n_val, "n_test": self.n_test, "train_size": self.train_size}
            chosen = {key: value for key, value in sizes.items() if value is not None}
            return {"T": self.length, "data_seed": self.data_seed, **chosen}
        # A directory must hold the files; without one the spec gate (studies.spec) has already
        # required allow_subset, so the offline subset is the only source left.
        opts: dict[str, Any] = {"mnist_root": self.mnist_root, "allow_subset": self.mnist_root is None}
        if self.name == "permuted_mnist":
            opts["permutation"] = self.permutation
            opts["permutation_seed"] = self.permutation_seed
        return opts


class TrainingConfig(BaseModel):
    """Settings shared by every trial of a pack: a study spec's sections as they are (defaults follow
    the paper's code), and the floating-point type. Each trial's own settings are its TrialParams,
    `training.clip_norm` included (a study gives every trial the same; a pack may mix them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: TaskConfig = TaskConfig()
    model: ModelSpec = ModelSpec()
    budget: BudgetSpec = BudgetSpec()
    success: SuccessSpec | None = Field(None, description="None: the task's default rule, no stop on success")
    training: TrainingOptions = TrainingOptions()
    dtype: Literal["float32", "float64"] = "float32"

    @property
    def stop_on_success(self) -> bool:
        return self.success is not None and self.success.stop_on_success

    def success_rule(self, task_default: SuccessRule) -> SuccessRule:
        """This config's success rule, or the task's default one (Task.default_success)."""
        return self.success if self.success is not None else task_default

    @property
    def p_off_step(self) -> int:
        """First step (counted from 0) at which p_detach is switched off: the last
        round(p_off_fraction * steps) steps run without h-detach."""
        steps = self.budget.steps
        return steps - round(self.training.p_off_fraction * steps)

    def detach_on(self, step: int) -> bool:
        """Whether the step with 0-based index `step` (the step-th update) draws h-detach masks.

        Off for the last round(p_off_fraction * steps) steps. With E steps per epoch, `steps` =
        epochs * E and fraction (a - 1) / epochs, this is the authors' `epoch > epochs - a` with
        0-based epochs: step // E > epochs - a exactly when step >= steps - (a - 1) * E."""
        return step < self.p_off_step


class TrialParams(BaseModel):
    """One trial's own settings: the variant and its p_detach, the learning rate and the seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: str = "h-detach"
    p_detach: float = Field(0.5, ge=0.0, le=1.0)
    lr: float = Field(1e-3, gt=0.0)
    seed: int = Field(0, ge=0)
    clip_norm: float | None = Field(PAPER_CLIP_NORM, gt=0.0, description="None: no clipping")

    @model_validator(mode="after")
    def _vanilla_has_no_detach(self) -> TrialParams:
        check_vanilla_has_no_detach(self.variant, self.p_detach)
        return self


def check_vanilla_has_no_detach(variant: str, p_detach: float) -> None:
    """The one rule tying a variant's name to its p_detach (a trial's, a study's variants)."""
    if variant == "vanilla" and p_detach != 0.0:
        raise ValueError("variant 'vanilla' must have p_detach = 0")


SEED_PURPOSES = {"init": 0, "data": 1, "mask": 2, "task": 3}  # task: e.g. its own pixel permutation


def derived_seed(trial_seed: int, purpose: str) -> int:
    """Independent seeds for weight init, data order, detach masks and the trial's own task variation
    (permuted MNIST's per-seed permutation), all derived from the trial seed."""
    return int(np.random.SeedSequence([trial_seed, SEED_PURPOSES[purpose]]).generate_state(1)[0])
