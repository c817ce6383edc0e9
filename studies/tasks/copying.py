"""The copying task (Hochreiter & Schmidhuber 1997), laid out as in the h-detach authors' code.

A sequence of length T + 20, one scalar per step (the raw category value as a float):

    steps 0..9          10 symbols, uniform over the categories 1..8
    steps 10..T+8       T - 1 blanks (0)
    step  T+9           the delimiter (9)
    steps T+10..T+19    10 blanks

The target is blank (0) for the first T + 10 steps, then the 10 symbols. 9 output classes (0..8).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from studies.tasks.base import (
    Task,
    Tensor,
    accuracy_per_sequence,
    batch_slices,
    check_eval_split,
    cross_entropy_per_sequence,
    split_generator,
    summed,
)

N_SYMBOLS = 10
N_CATEGORIES = 8  # symbols are drawn from 1..N_CATEGORIES
BLANK = 0
DELIMITER = 9


def draw_symbols(n: int, generator: torch.Generator) -> Tensor:
    """n strings of 10 symbols, uniform over 1..8, as uint8 (compact storage for fixed sets)."""
    return torch.randint(1, N_CATEGORIES + 1, (n, N_SYMBOLS), generator=generator).to(torch.uint8)  # (n, 10)


def copying_sequences(symbols: Tensor, T: int) -> tuple[Tensor, Tensor]:
    """Inputs (T+20, B, 1) float32 and targets (T+20, B) int64 for symbol strings (B, 10)."""
    B = symbols.shape[0]
    columns = symbols.to(torch.int64).T  # (10, B)
    inputs = torch.full((T + 2 * N_SYMBOLS, B), BLANK, dtype=torch.int64)  # (T+20, B)
    inputs[:N_SYMBOLS] = columns
    inputs[T + N_SYMBOLS - 1] = DELIMITER
    target = torch.full((T + 2 * N_SYMBOLS, B), BLANK, dtype=torch.int64)  # (T+20, B)
    target[-N_SYMBOLS:] = columns
    return inputs.to(torch.float32).unsqueeze(-1), target  # (T+20, B, 1), (T+20, B)


class CopyingTask(Task):
    """Reproduce 10 symbols after a delay of T blank steps; success is accuracy >= 0.99 on the last 10 steps.

    Training data: by default each batch is drawn fresh from the trial's generator, i.e. an infinite
    stream from the same distribution as the paper's fixed set of 100,000 sequences. With
    `train_size`, a fixed training set of that many sequences is generated from `data_seed` and
    minibatches are drawn from it uniformly with replacement, as in the paper.

    Evaluation: the val and test sets are fixed by `data_seed` (a distinct stream per split). Their
    symbol strings do not depend on T, so the test set of CopyingTask(T) is a function of
    (T, data_seed), and transfer copying (a model trained at one T, tested at another: the input
    and output sizes do not depend on T) compares the same strings at different delays.

    Loss: cross-entropy averaged over all T + 20 steps and the batch, as in the paper's code.
    Accuracy: over the last 10 steps only.
    """

    name = "copying"
    input_size = 1
    output_size = 9
    loss_on = "all"
    success_metric = "accuracy"
    success_threshold = 0.99

    def __init__(
        self,
        T: int,
        n_test: int = 5000,
        n_val: int = 1000,
        train_size: int | None = None,
        data_seed: int = 0,
    ):
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        if train_size is not None and train_size < 1:
            raise ValueError(f"train_size must be positive, got {train_size}")
        self.T = T
        self.seq_len = T + 2 * N_SYMBOLS
        self.train_size = train_size
        self.data_seed = data_seed
        self._sizes = {"val": n_val, "test": n_test}
        self._eval_symbols: dict[str, Tensor] = {}
        self._train_symbols: Tensor | None = None
        if train_size is not None:
            self._train_symbols = draw_symbols(train_size, split_generator(self.name, data_seed, "train"))
        training = "fresh sequences per batch" if train_size is None else f"fixed set of {train_size}"
        self.description = (
            f"copying, T={T} ({self.seq_len} steps); train: {training}; "
            f"val {n_val} / test {n_test} (data_seed {data_seed})"
        )

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self._train_symbols is None:
            symbols = draw_symbols(batch_size, generator)  # (B, 10)
        else:
            rows = torch.randint(0, len(self._train_symbols), (batch_size,), generator=generator)  # (B,)
            symbols = self._train_symbols[rows]  # (B, 10)
        return copying_sequences(symbols, self.T)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        symbols = self._eval_set(split)  # (N, 10)
        for rows in batch_slices(len(symbols), batch_size):
            yield copying_sequences(symbols[rows], self.T)

    def _eval_set(self, split: str) -> Tensor:
        check_eval_split(split)
        if split not in self._eval_symbols:
            generator = split_generator(self.name, self.data_seed, split)
            self._eval_symbols[split] = draw_symbols(self._sizes[split], generator)
        return self._eval_symbols[split]

    def losses(self, output: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy over all steps and the batch, per model: output (T+20, K, B, 9) -> (K,)."""
        return cross_entropy_per_sequence(output, target).mean(dim=-1)  # (K,)

    def metrics(self, output: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Sums of per-sequence "loss" (all steps) and "accuracy" (last 10 steps), plus "count"."""
        with torch.no_grad():
            return summed(
                {
                    "loss": cross_entropy_per_sequence(output, target),  # (K, B)
                    "accuracy": accuracy_per_sequence(output, target, last_steps=N_SYMBOLS),  # (K, B)
                }
            )
