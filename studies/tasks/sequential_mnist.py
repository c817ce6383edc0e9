"""Pixel MNIST and permuted MNIST: classify a digit read one pixel per step over 784 steps."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Literal

import torch

from studies.tasks.base import (
    Task,
    Tensor,
    accuracy_per_sequence,
    batch_slices,
    check_eval_split,
    cross_entropy_per_sequence,
    summed,
)
from studies.tasks.mnist_data import MNISTData

N_PIXELS = 784


def fixed_permutation(seed: int) -> Tensor:
    """The one permutation of the 784 pixel positions used by permuted MNIST, from `seed`."""
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(seed))  # (784,)


class SequentialMNISTTask(Task):
    """MNIST digits as 784-step sequences of one pixel in [0, 1], classified at the last step.

    Permuted MNIST reorders the pixels of every image by a permutation: step j shows pixel
    `permutation[j]` of the row-major image. With `permutation="fixed"` every trial sees the one
    from `permutation_seed`; with "per_seed" (the authors' code draws it from the run's seed) each
    trial sees its own, from its task seed (`for_trial`); this object's own is then unused.

    Training minibatches are drawn uniformly with replacement from the training split using the
    trial's generator (the authors' code shuffles epoch-wise; the distribution per batch is the
    same). Success threshold accuracy >= 0.9 is our choice; the paper reports 98.5% (pixel) and
    92.3% (permuted) test accuracy with h-detach at convergence. Images stay uint8 and are
    converted per batch to keep memory small.
    """

    input_size = 1
    output_size = 10
    seq_len = N_PIXELS
    loss_on = "last"
    success_metric = "accuracy"
    success_threshold = 0.9

    def __init__(
        self,
        data: MNISTData,
        permuted: bool = False,
        permutation_seed: int = 0,
        permutation: Literal["fixed", "per_seed"] = "fixed",
    ):
        if permutation not in ("fixed", "per_seed"):
            raise ValueError(f"permutation must be 'fixed' or 'per_seed', got {permutation!r}")
        self.data = data
        self.permuted = permuted
        self.per_seed = permuted and permutation == "per_seed"
        self.name = "permuted_mnist" if permuted else "pixel_mnist"
        self.permutation: Tensor | None = fixed_permutation(permutation_seed) if permuted else None
        if not permuted:
            kind = "pixel MNIST"
        elif self.per_seed:
            kind = "permuted MNIST (each trial's own permutation, from its seed)"
        else:
            kind = f"permuted MNIST (one permutation, permutation_seed {permutation_seed})"
        self.description = f"{kind}, 784 steps of one pixel; data: {data.source}"

    def for_trial(self, task_seed: int) -> SequentialMNISTTask:
        if not self.per_seed:
            return self
        view = copy.copy(self)  # shares the images
        view.permutation = fixed_permutation(task_seed)
        return view

    def sequences(self, images: Tensor) -> Tensor:
        """uint8 images (B, 784) as float32 pixel sequences in [0, 1], shape (784, B, 1)."""
        if self.permutation is not None:
            images = images[:, self.permutation]  # (B, 784)
        return (images.to(torch.float32) / 255.0).T.unsqueeze(-1).contiguous()  # (784, B, 1)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        images, labels = self.data.split("train")  # (N, 784), (N,)
        rows = torch.randint(0, len(labels), (batch_size,), generator=generator)  # (B,)
        return self.sequences(images[rows]), labels[rows]  # (784, B, 1), (B,)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        check_eval_split(split)
        images, labels = self.data.split(split)  # (N, 784), (N,)
        for rows in batch_slices(len(labels), batch_size):
            yield self.sequences(images[rows]), labels[rows]  # (784, B, 1), (B,)

    def losses(self, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy of the last-step prediction, per model: output (K, B, 10) -> (K,)."""
        return cross_entropy_per_sequence(output, target).mean(dim=-1)  # (K,)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Sums of per-sequence "loss" and "accuracy" (0 or 1), plus "count"."""
        with torch.no_grad():
            return summed(
                {
                    "loss": cross_entropy_per_sequence(output, target),  # (K, B)
                    "accuracy": accuracy_per_sequence(output, target),  # (K, B)
                }
            )
