"""The fused h-detach LSTM layer: one autograd Function that runs K independent models at once.

Shapes use T (steps), K (packed models), B (batch), I (input size), H (hidden size).

Internally the gates are kept in the order (o, i, f, g), with g's rows scaled by 2 so that a
single sigmoid over all 4H pre-activations gives every gate: tanh(x) = 2 * sigmoid(2x) - 1, and
one sigmoid over a contiguous block is several times cheaper on a CPU than a sigmoid and a tanh
over strided slices. In the backward pass the gates driven by dc (i, f, g) are then contiguous
too. The conversion from nn.LSTM's (i, f, g, o) happens at the boundary, inside autograd.

The backward pass runs the masked recurrence itself: at a step whose h_{t-1} is blocked the
recurrent GEMM is skipped (or, with a mask on an accelerator, multiplied by zero so that nothing
is read back to the host), and the weight gradients are one batched GEMM over all steps.

On CPU float32/float64 tensors both recurrences, and the input-side work around them, run in C++
(csrc/hdetach_cpu.cpp; _cpp.py builds it and reads HDETACH_LSTM_KERNEL, with this module's Python
as the fallback). forward_recurrence and backward_recurrence below are its reference, and the path
taken on accelerators.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from studies.lstm._cpp import compiled_ops, kernel_choice, uses_cpp

Tensor = torch.Tensor
log = logging.getLogger(__name__)

TRITON_ENV = "HDETACH_TRITON"  # auto | on | off: see studies.lstm._triton
TRITON_CHOICES = ("auto", "on", "off")


def to_internal_order(w: Tensor, hidden_size: int) -> Tensor:
    """Gate rows (dim -2 of a weight, dim -1 of a bias) from (i, f, g, o) to (o, i, f, 2g)."""
    dim = -2 if w.dim() >= 3 else -1
    i, f, g, o = w.split(hidden_size, dim=dim)
    return torch.cat((o, i, f, 2 * g), dim=dim)


class StepMask:
    """Which steps block the gradient through h_{t-1}, for each packed model.

    keep: (T, K) tensor on the compute device, 1 where the gradient flows.
    host: per step, "all", "none" or "mixed" blocked, known on the host; None when the mask lives
    on an accelerator, where reading it would synchronise at every step.
    blocked_host: the (T, K) bool mask itself when it is on the host (the C++ path reads it), else None.
    """

    def __init__(self, blocked: Tensor, dtype: torch.dtype, device: torch.device, on_host: bool = True):
        self.keep = (~blocked).to(device=device, dtype=dtype)  # (T, K)
        self.host: list[str] | None = None
        self.blocked_host: Tensor | None = None
        if on_host and blocked.device.type == "cpu":
            self.blocked_host = blocked
            K = blocked.shape[1]
            n_blocked = blocked.sum(dim=1).tolist()
            self.host = ["all" if n == K else "none" if n == 0 else "mixed" for n in n_blocked]

    def state(self, t: int) -> str:
        return "mixed" if self.host is None else self.host[t]


def state_buffers(act: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """h and c (K, T + 1, B, H) holding the initial state at step 0, and tanh(c) (K, T, B, H), for
    a forward recurrence over `act` (K, T, B, 4H) to fill."""
    K, T, B, _ = act.shape
    H = h0.shape[-1]
    h = act.new_empty(K, T + 1, B, H)
    c = act.new_empty(K, T + 1, B, H)
    h[:, 0] = h0
    c[:, 0] = c0
    return h, c, act.new_empty(K, T, B, H)


def step_back(
    d_pre_t: Tensor, t: int, mask: StepMask | None, grad_out: Tensor, w_hh: Tensor, grad_h0: Tensor
) -> tuple[Tensor, Tensor]:
    """Carry step t's pre-activation gradient (K, B, 4H) to h_{t-1}, through the models whose
    h_{t-1} is not blocked: (dh for step t-1, grad_h0), the latter set at t = 0."""
    state = "none" if mask is None else mask.state(t)
    if state == "all":  # every model blocked: no GEMM
        return (grad_out[:, t - 1] if t > 0 else grad_h0), grad_h0
    K = d_pre_t.shape[0]
    prev = d_pre_t if state == "none" else d_pre_t * mask.keep[t].view(K, 1, 1)  # type: ignore[union-attr]
    if t > 0:
        return torch.baddbmm(grad_out[:, t - 1], prev, w_hh), grad_h0
    grad_h0 = torch.bmm(prev, w_hh)
    return grad_h0, grad_h0


def forward_recurrence(act: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The forward recurrence in Python, as csrc/hdetach_cpu.cpp runs it on CPUs.

    act: (K, T, B, 4H) pre-activations of the input projection, overwritten step by step with the
    gates. Returns h and c, (K, T + 1, B, H) with the initial state at step 0, and tanh(c) (K, T, B, H).
    """
    T = act.shape[1]
    H = w_hh.shape[-1]
    h, c, tanh_c = state_buffers(act, h0, c0)
    minus_one = act.new_full((), -1.0)  # filled on the device: a host copy could not be graph-captured
    w_hh_t = w_hh.transpose(1, 2)  # (K, H, 4H)
    for t in range(T):
        a = act[:, t]  # (K, B, 4H)
        a.baddbmm_(h[:, t], w_hh_t)
        a.sigmoid_()
        o, i, f, g = a.split(H, dim=-1)
        torch.add(minus_one, g, alpha=2, out=g)  # tanh of the unscaled pre-activation
        c_next = c[:, t + 1]
        torch.mul(f, c[:, t], out=c_next)
        c_next.addcmul_(i, g)
        torch.tanh(c_next, out=tanh_c[:, t])
        torch.mul(o, tanh_c[:, t], out=h[:, t + 1])
    return h, c, tanh_c


