"""The Triton step kernels against the Python recurrence, on a CPU under Triton's interpreter.

Tolerances: float64 1e-12, float32 1e-5 (the kernels and the Python recurrence round differently).
On a GPU machine the same tests run the compiled kernels (no interpreter).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():  # before the kernels are defined: Triton reads it then
    os.environ.setdefault("TRITON_INTERPRET", "1")

from studies import HDetachLSTM, PackedHDetachLSTM
from studies.lstm import _kernel
from studies.lstm import _triton as fused
from studies.lstm._kernel import StepMask, backward_recurrence, forward_recurrence

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def draw(generator: torch.Generator, dtype: torch.dtype, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=dtype).to(DEVICE)


@pytest.mark.parametrize(
    ("dtype", "masking"),
    [(torch.float64, "none"), (torch.float64, "mixed"), (torch.float64, "all"), (torch.float32, "mixed")],
)
def test_the_kernels_compute_what_the_python_recurrence_does(dtype, masking):
    K, T, B, H = 2, 4, 2, fused.BLOCK_H + 6  # two blocks of hidden units, the second partly empty
    g = torch.Generator().manual_seed(1)
    act, h0, c0 = draw(g, dtype, K, T, B, 4 * H), draw(g, dtype, K, B, H), draw(g, dtype, K, B, H)
    w_hh = draw(g, dtype, K, 4 * H, H) / H**0.5
    grad_out, grad_hn, grad_cn = draw(g, dtype, K, T, B, H), draw(g, dtype, K, B, H), draw(g, dtype, K, B, H)
    blocked = {
        "none": torch.zeros(T, K, dtype=torch.bool),
        "mixed": torch.rand(T, K, generator=g) < 0.5,
        "all": torch.ones(T, K, dtype=torch.bool),
    }[masking]
    mask = StepMask(blocked, dtype, DEVICE)
    expected_act, got_act = act.clone(), act.clone()
    want = forward_recurrence(expected_act, h0, c0, w_hh)
    have = fused.forward_recurrence(got_act, h0, c0, w_hh)
    tol = TOLERANCE[dtype]
    for a, b in zip((*have, got_act), (*want, expected_act), strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    want_back = backward_recurrence(expected_act, want[1], want[2], w_hh, grad_out, grad_hn, grad_cn, mask)
    # a strided gradient, as autograd may pass one
    strided = grad_out.transpose(2, 3).contiguous().transpose(2, 3)
    have_back = fused.backward_recurrence(got_act, have[1], have[2], w_hh, strided, grad_hn, grad_cn, mask)
    for a, b in zip(have_back, want_back, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_a_packed_lstm_with_the_kernels_equals_it_without(monkeypatch):
    T, K, B = 5, 2, 3
    torch.manual_seed(0)
    model = PackedHDetachLSTM.from_lstms([HDetachLSTM(2, 9, num_layers=2) for _ in range(K)]).double()
    x = torch.randn(T, K, B, 2, dtype=torch.float64)
    blocked = torch.rand(T, K) < 0.5
    results = []
    for choice in ("off", "on"):
        monkeypatch.setenv(_kernel.TRITON_ENV, choice)
        model.zero_grad()
        inputs = x.clone().to(DEVICE).requires_grad_()
        out, (h_n, c_n) = model.to(DEVICE)(inputs, detach_mask=blocked)
        (out.sin().sum() + h_n.sum() + 2 * c_n.sum()).backward()
        results.append(
            [t.detach().clone() for t in (out, h_n, c_n, inputs.grad, *(p.grad for p in model.parameters()))]
        )
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_kernels_that_fail_their_check_are_not_used_and_on_says_why(monkeypatch, caplog):
    _kernel._triton_ready.cache_clear()
    monkeypatch.setattr(
        fused, "forward_recurrence", lambda act, h0, c0, w_hh: forward_recurrence(act * 1.01, h0, c0, w_hh)
    )
    with caplog.at_level(logging.WARNING, logger=_kernel.__name__):
        ready, why = _kernel._triton_ready(DEVICE, torch.float32)
    assert not ready and why.startswith("ArithmeticError: h differs")
    assert len(caplog.records) == 1 and "Python recurrence runs" in caplog.records[0].getMessage()
    monkeypatch.setenv(_kernel.TRITON_ENV, "on")
    with pytest.raises(RuntimeError, match="HDETACH_TRITON=on, but the Triton kernels cannot be used"):
        _kernel.uses_triton(torch.zeros(1, device=DEVICE))
    monkeypatch.setenv(_kernel.TRITON_ENV, "auto")
    assert _kernel.uses_triton(torch.zeros(1)) is False  # auto: CUDA tensors only
    monkeypatch.setenv(_kernel.TRITON_ENV, "sometimes")
    with pytest.raises(ValueError, match="expected one of auto, on, off"):
        _kernel.uses_triton(torch.zeros(1))
    _kernel._triton_ready.cache_clear()
