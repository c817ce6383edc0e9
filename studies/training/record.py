"""What the trainer hands back for each trial: its TrialRecord."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from studies.training.config import TrialParams


@dataclass
class TrialRecord:
    """What is known about one trial so far; the trainer's result once the pack ends."""

    params: TrialParams
    status: str = "running"  # running | completed | succeeded | diverged | interrupted | cancelled
    curve: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # test metrics of the final model
    best_val: dict[str, float] = field(default_factory=dict)  # test metrics of the best-validation model
    best_val_step: int | None = None  # the evaluation step that model comes from
    best_val_value: float | None = None  # its validation value of the success metric
    transfer: dict[str, dict[str, float]] = field(default_factory=dict)  # final model, copying at other T
    best_val_transfer: dict[str, dict[str, float]] = field(default_factory=dict)  # the same, best-val model
    data: str = ""  # the task and the data it trained and was tested on, in words
    diverged_at: int | None = None
    steps_to_threshold: int | None = None
    steps_run: int = 0
    # seconds the pack trained and evaluated while this trial was in it (until it diverged,
    # succeeded or was stopped, or the budget ran out; the final test not included): in a pack,
    # time shared with the trials beside it
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["params"] = self.params.model_dump()
        return out
