"""Building blocks for training K independent models as one stacked computation.

Every parameter carries a leading model dimension K. The optimizer and the clipping act on each
model separately, so model k trains exactly as it would alone (up to float rounding in GEMMs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn


class PackedLinear(nn.Module):
    """K independent ``nn.Linear`` layers: weight (K, out, in), bias (K, out); input (..., K, B, in)."""

    def __init__(self, num_models: int, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.num_models, self.in_features, self.out_features = num_models, in_features, out_features
        self.weight = nn.Parameter(
            torch.empty(num_models, out_features, in_features, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(num_models, out_features, device=device, dtype=dtype))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear]) -> PackedLinear:
        first = linears[0]
        packed = cls(
            len(linears), first.in_features, first.out_features, first.weight.device, first.weight.dtype
        )
        with torch.no_grad():
            packed.weight.copy_(torch.stack([m.weight for m in linears]))
            packed.bias.copy_(torch.stack([m.bias for m in linears]))
        return packed

    def forward(self, x: Tensor) -> Tensor:
        """x: (K, B, in) or (T, K, B, in) -> (..., K, B, out).

        One batched GEMM per model: (T, K, B, in) is handled model-major, (K, T*B, in), which is
        free for the LSTM's output (a transposed view of model-major storage). A broadcasting
        matmul over (T, K) would run T*K small GEMMs instead.
        """
        weight_t, bias = self.weight.transpose(1, 2), self.bias.unsqueeze(1)
        if x.dim() == 3:
            return torch.baddbmm(bias, x, weight_t)
        T, K, B, _ = x.shape
        model_major = x.transpose(0, 1).reshape(K, T * B, -1)
        return torch.baddbmm(bias, model_major, weight_t).view(K, T, B, -1).transpose(0, 1)


def _per_model(values: Tensor, like: Tensor) -> Tensor:
    """View a (K,) tensor so it broadcasts against a (K, ...) parameter."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def clip_grad_norm_per_model(params: Iterable[Tensor], max_norm: Tensor) -> Tensor:
    """Clip each model's gradient (over all its parameters) to ``max_norm[k]``; inf means no clipping.

    Returns the per-model norms before clipping, shape (K,). Same rule as torch's
    ``clip_grad_norm_``: scale by max_norm / (norm + 1e-6) when that is below 1.
    """
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.stack([g.pow(2).flatten(1).sum(dim=1) for g in grads]).sum(dim=0)  # (K,)
    norms = sq.sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(_per_model(coef, g))
    return norms


class PackedAdam:
    """Adam with one learning rate per packed model: ``lr`` is a (K,) tensor.

    The update is torch.optim.Adam's (no weight decay, no amsgrad). Setting lr[k] = 0 freezes
    model k, which is how a diverged trial stops moving while its pack carries on. Not a
    ``torch.optim.Optimizer``: constructing one imports torch._dynamo, 1.5 s of every worker's
    start-up. ``state_dict()`` keeps the Optimizer layout, so checkpoints are unchanged.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: Tensor | Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8
    ):
        lr = torch.as_tensor(lr, dtype=torch.float64).clone()  # float64: lr 1e-2 must not become 0.00999...
        if (lr < 0).any():
            raise ValueError("learning rates must be non-negative")
        self.params = list(params)
        if not self.params:
            raise ValueError("PackedAdam got an empty parameter list")
        self.betas, self.eps, self.lr = tuple(betas), eps, lr
        self.state: dict[Tensor, dict[str, Any]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {
                    "step": 0,
                    "exp_avg": torch.zeros_like(p),
                    "exp_avg_sq": torch.zeros_like(p),
                }
            state["step"] += 1
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step = state["step"]
            step_size = _per_model(self.lr.to(p), p) / (1 - beta1**step)
            denom = (v.sqrt() / math.sqrt(1 - beta2**step)).add_(self.eps)
            p.sub_(step_size * m / denom)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Optimizer's layout: per-parameter state keyed by the parameter's position."""
        index = {p: i for i, p in enumerate(self.params)}
        return {
            "state": {index[p]: dict(s) for p, s in self.state.items()},
            "param_groups": [{"betas": self.betas, "eps": self.eps, "params": list(range(len(self.params)))}],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        (group,) = state_dict["param_groups"]
        if len(group["params"]) != len(self.params):
            raise ValueError(
                f"the saved state has {len(group['params'])} parameters, this optimizer {len(self.params)}"
            )
        self.betas, self.eps = tuple(group["betas"]), group["eps"]
        self.state = {}
        for position, saved in state_dict["state"].items():
            p = self.params[group["params"].index(position)]
            self.state[p] = {
                key: value.to(p.device, p.dtype)
                if isinstance(value, Tensor) and value.is_floating_point()
                else value
                for key, value in saved.items()
            }
