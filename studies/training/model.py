"""The packed sequence model a trial trains: an h-detach LSTM and a linear read-out, K at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from studies.lstm import HDetachLSTM, PackedHDetachLSTM
from studies.training.config import TrialParams, derived_seed
from studies.training.packed import PackedLinear


class PackedSequenceModel(nn.Module):
    """K LSTM + linear models; the read-out sees every step ("all") or the last one ("last")."""

    def __init__(self, lstm: PackedHDetachLSTM, head: PackedLinear, loss_on: str):
        super().__init__()
        self.lstm, self.head, self.loss_on = lstm, head, loss_on

    @classmethod
    def for_trials(
        cls,
        trials: Sequence[TrialParams],
        input_size: int,
        hidden_size: int,
        output_size: int,
        num_layers: int,
        loss_on: str,
    ) -> PackedSequenceModel:
        """Each trial's weights are those nn.LSTM and nn.Linear draw after seeding with its init seed,
        so a trial starts from the same weights whichever pack it is in."""
        lstms, heads = [], []
        for trial in trials:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derived_seed(trial.seed, "init"))
                lstms.append(HDetachLSTM(input_size, hidden_size, num_layers, p_detach=trial.p_detach))
                heads.append(nn.Linear(hidden_size, output_size))
        return cls(PackedHDetachLSTM.from_lstms(lstms), PackedLinear.from_linears(heads), loss_on)

    def forward(self, x: Tensor, detach_mask: Tensor | None = None) -> Tensor:
        out, _ = self.lstm(x, detach_mask=detach_mask)  # (T, K, B, H)
        return self.head(out if self.loss_on == "all" else out[-1])  # (T, K, B, C) or (K, B, C)

    @torch.no_grad()
    def reset_models(self, which: Tensor) -> None:
        """Zero the parameters of the models where `which` ((K,) bool) is set: a diverged trial stops
        producing NaNs while its pack goes on (a masked fill: no host read, so a CUDA graph can replay it)."""
        for p in self.parameters():
            p.masked_fill_(which.view(-1, *[1] * (p.dim() - 1)), 0.0)
