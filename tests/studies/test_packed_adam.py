"""PackedAdam: model k of a pack moves exactly as torch.optim.Adam moves it alone."""

from __future__ import annotations

import math

import pytest
import torch

from studies.training.packed import PackedAdam, clip_grad_norm_per_model

LRS = [1e-3, 3e-2, 0.0]  # the last model is frozen, as a diverged trial is


def _pack_and_singles(seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    packed = [
        torch.randn(len(LRS), 4, 3, generator=g, dtype=torch.float64),
        torch.randn(len(LRS), 4, generator=g, dtype=torch.float64),
    ]
    singles = [[p[k].clone().requires_grad_() for p in packed] for k in range(len(LRS))]
    return [p.requires_grad_() for p in packed], singles


def _gradients(step: int, shapes: list[torch.Size]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]


def test_each_model_follows_torch_adam_to_1e_12():
    packed, singles = _pack_and_singles()
    ours = PackedAdam(packed, LRS, betas=(0.9, 0.98), eps=1e-6)
    theirs = [
        torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.98), eps=1e-6) for ps, lr in zip(singles, LRS, strict=True)
    ]
    for step in range(20):
        grads = _gradients(step, [p.shape for p in packed])
        ours.zero_grad()
        for p, grad in zip(packed, grads, strict=True):
            p.grad = grad.clone()
        ours.step()
        for k, (params, adam) in enumerate(zip(singles, theirs, strict=True)):
            adam.zero_grad()
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad[k].clone()
            adam.step()
    for k, params in enumerate(singles):
        for p_packed, p_single in zip(packed, params, strict=True):
            torch.testing.assert_close(p_packed[k].detach(), p_single.detach(), rtol=0, atol=1e-12)
    assert torch.equal(packed[0][2].detach(), _pack_and_singles()[0][0][2].detach())  # lr 0: unmoved


def test_a_saved_state_continues_exactly():
    packed, _ = _pack_and_singles()
    reference = [p.detach().clone().requires_grad_() for p in packed]
    first, second = PackedAdam(packed, LRS), PackedAdam(reference, LRS)
    for step in range(6):
        if step == 3:  # swap the second for a fresh optimizer restored from its saved state
            saved = second.state_dict()
            second = PackedAdam(reference, LRS)
            second.load_state_dict(saved)
        for optimizer, params in ((first, packed), (second, reference)):
            optimizer.zero_grad()
            for p, grad in zip(params, _gradients(step, [p.shape for p in params]), strict=True):
                p.grad = grad
            optimizer.step()
    for a, b in zip(packed, reference, strict=True):
        assert torch.equal(a, b)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        PackedAdam([torch.zeros(2, 1, requires_grad=True)], [1e-3, -1.0])
    optimizer = PackedAdam([torch.zeros(2, 1, requires_grad=True)], [1e-3, 1e-3])
    with pytest.raises(ValueError, match="saved state has 2 parameters"):
        optimizer.load_state_dict(
            {"state": {}, "param_groups": [{"betas": (0.9, 0.999), "eps": 1e-8, "params": [0, 1]}]}
        )


def test_each_model_is_clipped_by_its_own_norm_as_torch_clips_it_alone():
    gen = torch.Generator().manual_seed(0)
    K = 4
    shapes = [(K, 6, 5), (K, 6)]
    params = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in shapes]
    scale = torch.tensor([0.05, 3.0, 40.0, 7.0], dtype=torch.float64)  # gradient norms far apart
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale.view(
            -1, *[1] * (p.dim() - 1)
        )
    max_norm = torch.tensor([1.0, 1.0, 1.0, math.inf], dtype=torch.float64)  # model 3: no clipping
    expected_norms, expected_grads = [], []
    for k in range(K):  # each model alone, through torch's own clipping
        alone = [torch.zeros(p.shape[1:], dtype=torch.float64, requires_grad=True) for p in params]
        for q, p in zip(alone, params, strict=True):
            q.grad = p.grad[k].clone()
        expected_norms.append(float(torch.nn.utils.clip_grad_norm_(alone, float(max_norm[k]))))
        expected_grads.append([q.grad for q in alone])

    norms = clip_grad_norm_per_model(params, max_norm)

    assert norms.tolist() == pytest.approx(expected_norms, rel=1e-12)
    assert norms[0] < 1.0 < norms[1] < norms[2]  # one model under its limit, two over it: clipping bites
    for k in range(K):
        for p, want in zip(params, expected_grads[k], strict=True):
            torch.testing.assert_close(p.grad[k], want, rtol=1e-12, atol=0)
