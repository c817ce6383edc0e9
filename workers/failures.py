"""Whose fault a failed attempt is: the trial's, or the infrastructure's.

A trial error (an exception from the trial's own training: a bad value, a bug it hits) spends one
of the job's attempts. An infrastructure error (the database unreachable, the device unusable or
lost, the LSTM kernel failing to build) says nothing about the trial: its jobs go back to the
queue without spending an attempt, and the worker backs off. An out-of-memory error is neither
until the pack is down to one trial: the executor halves the pack and tries again.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import torch
from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import DBAPIError, DisconnectionError, PendingRollbackError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from studies.lstm import KernelBuildError


class FailureKind(StrEnum):
    TRIAL = "trial"
    INFRASTRUCTURE = "infrastructure"
    OUT_OF_MEMORY = "out of memory"


class InfrastructureError(RuntimeError):
    """Raised by an executor's own checks, e.g. a device it cannot use."""


_INFRASTRUCTURE = (
    DBAPIError,
    DisconnectionError,
    PendingRollbackError,  # a session whose connection died mid-transaction
    PoolTimeout,
    StorageInternalError,  # Optuna's storage failing to commit
    InfrastructureError,
    KernelBuildError,
)
# A device-side assert is the trial's own code indexing out of bounds; other CUDA errors (illegal
# address, launch failure, ECC error, device lost or busy) are the device's.
_CUDA_MARKERS = ("CUDA error", "CUDA driver", "cuDNN error", "CUBLAS_STATUS", "NCCL error")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(error: BaseException) -> FailureKind:
    """The kind of failure `error` (or any exception it was raised from) is."""
    for link in _chain(error):
        if isinstance(link, torch.OutOfMemoryError):
            return FailureKind.OUT_OF_MEMORY
        if isinstance(link, _INFRASTRUCTURE):
            return FailureKind.INFRASTRUCTURE
        if isinstance(link, torch.AcceleratorError) and "device-side assert" not in str(link):
            return FailureKind.INFRASTRUCTURE
        text = str(link)
        device_side = "device-side assert" in text
        if isinstance(link, RuntimeError) and not device_side and any(m in text for m in _CUDA_MARKERS):
            return FailureKind.INFRASTRUCTURE
    return FailureKind.TRIAL


def touches_the_device(error: BaseException) -> bool:
    """A CUDA error other than running out of memory, a device-side assert included: CUDA errors
    are sticky, so the process cannot use the device again, whoever's fault the first one was."""
    for link in _chain(error):
        if isinstance(link, torch.OutOfMemoryError):
            return False
        if isinstance(link, torch.AcceleratorError):
            return True
        text = str(link)
        if isinstance(link, RuntimeError) and (
            "device-side assert" in text or any(m in text for m in _CUDA_MARKERS)
        ):
            return True
    return False


def one_line(error: BaseException) -> str:
    """The exception as one line: its type and the first line of its message."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
