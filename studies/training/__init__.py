"""Training one trial or a pack of trials on the paper's tasks (torch is imported on first use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from studies.training.config import TaskConfig, TrainingConfig, TrialParams, derived_seed

_LAZY = {
    "PackedSequenceModel": "studies.training.model",
    "PackTrainer": "studies.training.trainer",
    "TrialRecord": "studies.training.record",
}

__all__ = [
    "PackTrainer",
    "PackedSequenceModel",
    "TaskConfig",
    "TrainingConfig",
    "TrialParams",
    "TrialRecord",
    "derived_seed",
]

if TYPE_CHECKING:
    from studies.training.model import PackedSequenceModel
    from studies.training.record import TrialRecord
    from studies.training.trainer import PackTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'studies.training' has no attribute {name!r}")
