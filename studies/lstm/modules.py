"""h-detach LSTM modules: a drop-in for ``torch.nn.LSTM`` and a packed sibling for K models at once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from studies.lstm._kernel import packed_lstm_layers


def sample_detach_mask(steps: int, p_detach: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw a (steps, K) bool mask, True = blocked, with one Bernoulli(p_detach[k]) per step and model.

    The draw happens on p_detach's device, so on an accelerator nothing is read back to the host.
    """
    u = torch.rand(steps, p_detach.numel(), device=p_detach.device, generator=generator)
    return u < p_detach.view(1, -1)


def layer_params(module: nn.Module, layer: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer, nn.LSTM names; biases None without bias."""
    s = f"_l{layer}"
    w_ih, w_hh = getattr(module, "weight_ih" + s), getattr(module, "weight_hh" + s)
    if not module.bias:
        return w_ih, w_hh, None, None
    return w_ih, w_hh, getattr(module, "bias_ih" + s), getattr(module, "bias_hh" + s)


class HDetachLSTM(nn.LSTM):
    """``nn.LSTM`` trained with h-detach (Arpit et al., ICLR 2019).

    Parameters have nn.LSTM's names, shapes, gate order (i, f, g, o) and initialisation, so
    ``load_state_dict`` works both ways. The forward values are those of nn.LSTM; only the
    gradient changes: at each step t, with probability ``p_detach`` (one draw per step, shared by
    the whole batch), the gradient through h_{t-1} into step t's gates is blocked. The cell-state
    path and the gradient h_{t-1} receives from its own output are kept. With ``num_layers > 1``
    one draw per step is shared by all layers. Nothing is blocked in eval mode or with p_detach=0.

    ``forward(input, hx=None, detach_mask=None)``: ``detach_mask`` is a (T,) bool tensor, True =
    blocked at step t, which overrides sampling. The mask used last is kept in ``last_detach_mask``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        p_detach: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not 0.0 <= p_detach <= 1.0:
            raise ValueError(f"p_detach must lie in [0, 1], got {p_detach}")
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )
        self.p_detach = float(p_detach)
        self.last_detach_mask: Tensor | None = None

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p_detach={self.p_detach}"

    def forward(  # type: ignore[override]
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, detach_mask: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if not isinstance(input, Tensor):
            raise TypeError("HDetachLSTM takes a padded tensor; PackedSequence is not supported")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        T, B, _ = x.shape
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros(L, 1, B, H)
        else:
            h0, c0 = (s.reshape(L, 1, B, H) for s in hx)  # unbatched (L, H) has B = 1
        blocked = self._step_mask(T, x.device, detach_mask)
        layers = [
            tuple(p.unsqueeze(0) if p is not None else None for p in layer_params(self, layer))
            for layer in range(L)
        ]
        out, h_n, c_n = packed_lstm_layers(x.unsqueeze(1), h0, c0, layers, blocked)  # type: ignore[arg-type]
        out = out.squeeze(1)  # (T, B, H)
        h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)  # (L, B, H)
        if unbatched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (out.transpose(0, 1) if self.batch_first else out), (h_n, c_n)

    def _step_mask(self, steps: int, device: torch.device, detach_mask: Tensor | None) -> Tensor | None:
        if detach_mask is not None:
            if detach_mask.shape != (steps,) or detach_mask.dtype != torch.bool:
                raise ValueError(f"detach_mask must be a bool tensor of shape ({steps},)")
            blocked = detach_mask.view(steps, 1)
        elif self.training and self.p_detach > 0:
            blocked = sample_detach_mask(steps, torch.full((1,), self.p_detach, device=device))
        else:
            blocked = None
        self.last_detach_mask = None if blocked is None else blocked.view(steps)
        return blocked


class PackedHDetachLSTM(nn.Module):
    """K independent h-detach LSTMs run as one stacked computation.

    Every parameter of nn.LSTM gets a leading model dimension: ``weight_ih_l0`` is (K, 4H, I).
    Input is (T, K, B, I), or (K, B, T, I) with ``batch_first``; the state is (L, K, B, H). Each
    model has its own p_detach (vanilla is 0) and its own per-step mask; ``detach_mask`` (T, K)
    overrides sampling.
    """

    def __init__(
        self,
        num_models: int,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        p_detach: float | Sequence[float] = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        K, H = num_models, hidden_size
        self.num_models, self.input_size, self.hidden_size = K, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        p = torch.as_tensor(p_detach, dtype=torch.float64).expand(K).clone()
        if ((p < 0) | (p > 1)).any():
            raise ValueError(f"p_detach must lie in [0, 1], got {p.tolist()}")
        self.p_detach: Tensor
        self.register_buffer("p_detach", p.to(device=device, dtype=torch.float32))

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))

        for layer in range(num_layers):
            in_size = input_size if layer == 0 else H
            self.register_parameter(f"weight_ih_l{layer}", param(K, 4 * H, in_size))
            self.register_parameter(f"weight_hh_l{layer}", param(K, 4 * H, H))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", param(K, 4 * H))
                self.register_parameter(f"bias_hh_l{layer}", param(K, 4 * H))
        self.last_detach_mask: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            nn.init.uniform_(w, -bound, bound)

    @classmethod
    def from_lstms(cls, lstms: Sequence[nn.LSTM], p_detach: float | Sequence[float] | None = None):
        """Stack K nn.LSTM / HDetachLSTM modules of the same shape (p_detach taken from them by default)."""
        first = lstms[0]
        reference = first.get_parameter("weight_hh_l0")
        if p_detach is None:
            p_detach = [float(getattr(m, "p_detach", 0.0)) for m in lstms]
        packed = cls(
            len(lstms),
            first.input_size,
            first.hidden_size,
            first.num_layers,
            first.bias,
            first.batch_first,
            p_detach,
            device=reference.device,
            dtype=reference.dtype,
        )
        for k, m in enumerate(lstms):
            packed.load_model_state(k, m.state_dict())
        return packed

    def load_model_state(self, k: int, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p[k].copy_(state[name])

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, detach_mask: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x = input.permute(2, 0, 1, 3) if self.batch_first else input  # (T, K, B, I)
        T, K, B, _ = x.shape
        if self.num_models != K:
            raise ValueError(f"input has {K} models, module packs {self.num_models}")
        L, H = self.num_layers, self.hidden_size
        if hx is None:
            h0 = c0 = x.new_zeros(L, K, B, H)
        else:
            h0, c0 = hx
        if detach_mask is not None:
            if detach_mask.shape != (T, K) or detach_mask.dtype != torch.bool:
                raise ValueError(f"detach_mask must be a bool tensor of shape ({T}, {K})")
            blocked: Tensor | None = detach_mask
        elif self.training and (x.device.type != "cpu" or bool((self.p_detach > 0).any())):
            # On an accelerator we sample even for all-vanilla packs rather than read p back to the host.
            blocked = sample_detach_mask(T, self.p_detach)
        else:
            blocked = None
        self.last_detach_mask = blocked
        layers = [layer_params(self, layer) for layer in range(L)]
        out, h_n, c_n = packed_lstm_layers(x, h0, c0, layers, blocked)
        return (out.permute(1, 2, 0, 3) if self.batch_first else out), (h_n, c_n)
