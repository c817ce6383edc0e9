"""HDetachLSTM and PackedHDetachLSTM against nn.LSTM and the plain per-step detach loop, in float64.

The equivalence tests run twice: on the CPU's own path (the compiled kernel, one model at a time
where it is Python), and on the path every GPU takes (HDETACH_LSTM_KERNEL=accelerator: all models
in one call, the mask applied by multiplying blocked steps by zero), so that path is checked here,
without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from studies import HDetachLSTM, PackedHDetachLSTM, detach_loop_lstm
from studies.lstm._cpp import KERNEL_ENV

TOL = 1e-10  # max abs error allowed between implementations, float64
T, B, I, H = 9, 4, 3, 6


def _masks(steps: int) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(11)
    return {
        "none": None,
        "random": torch.rand(steps, generator=g) < 0.5,
        "all": torch.ones(steps, dtype=torch.bool),
        "first_only": torch.arange(steps) == 0,
    }


@pytest.fixture(params=["auto", "accelerator"])
def kernel(request, monkeypatch):
    """The CPU's own path, then the accelerator's (read at every forward)."""
    monkeypatch.setenv(KERNEL_ENV, request.param)
    return request.param


def _grads(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]


def _run(forward, leaves, loss_kind: str, batch_first: bool = False):
    for t in leaves:
        t.grad = None
    out, (h_n, c_n) = forward()
    if loss_kind == "every_step":  # copying: a loss at every step
        loss = (
            (out.sin() * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum()
            + h_n.sum()
            + c_n.pow(2).sum()
        )
    else:  # pixel MNIST: a loss on the last step only
        last = out[:, -1] if batch_first else out[-1]
        loss = last.tanh().pow(2).sum()
    loss.backward()
    return [out.detach(), h_n.detach(), c_n.detach(), *_grads(leaves)]


def _max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("loss_kind", ["every_step", "last_step"])
def test_unblocked_equals_nn_lstm(num_layers, batch_first, with_hx, loss_kind, kernel):
    torch.manual_seed(0)
    ours = HDetachLSTM(I, H, num_layers, batch_first=batch_first, p_detach=0.5).double()
    ref = nn.LSTM(I, H, num_layers, batch_first=batch_first).double()
    ref.load_state_dict(ours.state_dict())
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(num_layers, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    state = hx if with_hx else None
    leaves_ours = [x, *hx, *ours.parameters()]
    leaves_ref = [x, *hx, *ref.parameters()]
    mask = torch.zeros(T, dtype=torch.bool)
    a = _run(lambda: ours(x, state, detach_mask=mask), leaves_ours, loss_kind, batch_first)
    b = _run(lambda: ref(x, state), leaves_ref, loss_kind, batch_first)
    assert _max_err(a, b) <= TOL


@pytest.mark.parametrize("mask_name", ["none", "random", "all", "first_only"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("loss_kind", ["every_step", "last_step"])
def test_masked_equals_per_step_detach_loop(mask_name, num_layers, batch_first, loss_kind, kernel):
    torch.manual_seed(1)
    model = HDetachLSTM(I, H, num_layers, batch_first=batch_first, p_detach=0.5).double()
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(num_layers, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = _masks(T)[mask_name]
    fixed = torch.zeros(T, dtype=torch.bool) if mask is None else mask
    leaves = [x, *hx, *model.parameters()]
    a = _run(lambda: model(x, hx, detach_mask=fixed), leaves, loss_kind, batch_first)
    b = _run(lambda: detach_loop_lstm(model, x, hx, fixed), leaves, loss_kind, batch_first)
    assert _max_err(a, b) <= TOL


def test_blocking_changes_gradient_but_not_forward():
    torch.manual_seed(2)
    model = HDetachLSTM(I, H, p_detach=0.5).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    leaves = list(model.parameters())
    free = _run(lambda: model(x, detach_mask=torch.zeros(T, dtype=torch.bool)), leaves, "last_step")
    blocked = _run(lambda: model(x, detach_mask=torch.ones(T, dtype=torch.bool)), leaves, "last_step")
    assert _max_err(free[:3], blocked[:3]) == 0.0
    assert _max_err(free[3:], blocked[3:]) > 1e-6


def test_sampling_draws_one_mask_per_step_and_respects_modes():
    model = HDetachLSTM(I, H, p_detach=0.5)
    x = torch.randn(200, B, I)
    torch.manual_seed(3)
    model(x)
    mask = model.last_detach_mask
    assert mask is not None and mask.shape == (200,) and mask.dtype == torch.bool
    assert 60 < int(mask.sum()) < 140  # Binomial(200, 0.5): outside this range has probability < 1e-8
    torch.manual_seed(3)
    model(x)
    assert torch.equal(model.last_detach_mask, mask)  # reproducible from the global seed
    model.eval()
    model(x)
    assert model.last_detach_mask is None
    vanilla = HDetachLSTM(I, H, p_detach=0.0)
    vanilla(x)
    assert vanilla.last_detach_mask is None


def test_state_dict_round_trips_with_nn_lstm():
    ref = nn.LSTM(I, H, 2)
    ours = HDetachLSTM(I, H, 2, p_detach=0.25)
    ours.load_state_dict(ref.state_dict())
    assert list(ours.state_dict()) == list(ref.state_dict())
    back = nn.LSTM(I, H, 2)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(back.parameters(), ref.parameters(), strict=True))


def test_same_seed_gives_nn_lstm_initialisation():
    torch.manual_seed(5)
    ref = nn.LSTM(I, H)
    torch.manual_seed(5)
    ours = HDetachLSTM(I, H)
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), ref.parameters(), strict=True))


def test_unbatched_input_matches_batched():
    torch.manual_seed(6)
    model = HDetachLSTM(I, H).double()
    x = torch.randn(T, I, dtype=torch.float64)
    out, (h_n, _c_n) = model(x)
    out_b, (h_b, _c_b) = model(x.unsqueeze(1))
    assert out.shape == (T, H) and h_n.shape == (1, H)
    assert torch.allclose(out, out_b[:, 0], atol=TOL) and torch.allclose(h_n, h_b[:, 0], atol=TOL)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_p_detach_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match="p_detach"):
        HDetachLSTM(I, H, p_detach=bad)
    with pytest.raises(ValueError, match="p_detach"):
        PackedHDetachLSTM(2, I, H, p_detach=[0.0, bad])


def test_wrong_mask_shape_is_rejected():
    model = HDetachLSTM(I, H)
    with pytest.raises(ValueError, match="detach_mask"):
        model(torch.randn(T, B, I), detach_mask=torch.zeros(T + 1, dtype=torch.bool))


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_models_each_equal_their_own_detach_loop(num_layers, batch_first, kernel):
    torch.manual_seed(7)
    K = 4
    singles = [HDetachLSTM(I, H, num_layers, batch_first=batch_first).double() for _ in range(K)]
    packed = PackedHDetachLSTM.from_lstms(singles, p_detach=[0.0, 0.25, 0.5, 1.0])
    assert packed.weight_hh_l0.shape == (K, 4 * H, H)
    x = torch.randn(T, K, B, I, dtype=torch.float64)
    hx = tuple(torch.randn(num_layers, K, B, H, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(T, K, generator=torch.Generator().manual_seed(8)) < 0.5
    mask[:, 0] = False
    mask[:, 3] = True
    x_in = x.permute(1, 2, 0, 3) if batch_first else x
    out, (h_n, _c_n) = packed(x_in, hx, detach_mask=mask)
    out_tk = out.permute(2, 0, 1, 3) if batch_first else out
    (out_tk.cos().sum() + h_n.sum()).backward()
    for k, single in enumerate(singles):
        xk = x[:, k].transpose(0, 1) if batch_first else x[:, k]
        o, (h, _) = detach_loop_lstm(single, xk, (hx[0][:, k], hx[1][:, k]), mask[:, k])
        o_t = o.transpose(0, 1) if batch_first else o
        (o_t.cos().sum() + h.sum()).backward()
        assert (out_tk[:, k] - o_t).abs().max().item() <= TOL
        for name, p in single.named_parameters():
            assert (packed.get_parameter(name).grad[k] - p.grad).abs().max().item() <= TOL, name


def test_packed_samples_one_mask_per_model_with_its_own_p():
    packed = PackedHDetachLSTM(3, I, H, p_detach=[0.0, 0.5, 1.0])
    torch.manual_seed(9)
    packed(torch.randn(400, 3, B, I))
    mask = packed.last_detach_mask
    assert mask is not None and mask.shape == (400, 3)
    assert int(mask[:, 0].sum()) == 0 and int(mask[:, 2].sum()) == 400
    assert 140 < int(mask[:, 1].sum()) < 260


def test_packed_load_model_state_fills_one_models_slice():
    single = HDetachLSTM(I, H, 2)
    packed = PackedHDetachLSTM(3, I, H, 2)
    packed.load_model_state(1, single.state_dict())
    state = {name: p[1] for name, p in packed.named_parameters()}  # model 1's slice of each packed parameter
    assert all(torch.equal(state[n], p) for n, p in single.state_dict().items())
