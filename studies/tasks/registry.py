"""Building a task from its name and options (as a study's configuration gives them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studies.tasks.adding import AddingTask
from studies.tasks.base import Task
from studies.tasks.copying import CopyingTask
from studies.tasks.mnist_data import MNISTData, load_mnist
from studies.tasks.sequential_mnist import SequentialMNISTTask
from studies.training.sections import SuccessRule

TASK_NAMES = ("copying", "adding", "pixel_mnist", "permuted_mnist")
_TASK_CLASSES: dict[str, type[Task]] = {
    "copying": CopyingTask,
    "adding": AddingTask,
    "pixel_mnist": SequentialMNISTTask,
    "permuted_mnist": SequentialMNISTTask,
}


def default_success(name: str) -> SuccessRule:
    """The task's own success rule (its metric and threshold), without building the task."""
    return _TASK_CLASSES[name].default_success()


def _mnist_task(
    permuted: bool,
    mnist_root: str | Path | None = None,
    allow_download: bool = False,
    allow_subset: bool = True,
    permutation_seed: int = 0,
    permutation: str = "fixed",
    mnist_data: MNISTData | None = None,
) -> SequentialMNISTTask:
    """Load MNIST (unless `mnist_data` is given, to share one copy between tasks) and wrap it."""
    if mnist_data is None:
        mnist_data = load_mnist(mnist_root, allow_download=allow_download, allow_subset=allow_subset)
    return SequentialMNISTTask(
        mnist_data,
        permuted=permuted,
        permutation_seed=permutation_seed,
        permutation=permutation,  # type: ignore[arg-type]
    )


def make_task(name: str, **options: Any) -> Task:
    """The task called `name`, built with `options` (the constructor's keyword arguments).

    copying: CopyingTask(T, ...); adding: AddingTask(T, ...); pixel_mnist / permuted_mnist:
    mnist_root, allow_download, allow_subset, permutation_seed, permutation, mnist_data (an already
    loaded MNISTData).
    """
    if name == "copying":
        return CopyingTask(**options)
    if name == "adding":
        return AddingTask(**options)
    if name in ("pixel_mnist", "permuted_mnist"):
        return _mnist_task(permuted=name == "permuted_mnist", **options)
    raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASK_NAMES)}")
