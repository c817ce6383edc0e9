"""hdetach-studies core: the h-detach LSTM, the paper's tasks, training, and robustness studies.

The LSTM, spec and training names are here; the job queue (`queue`), the robustness summary
(`robustness`), a study's results read back from its jobs (`results`) and its Optuna logbook
(`tracking`) are faces used as namespaces (`from studies import queue; queue.claim(...)`).
Everything is loaded on first use, so that a process which only queues jobs (the API) does not
import torch at start-up.

Glossary: one grid point of a study goes by a few names, each for a different stage of its life.

- a **cell** (`spec.GridCell`): one (variant, learning rate, seed) of a study's grid, with its index;
- a **job** (`db.models.Job`): a cell's row in the queue, with its state, attempts and result;
  a **claimed job** (`queue.ClaimedJob`) is a job a worker holds under a lease, and carries the
  parsed spec and its cell;
- a **trial** (`training.TrialParams`): what one model of a pack trains with (its variant's
  p_detach, the lr, the seed, the clipping); its **record** (`training.TrialRecord`) is what the
  trainer hands back;
- a **row** (`results.TrialRow`): a cell as the service shows it, which is also the outcome the
  robustness summary reads (`robustness.TrialOutcome`);
- an **Optuna trial**: an attempt at a job as optuna-dashboard shows it (one per attempt).

A **pack** is a group of trials of one study that train as one stacked computation, and a
study's **executor kind** (`db.models.ExecutorKind`) says whether the queue's workers or a Ray
driver run it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "HDetachLSTM": "studies.lstm",
    "PackedHDetachLSTM": "studies.lstm",
    "detach_loop_lstm": "studies.lstm",
    "sample_detach_mask": "studies.lstm",
    "StudySpec": "studies.spec",
    "SpecLimits": "studies.spec",
    "PackTrainer": "studies.training",
    "TrainingConfig": "studies.training",
    "TrialParams": "studies.training",
}
_MODULES = ("queue", "results", "robustness", "tracking")

__all__ = [
    "HDetachLSTM",
    "PackTrainer",
    "PackedHDetachLSTM",
    "SpecLimits",
    "StudySpec",
    "TrainingConfig",
    "TrialParams",
    "detach_loop_lstm",
    "queue",
    "results",
    "robustness",
    "sample_detach_mask",
    "tracking",
]

if TYPE_CHECKING:
    from studies import queue, results, robustness, tracking
    from studies.lstm import HDetachLSTM, PackedHDetachLSTM, detach_loop_lstm, sample_detach_mask
    from studies.spec import SpecLimits, StudySpec
    from studies.training import PackTrainer, TrainingConfig, TrialParams


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'studies' has no attribute {name!r}")
