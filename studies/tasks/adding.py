"""The adding problem (Hochreiter & Schmidhuber 1997; as in Le et al. 2015 and later LSTM papers).

Each of the T steps carries two inputs: a value drawn uniformly from [0, 1] and a marker (0 or 1).
Exactly one step of the first half (steps 0..T//2-1) and one of the second half are marked; the
target, predicted at the last step, is the sum of the two marked values.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from studies.tasks.base import (
    Task,
    Tensor,
    align_target,
    batch_slices,
    check_eval_split,
    split_generator,
    summed,
)


def draw_adding(n: int, T: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n value sequences (n, T) float32 and their two marked positions (n, 2) int64."""
    values = torch.rand((n, T), generator=generator)  # (n, T)
    half = T // 2
    first = torch.randint(0, half, (n,), generator=generator)  # (n,)
    second = torch.randint(half, T, (n,), generator=generator)  # (n,)
    return values, torch.stack((first, second), dim=1)  # (n, T), (n, 2)


def adding_sequences(values: Tensor, marked: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs (T, B, 2) float32 and targets (B,) float32 from values (B, T) and marked positions (B, 2)."""
    markers = torch.zeros_like(values)  # (B, T)
    markers.scatter_(1, marked, 1.0)
    inputs = torch.stack((values, markers), dim=-1).transpose(0, 1).contiguous()  # (T, B, 2)
    target = values.gather(1, marked).sum(dim=1)  # (B,)
    return inputs, target


class AddingTask(Task):
    """Sum the two marked values of a length-T sequence; success is test MSE <= 0.01.

    Always predicting 1 (the target's mean) gives MSE 1/6, about 0.167, the variance of a sum of two
    uniforms: a model must beat that by far to count as having solved the task. Training batches are
    drawn fresh from the trial's generator; val/test sets are fixed by `data_seed` (distinct per split).
    """

    name = "adding"
    input_size = 2
    output_size = 1
    loss_on = "last"
    success_metric = "mse"
    success_threshold = 0.01

    def __init__(self, T: int, n_test: int = 2000, n_val: int = 1000, data_seed: int = 0):
        if T < 2:
            raise ValueError(f"T must be at least 2 (one marker per half), got {T}")
        self.T = T
        self.seq_len = T
        self.data_seed = data_seed
        self._sizes = {"val": n_val, "test": n_test}
        self._eval_sets: dict[str, tuple[Tensor, Tensor]] = {}
        self.description = f"adding, T={T}; train: fresh sequences per batch; val {n_val} / test {n_test}"

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return adding_sequences(*draw_adding(batch_size, self.T, generator))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        values, marked = self._eval_set(split)  # (N, T), (N, 2)
        for rows in batch_slices(len(values), batch_size):
            yield adding_sequences(values[rows], marked[rows])

    def _eval_set(self, split: str) -> tuple[Tensor, Tensor]:
        check_eval_split(split)
        if split not in self._eval_sets:
            generator = split_generator(self.name, self.data_seed, split)
            self._eval_sets[split] = draw_adding(self._sizes[split], self.T, generator)
        return self._eval_sets[split]

    @staticmethod
    def _squared_errors(output: Tensor, target: Tensor) -> Tensor:
        """Squared error of each sequence of each model: output (K, B, 1) -> (K, B)."""
        target = align_target(output, target, n_trailing=1).to(output.dtype)  # (K, B)
        return (output[..., 0] - target) ** 2  # (K, B)

    def losses(self, output: Tensor, target: Tensor) -> Tensor:
        """Mean squared error per model: output (K, B, 1) -> (K,)."""
        return self._squared_errors(output, target).mean(dim=-1)  # (K,)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Sums of squared errors as "loss" and "mse" (the same number), plus "count"."""
        with torch.no_grad():
            errors = self._squared_errors(output, target)  # (K, B)
            return summed({"loss": errors, "mse": errors})