def backward_recurrence(
    act: Tensor,  # (K, T, B, 4H) gates
    c: Tensor,  # (K, T + 1, B, H)
    tanh_c: Tensor,  # (K, T, B, H)
    w_hh: Tensor,  # (K, 4H, H)
    grad_out: Tensor,  # (K, T, B, H)
    grad_hn: Tensor | None,  # (K, B, H)
    grad_cn: Tensor | None,  # (K, B, H)
    mask: StepMask | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The masked backward recurrence in Python, as csrc/hdetach_cpu.cpp runs it on CPUs.

    Returns d_pre (K, T, B, 4H), the gradient of every step's pre-activations, and the gradients of h0 and c0.
    """
    K, T, B, _ = act.shape
    H = w_hh.shape[-1]
    o, i, f, g = act.split(H, dim=-1)  # each (K, T, B, H)
    one, half = act.new_full((), 1.0), act.new_full((), 0.5)  # on the device, as above

    # Local derivatives for all steps at once, written in place (large temporaries cost page
    # faults on a CPU). d_pre[:, t] = local * (dh_t for o; dc_t for i, f, g) afterwards.
    d_pre = torch.empty_like(act)  # (K, T, B, 4H)
    d_o, d_i, d_f, d_g = d_pre.split(H, dim=-1)
    torch.addcmul(o, o, o, value=-1, out=d_o).mul_(tanh_c)  # tanh(c) * o (1 - o)
    torch.addcmul(i, i, i, value=-1, out=d_i).mul_(g)  # g * i (1 - i)
    torch.addcmul(f, f, f, value=-1, out=d_f).mul_(c[:, :-1])  # c_{t-1} * f (1 - f)
    torch.addcmul(half, g, g, value=-0.5, out=d_g).mul_(i)  # i * d tanh(x) / d(2x)
    dc_from_dh = torch.addcmul(one, tanh_c, tanh_c, value=-1).mul_(o)  # o (1 - tanh(c)^2)

    dh = grad_out[:, T - 1] if grad_hn is None else grad_out[:, T - 1] + grad_hn
    dc_carry = grad_cn if grad_cn is not None else act.new_zeros(K, B, H)
    grad_h0 = act.new_zeros(K, B, H)
    for t in range(T - 1, -1, -1):
        dc = torch.addcmul(dc_carry, dh, dc_from_dh[:, t])
        d_pre_t = d_pre[:, t]  # (K, B, 4H)
        d_pre_t[..., H:].unflatten(-1, (3, H)).mul_(dc.unsqueeze(2))
        d_pre_t[..., :H].mul_(dh)
        dc_carry = dc * f[:, t]
        dh, grad_h0 = step_back(d_pre_t, t, mask, grad_out, w_hh, grad_h0)
    return d_pre, grad_h0, dc_carry


def triton_choice() -> str:
    choice = os.environ.get(TRITON_ENV, "auto").strip().lower() or "auto"
    if choice not in TRITON_CHOICES:
        raise ValueError(f"{TRITON_ENV}={choice!r}: expected one of {', '.join(TRITON_CHOICES)}")
    return choice


def uses_triton(x: Tensor) -> bool:
    """Whether the recurrences of `x`'s layer run the Triton kernels: HDETACH_TRITON=on always
    (an error if they fail their check), "auto" on CUDA tensors once the kernels pass their check
    on that device and dtype (else one warning and the Python recurrence), "off" never."""
    choice = triton_choice()
    if choice == "off" or (choice == "auto" and x.device.type != "cuda"):
        return False
    ready, why = _triton_ready(x.device, x.dtype)
    if not ready and choice == "on":
        raise RuntimeError(f"{TRITON_ENV}=on, but the Triton kernels cannot be used: {why}")
    return ready


@functools.cache
def _triton_ready(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Run the kernels once at a small shape against the Python recurrence (float32: 1e-5,
    float64: 1e-10, relative to the values' size); a failure is logged once and remembered."""
    try:
        from studies.lstm import _triton

        generator = torch.Generator().manual_seed(0)

        def draw(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, dtype=dtype).to(device)

        K, T, B, H = 2, 3, 3, 5
        act, h0, c0, w_hh = draw(K, T, B, 4 * H), draw(K, B, H), draw(K, B, H), draw(K, 4 * H, H)
        grad_out, grad_cn = draw(K, T, B, H), draw(K, B, H)
        blocked = torch.tensor([[True, False], [False, False], [True, True]])
        mask = StepMask(blocked, dtype, device)
        expected_act, got_act = act.clone(), act.clone()
        h, c, tanh_c = forward_recurrence(expected_act, h0, c0, w_hh)
        expected = (
            h,
            c,
            tanh_c,
            *backward_recurrence(expected_act, c, tanh_c, w_hh, grad_out, None, grad_cn, mask),
        )
        h, c, tanh_c = _triton.forward_recurrence(got_act, h0, c0, w_hh)
        got = (
            h,
            c,
            tanh_c,
            *_triton.backward_recurrence(got_act, c, tanh_c, w_hh, grad_out, None, grad_cn, mask),
        )
        tolerance = 1e-10 if dtype == torch.float64 else 1e-5
        for name, want, have in zip(
            ("h", "c", "tanh_c", "d_pre", "grad_h0", "grad_c0"), expected, got, strict=True
        ):
            if not torch.allclose(have, want, rtol=tolerance, atol=tolerance):
                raise ArithmeticError(f"{name} differs by {float((have - want).abs().max()):.3g}")
    except Exception as error:  # any failure means: do not use the kernels
        why = f"{type(error).__name__}: {error}".splitlines()[0]
        log.warning(
            "Triton LSTM kernels not used on %s %s (%s); the Python recurrence runs", device, dtype, why
        )
        return False, why
    return True, ""


class FusedHDetachLayer(torch.autograd.Function):
    """One LSTM layer for K packed models, h-detach applied in the backward pass.

    Tensors are model-major, (K, T, B, ...): each model's steps are contiguous, so the all-step
    GEMMs (input projection, weight gradients) need no copies, and a step is a strided (K, B, ...) view.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,  # (K, T, B, I)
        h0: Tensor,  # (K, B, H)
        c0: Tensor,  # (K, B, H)
        w_ih: Tensor,  # (K, 4H, I), internal gate order
        w_hh: Tensor,  # (K, 4H, H), internal gate order
        bias: Tensor | None,  # (K, 4H) = b_ih + b_hh, internal gate order
        mask: StepMask | None,
        use_cpp: bool = False,  # run the recurrences in C++ (CPU float32/float64 tensors)
        use_triton: bool = False,  # run them as one GEMM and one Triton kernel per step
    ) -> tuple[Tensor, Tensor, Tensor]:
        K, T, B, _ = x.shape
        H = w_hh.shape[-1]
        if use_cpp:  # the whole layer, input projection included
            act, h, c, tanh_c = compiled_ops().recurrence_forward(x, w_ih, bias, h0, c0, w_hh)
        else:
            # Input projection for all steps in one GEMM per model: (K, T*B, I) @ (K, I, 4H).
            x_k = x.reshape(K, T * B, -1)
            if bias is not None:
                xg = torch.baddbmm(bias.unsqueeze(1), x_k, w_ih.transpose(1, 2))
            else:
                xg = torch.bmm(x_k, w_ih.transpose(1, 2))
            act = xg.view(K, T, B, 4 * H)  # pre-activations, overwritten with the gates
            recurrence = _triton_module().forward_recurrence if use_triton else forward_recurrence
            h, c, tanh_c = recurrence(act, h0, c0, w_hh)
        ctx.mask = mask
        ctx.use_cpp = use_cpp
        ctx.use_triton = use_triton
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, w_ih, w_hh, h, c, tanh_c, act)
        return h[:, 1:], h[:, T].clone(), c[:, T].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, grad_hn: Tensor | None, grad_cn: Tensor | None):
        x, w_ih, w_hh, h, c, tanh_c, act = ctx.saved_tensors
        mask: StepMask | None = ctx.mask
        K, T, B, _ = x.shape
        H = w_hh.shape[-1]
        if grad_out is None:
            grad_out = x.new_zeros(K, T, B, H)
        need = ctx.needs_input_grad
        if ctx.use_cpp:  # which also sums the bias gradient, and w_ih's for small inputs, on the way
            d_pre, grad_h0, grad_c0, summed_grad_bias, summed_grad_w_ih = compiled_ops().recurrence_backward(
                act,
                c,
                tanh_c,
                w_hh,
                grad_out,
                x.new_zeros(K, B, H) if grad_hn is None else grad_hn,
                x.new_zeros(K, B, H) if grad_cn is None else grad_cn,
                None if mask is None else mask.blocked_host,
                x if need[3] else None,
            )
        else:
            recurrence = _triton_module().backward_recurrence if ctx.use_triton else backward_recurrence
            d_pre, grad_h0, grad_c0 = recurrence(act, c, tanh_c, w_hh, grad_out, grad_hn, grad_cn, mask)
            summed_grad_bias = summed_grad_w_ih = None

        # Weight gradients: one GEMM over all steps. W_hh gets its gradient at blocked steps too.
        d_pre_k = d_pre.view(K, T * B, 4 * H)
        grad_x = grad_w_ih = grad_w_hh = grad_bias = None
        if need[0]:
            grad_x = torch.bmm(d_pre_k, w_ih).view(K, T, B, -1)
        if need[3]:
            grad_w_ih = summed_grad_w_ih
            if grad_w_ih is None:
                grad_w_ih = torch.bmm(d_pre_k.transpose(1, 2), x.reshape(K, T * B, -1))
        if need[4]:
            grad_w_hh = torch.bmm(d_pre_k.transpose(1, 2), h[:, :T].reshape(K, T * B, H))
        if ctx.has_bias and need[5]:
            grad_bias = d_pre_k.sum(dim=1) if summed_grad_bias is None else summed_grad_bias
        return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, None, None, None


def _triton_module() -> Any:
    from studies.lstm import _triton  # imports triton: only where the kernels run

    return _triton


def cpu_as_accelerator(x: Tensor) -> bool:
    """Whether a CPU runs the layers over `x` the way a GPU runs them with its mask on the device:
    all K models in one call, blocked steps multiplied by zero (never skipped), the Python
    recurrence. HDETACH_LSTM_KERNEL=accelerator asks for it, so that the path every GPU takes is
    checked without one (tests/studies/test_hdetach_lstm.py)."""
    return x.device.type == "cpu" and kernel_choice() == "accelerator"


def model_chunk_size(K: int, device: torch.device, compiled: bool) -> int:
    """How many packed models one kernel call handles.

    All K on a GPU (the batched GEMMs fill the device) and with the compiled CPU kernel (its
    threads split the batch and run all steps without meeting; a 40-trial pack measured 1.15x
    the trials per hour of one after another, benchmarks/bench_pack.py). One on the Python CPU
    path: there a single model's per-step working set stays in cache, and all K at once measured
    slower per model (benchmarks/bench_lstm.py).
    """
    return K if device.type != "cpu" or compiled else 1


def packed_lstm_layers(
    x: Tensor,  # (T, K, B, I)
    h0: Tensor,  # (L, K, B, H)
    c0: Tensor,  # (L, K, B, H)
    layers: list[
        tuple[Tensor, Tensor, Tensor | None, Tensor | None]
    ],  # (w_ih, w_hh, b_ih, b_hh), nn.LSTM order
    blocked: Tensor | None,  # (T, K) bool, True = gradient through h_{t-1} blocked at step t
) -> tuple[Tensor, Tensor, Tensor]:
    """Run a stack of packed LSTM layers; every layer uses the same per-step mask.

    Returns output (T, K, B, H) (a view of model-major storage), h_n and c_n (L, K, B, H).
    """
    K, H = x.shape[1], h0.shape[-1]
    use_cpp = uses_cpp(x)
    use_triton = not use_cpp and uses_triton(x)
    forced = cpu_as_accelerator(x)  # a CPU running the GPU's path
    chunk = K if forced else model_chunk_size(K, x.device, use_cpp or use_triton)
    outs, h_ns, c_ns = [], [], []
    for start in range(0, K, chunk):
        models = slice(start, start + chunk)
        mask = None if blocked is None else StepMask(blocked[:, models], x.dtype, x.device, not forced)
        out = x[:, models].transpose(0, 1).contiguous()  # (k, T, B, I), model-major for the layers
        h_n, c_n = [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(layers):
            bias = None if b_ih is None or b_hh is None else to_internal_order(b_ih[models] + b_hh[models], H)
            out, h_last, c_last = FusedHDetachLayer.apply(
                out,
                h0[layer, models],
                c0[layer, models],
                to_internal_order(w_ih[models], H),
                to_internal_order(w_hh[models], H),
                bias,
                mask,
                use_cpp,
                use_triton,
            )
            h_n.append(h_last)
            c_n.append(c_last)
        outs.append(out)
        h_ns.append(torch.stack(h_n))
        c_ns.append(torch.stack(c_n))
    if len(outs) == 1:
        return outs[0].transpose(0, 1), h_ns[0], c_ns[0]
    return torch.cat(outs).transpose(0, 1), torch.cat(h_ns, dim=1), torch.cat(c_ns, dim=1)
