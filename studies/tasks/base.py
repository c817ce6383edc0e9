"""The task interface shared by the trainer, and the loss/metric helpers the tasks reuse.

Shapes use T (steps), K (packed models), B (batch), C (classes or outputs), I (input size).

Evaluation metrics are accumulated as sums so that the trainer can stream over eval batches of any
size: `metrics()` returns, per model, the SUM over the batch's sequences of a per-sequence value
(each metric's key) plus "count", the number of sequences; the trainer adds these dicts up over all
batches of a split and calls `finalize()`, which divides every sum by the count.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from studies.training.sections import Metric, SuccessRule

Tensor = torch.Tensor

EVAL_SPLITS = ("val", "test")
_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}


class Task(ABC):
    """A sequence task: how to draw training batches, the fixed evaluation sets, the loss and metrics.

    Inputs are float32 of shape (T, B, input_size). `loss_on` is "all" when the model predicts at
    every step (outputs (T, K, B, C)) and "last" when only at the last step (outputs (K, B, C)).
    A target passed to `losses`/`metrics` may carry the K dim or omit it (then shared by all models).
    """

    name: str
    input_size: int
    output_size: int
    seq_len: int
    loss_on: str
    success_metric: Metric  # the default success rule: its direction lives in SuccessRule
    success_threshold: float
    description: str

    @abstractmethod
    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A training batch (x, target), drawn only with `generator` (CPU), so reproducible."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The fixed evaluation set of `split` ("val" or "test"), in the same order every call."""

    @abstractmethod
    def losses(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss of each packed model, shape (K,)."""

    @abstractmethod
    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Per-model sums over the batch's sequences, each (K,), plus "count"; see `finalize`."""

    @staticmethod
    def finalize(sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """Means per model from summed `metrics()` dicts: every key but "count" divided by "count"."""
        count = sums["count"]
        return {key: value / count for key, value in sums.items() if key != "count"}

    @classmethod
    def default_success(cls) -> SuccessRule:
        """The task's own success rule: its metric and threshold."""
        return SuccessRule(metric=cls.success_metric, threshold=cls.success_threshold)

    def for_trial(self, task_seed: int) -> Task:
        """The task as the trial with this derived seed sees it: the same task for most tasks; permuted
        MNIST with a per-seed permutation gives each trial its own pixel order. The trainer packs
        trials whose views differ by stacking each view's inputs (same targets, same order)."""
        return self


def check_eval_split(split: str) -> None:
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown evaluation split {split!r}; expected one of {EVAL_SPLITS}")


def split_generator(task_name: str, data_seed: int, split: str) -> torch.Generator:
    """A CPU generator for a task's fixed data set: distinct per (task, data_seed, split), reproducible."""
    if data_seed < 0:
        raise ValueError(f"data_seed must be non-negative, got {data_seed}")
    entropy = [zlib.crc32(task_name.encode()), data_seed, _SPLIT_INDEX[split]]
    seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def batch_slices(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n); the last one may be shorter."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def align_target(output: Tensor, target: Tensor, n_trailing: int) -> Tensor:
    """`target` on `output`'s device and with `output`'s shape minus its last `n_trailing` dims.

    The packed-model dim K sits just before B (the second-to-last leading dim); a target without it
    is broadcast to all K models.
    """
    expected = output.shape[: output.dim() - n_trailing]
    target = target.to(output.device)
    if target.dim() == len(expected) - 1:
        target = target.unsqueeze(-2).expand(expected)
    if target.shape != expected:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not fit output shape {tuple(output.shape)}"
        )
    return target


def cross_entropy_per_sequence(output: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of each sequence of each model, averaged over steps when there is a step dim.

    output (T, K, B, C) or (K, B, C); target the same without C (or without K). Returns (K, B).
    """
    target = align_target(output, target, n_trailing=1)
    n_classes = output.shape[-1]
    per_item = F.cross_entropy(output.reshape(-1, n_classes), target.reshape(-1), reduction="none")
    per_item = per_item.view(target.shape)  # (T, K, B) or (K, B)
    return per_item.mean(dim=0) if output.dim() == 4 else per_item  # (K, B)


def accuracy_per_sequence(output: Tensor, target: Tensor, last_steps: int | None = None) -> Tensor:
    """Fraction of correct predictions of each sequence of each model, shape (K, B).

    With `last_steps` (output (T, K, B, C)), only the last `last_steps` steps count.
    """
    target = align_target(output, target, n_trailing=1)
    if last_steps is not None:
        output, target = output[-last_steps:], target[-last_steps:]  # (L, K, B, C), (L, K, B)
    correct = (output.argmax(dim=-1) == target).float()  # (L, K, B) or (K, B)
    return correct.mean(dim=0) if correct.dim() == 3 else correct  # (K, B)


def summed(per_sequence: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sums over the batch (float64, for accurate accumulation) of (K, B) values, plus "count"."""
    sums = {key: value.detach().double().sum(dim=-1) for key, value in per_sequence.items()}  # (K,)
    first = next(iter(per_sequence.values()))
    K, B = first.shape
    sums["count"] = torch.full((K,), float(B), dtype=torch.float64, device=first.device)
    return sums
