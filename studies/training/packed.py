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

    The update is torch.optim.Adam's (no weight decay, no amsgrad). A frozen model (``freeze(k)``,
    or ``active[k]`` False in ``step``) stops moving while its pack carries on, which is how a
    diverged or finished trial ends early. Not a ``torch.optim.Optimizer``: constructing one imports
    torch._dynamo, 1.5 s of every worker's start-up. ``state_dict()`` keeps the Optimizer layout, so
    checkpoints are unchanged.

    Nothing in ``step`` reads a value back to the host, so a CUDA graph can replay it: the step
    count is a float64 tensor beside each parameter (its bias corrections computed there) and the
    learning rates are kept on each parameter's device, updated in place by ``freeze``.
    """

    def __init__(
        self, params: Iterable[Tensor], lr: Tensor | Sequence[float], betas=(0.9, 0.999), eps: float = 1e-8
    ):
        self.params = list(params)
        if not self.params:
            raise ValueError("PackedAdam got an empty parameter list")
        self.betas, self.eps = tuple(betas), eps
        self.lr = lr
        self.state: dict[Tensor, dict[str, Any]] = {}

    @property
    def lr(self) -> Tensor:
        """The (K,) float64 learning rates, on the host (float64: lr 1e-2 must not become 0.00999...)."""
        return self._lr

    @lr.setter
    def lr(self, lr: Tensor | Sequence[float]) -> None:  # new tensors: set before a step is graph-captured
        lr = torch.as_tensor(lr, dtype=torch.float64).clone()
        if (lr < 0).any():
            raise ValueError("learning rates must be non-negative")
        self._lr = lr
        self._lr_on: dict[torch.device, Tensor] = {}  # the same, per device the parameters live on

    def freeze(self, k: int) -> None:
        """Model k's learning rate becomes 0 from now on."""
        self._lr[k] = 0.0
        for lr in self._lr_on.values():
            lr[k] = 0.0

    def _lr_for(self, p: Tensor) -> Tensor:
        lr = self._lr_on.get(p.device)
        if lr is None:
            lr = self._lr_on[p.device] = self._lr.to(p.device)
        return lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def init_state(self) -> None:
        """Create every parameter's state now (a captured step must find it in place)."""
        for p in self.params:
            self._state_of(p)

    def _state_of(self, p: Tensor) -> dict[str, Any]:
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {
                "step": torch.zeros((), dtype=torch.float64, device=p.device),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
        return state

    @torch.no_grad()
    def step(self, active: Tensor | None = None) -> None:
        """One Adam step of every model; with `active` ((K,) bool), the inactive ones do not move."""
        beta1, beta2 = self.betas
        for p in self.params:
            if p.grad is None:
                continue
            state = self._state_of(p)
            state["step"] += 1
            m, v, step = state["exp_avg"], state["exp_avg_sq"], state["step"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            lr = self._lr_for(p) if active is None else self._lr_for(p) * active
            step_size = _per_model((lr / (1 - beta1**step)).to(p.dtype), p)
            denom = (v.sqrt() / (1 - beta2**step).sqrt().to(p.dtype)).add_(self.eps)
            p.sub_(step_size * m / denom)

    @torch.no_grad()
    def reset_models(self, which: Tensor) -> None:
        """Zero the moments of the models where `which` ((K,) bool) is set."""
        for state in self.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].masked_fill_(_per_model(which, state[key]), 0.0)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.Optimizer's layout: per-parameter state keyed by the parameter's position."""
        index = {p: i for i, p in enumerate(self.params)}
        return {
            "state": {index[p]: {**s, "step": int(s["step"])} for p, s in self.state.items()},
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
                "step": torch.tensor(float(saved["step"]), dtype=torch.float64, device=p.device),
                "exp_avg": saved["exp_avg"].to(p.device, p.dtype),
                "exp_avg_sq": saved["exp_avg_sq"].to(p.device, p.dtype),
            }
