"""The h-detach LSTM's per-step element-wise work as two Triton kernels, for accelerators.

The Python recurrence (studies.lstm._kernel) issues about 8 kernels per step forward and 12
backward; on a GPU each costs a launch, so a small LSTM spends its time launching. Here each step
is one batched GEMM (cuBLAS, `baddbmm`) plus one fused kernel:

- forward: the (K, B, 4H) pre-activations in the internal gate order (o, i, f, 2g) become the
  gates (written back in place, as the backward pass reads them), c_t, tanh(c_t) and h_t;
- backward: from dh_t and the carried dc, the gradient of every pre-activation of the step and
  dc carried to step t-1 (the h-detach mask is applied to the step's gradient afterwards, by the
  GEMM that carries it to h_{t-1}, exactly as in the Python recurrence).

Each program handles one (model, batch row) and a block of hidden units. Arithmetic is in the
tensors' dtype (float32 or float64); sigmoid is 1 / (1 + exp(-x)) and tanh 2 sigmoid(2x) - 1, as
the other paths compute them, up to rounding.

HDETACH_TRITON chooses: "auto" (the default) uses these kernels on CUDA tensors when Triton
imports; "on" uses them on any device (on a CPU under TRITON_INTERPRET=1, Triton's interpreter:
how the tests check them against the Python recurrence) and fails if Triton is missing; "off"
never. This module is imported only when the kernels are used.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from studies.lstm._kernel import StepMask, state_buffers, step_back

BLOCK_H = 64  # hidden units per program


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _gates_forward(
    act, c_prev, c_next, tanh_c, h_next,  # pointers, each viewed as (K, B, ...) with unit last stride
    s_act_k, s_act_b, s_cp_k, s_cp_b, s_cn_k, s_cn_b, s_tc_k, s_tc_b, s_h_k, s_h_b,
    B, H, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    k, b = row // B, row % B
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < H
    a = act + k * s_act_k + b * s_act_b + cols
    o = _sigmoid(tl.load(a, mask=live))
    i = _sigmoid(tl.load(a + H, mask=live))
    f = _sigmoid(tl.load(a + 2 * H, mask=live))
    g = 2.0 * _sigmoid(tl.load(a + 3 * H, mask=live)) - 1.0  # the row holds 2x: tanh(x)
    c = f * tl.load(c_prev + k * s_cp_k + b * s_cp_b + cols, mask=live) + i * g
    tc = 2.0 * _sigmoid(2.0 * c) - 1.0
    tl.store(a, o, mask=live)
    tl.store(a + H, i, mask=live)
    tl.store(a + 2 * H, f, mask=live)
    tl.store(a + 3 * H, g, mask=live)
    tl.store(c_next + k * s_cn_k + b * s_cn_b + cols, c, mask=live)
    tl.store(tanh_c + k * s_tc_k + b * s_tc_b + cols, tc, mask=live)
    tl.store(h_next + k * s_h_k + b * s_h_b + cols, o * tc, mask=live)


@triton.jit
def _gates_backward(
    act, c_prev, tanh_c, dh, dc_in, d_pre, dc_out,
    s_act_k, s_act_b, s_cp_k, s_cp_b, s_tc_k, s_tc_b, s_dh_k, s_dh_b, s_di_k, s_di_b,
    s_dp_k, s_dp_b, s_do_k, s_do_b,
    B, H, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    k, b = row // B, row % B
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = cols < H
    a = act + k * s_act_k + b * s_act_b + cols
    o = tl.load(a, mask=live)
    i = tl.load(a + H, mask=live)
    f = tl.load(a + 2 * H, mask=live)
    g = tl.load(a + 3 * H, mask=live)
    tc = tl.load(tanh_c + k * s_tc_k + b * s_tc_b + cols, mask=live)
    dh_t = tl.load(dh + k * s_dh_k + b * s_dh_b + cols, mask=live)
    dc = tl.load(dc_in + k * s_di_k + b * s_di_b + cols, mask=live) + dh_t * o * (1.0 - tc * tc)
    cp = tl.load(c_prev + k * s_cp_k + b * s_cp_b + cols, mask=live)
    d = d_pre + k * s_dp_k + b * s_dp_b + cols
    tl.store(d, dh_t * tc * o * (1.0 - o), mask=live)
    tl.store(d + H, dc * g * i * (1.0 - i), mask=live)
    tl.store(d + 2 * H, dc * cp * f * (1.0 - f), mask=live)
    tl.store(d + 3 * H, dc * i * (0.5 - 0.5 * g * g), mask=live)  # d tanh(x) / d(2x)
    tl.store(dc_out + k * s_do_k + b * s_do_b + cols, dc * f, mask=live)


def _strides(*tensors: Tensor) -> list[int]:
    """(stride over K, stride over B) of each (K, B, n) view; the last dim must be unit-stride."""
    out = []
    for tensor in tensors:
        assert tensor.stride(-1) == 1, "the last dim must be contiguous"
        out += [tensor.stride(0), tensor.stride(1)]
    return out


def _grid(K: int, B: int, H: int) -> tuple[int, int]:
    return (K * B, triton.cdiv(H, BLOCK_H))


def forward_recurrence(act: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What studies.lstm._kernel.forward_recurrence computes, one GEMM and one kernel per step."""
    K, T, B, _ = act.shape
    H = w_hh.shape[-1]
    h, c, tanh_c = state_buffers(act, h0, c0)
    w_hh_t = w_hh.transpose(1, 2)  # (K, H, 4H)
    grid = _grid(K, B, H)
    for t in range(T):
        a = act[:, t]  # (K, B, 4H)
        a.baddbmm_(h[:, t], w_hh_t)
        views = (a, c[:, t], c[:, t + 1], tanh_c[:, t], h[:, t + 1])
        _gates_forward[grid](*views, *_strides(*views), B, H, BLOCK=BLOCK_H)
    return h, c, tanh_c


def backward_recurrence(
    act: Tensor,  # (K, T, B, 4H) gates
    c: Tensor,  # (K, T + 1, B, H)
    tanh_c: Tensor,  # (K, T, B, H)
    w_hh: Tensor,  # (K, 4H, H)
    grad_out: Tensor,  # (K, T, B, H)
    grad_hn: Tensor | None,
    grad_cn: Tensor | None,
    mask: StepMask | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What studies.lstm._kernel.backward_recurrence computes, one kernel and one GEMM per step."""
    K, T, B, _ = act.shape
    H = w_hh.shape[-1]
    grad_out = grad_out.contiguous()  # autograd may hand over an expanded or strided gradient
    d_pre = act.new_empty(K, T, B, 4 * H)
    dh = grad_out[:, T - 1] if grad_hn is None else (grad_out[:, T - 1] + grad_hn).contiguous()
    dc_carry = grad_cn.contiguous() if grad_cn is not None else act.new_zeros(K, B, H)
    spare = act.new_empty(K, B, H)
    grad_h0 = act.new_zeros(K, B, H)
    grid = _grid(K, B, H)
    for t in range(T - 1, -1, -1):
        d_pre_t = d_pre[:, t]
        views = (act[:, t], c[:, t], tanh_c[:, t], dh, dc_carry, d_pre_t, spare)
        _gates_backward[grid](*views, *_strides(*views), B, H, BLOCK=BLOCK_H)
        dc_carry, spare = spare, dc_carry
        dh, grad_h0 = step_back(d_pre_t, t, mask, grad_out, w_hh, grad_h0)
    return d_pre, grad_h0, dc_carry
