"""Checkpoints of a pack: everything needed to continue exactly where it stopped (the model, Adam,
every trial's generators, the device's counters, the records and the best-validation copies)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from studies.training.config import TrainingConfig, TrialParams

if TYPE_CHECKING:
    from studies.training.trainer import PackTrainer

CHECKPOINT_VERSION = 3  # 2: the best-validation weights and fields; 3: the config holds the spec's sections


def save_checkpoint(trainer: PackTrainer, path: str | Path) -> None:
    """Everything needed to continue exactly where the pack is now (written atomically)."""
    state = {
        "version": CHECKPOINT_VERSION,
        "config": trainer.config.model_dump(),
        "trials": [t.model_dump() for t in trainer.trials],
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "lr": trainer.optimizer.lr,
        "data_gens": [g.get_state() for g in trainer.data_gens],
        "mask_gens": [g.get_state() for g in trainer.mask_gens],
        "records": [r.to_dict() for r in trainer.records],
        "active": trainer.active,
        "loss_acc": (trainer._loss_sum_on.tolist(), trainer._loss_count_on.tolist()),
        "best": trainer._best,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> PackTrainer:
    """The pack saved at `path`, ready to continue (on `device`)."""
    from studies.training.trainer import PackTrainer  # (the trainer imports this module)

    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('version')}")
    trials = [TrialParams(**t) for t in state["trials"]]
    trainer = PackTrainer(TrainingConfig(**state["config"]), trials, device)
    trainer.step = state["step"]
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.optimizer.lr = state["lr"]
    for g, s in zip(
        trainer.data_gens + trainer.mask_gens, state["data_gens"] + state["mask_gens"], strict=True
    ):
        g.set_state(s)
    trainer.active = list(state["active"])
    trainer._active_on.copy_(torch.tensor(trainer.active))
    trainer._step_on.fill_(trainer.step)
    loss_sum, loss_count = state["loss_acc"]
    trainer._loss_sum_on.copy_(torch.tensor(loss_sum, dtype=torch.float64))
    trainer._loss_count_on.copy_(torch.tensor(loss_count, dtype=torch.int64))
    trainer._best = [
        None if best is None else {name: t.to(trainer.device) for name, t in best.items()}
        for best in state["best"]
    ]
    for record, saved in zip(trainer.records, state["records"], strict=True):
        for key, value in saved.items():
            if key != "params":
                setattr(record, key, value)
        if record.status == "interrupted":
            record.status = "running"
    return trainer
