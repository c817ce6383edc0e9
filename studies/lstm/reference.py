"""The plain per-step h-detach loop, as the paper's authors wrote it: autograd through every step.

It is the ground truth the fused layer is tested against and the baseline it is benchmarked
against. It reads an nn.LSTM-layout module's parameters, so the two can share weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def detach_loop_lstm(
    lstm: nn.LSTM, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, detach_mask: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Forward `lstm` step by step, doing ``h = h.detach()`` before each step with ``detach_mask[t]`` True."""
    x = input.transpose(0, 1) if lstm.batch_first else input  # (T, B, I)
    T, B, _ = x.shape
    L, H = lstm.num_layers, lstm.hidden_size
    if hx is None:
        h = [x.new_zeros(B, H) for _ in range(L)]
        c = [x.new_zeros(B, H) for _ in range(L)]
    else:
        h, c = list(hx[0].unbind(0)), list(hx[1].unbind(0))
    outputs = []
    for t in range(T):
        if detach_mask is not None and bool(detach_mask[t]):
            h = [s.detach() for s in h]
        inp = x[t]
        for layer in range(L):
            gates = F.linear(
                inp, getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"bias_ih_l{layer}", None)
            )
            gates = gates + F.linear(
                h[layer], getattr(lstm, f"weight_hh_l{layer}"), getattr(lstm, f"bias_hh_l{layer}", None)
            )
            i, f, g, o = gates.chunk(4, dim=1)
            c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            h[layer] = torch.sigmoid(o) * torch.tanh(c[layer])
            inp = h[layer]
        outputs.append(inp)
    out = torch.stack(outputs)
    return (out.transpose(0, 1) if lstm.batch_first else out), (torch.stack(h), torch.stack(c))
