"""Training one trial or a pack of trials on the paper's tasks."""

from studies.training.config import TaskConfig, TrainingConfig, TrialParams, derived_seed
from studies.training.model import PackedSequenceModel
from studies.training.trainer import PackTrainer, TrialRecord, train_trials

__all__ = [
    "PackTrainer",
    "PackedSequenceModel",
    "TaskConfig",
    "TrainingConfig",
    "TrialParams",
    "TrialRecord",
    "derived_seed",
    "train_trials",
]
