"""The compiled CPU recurrence (studies/lstm/csrc) against the Python one, and the choice between them."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from studies import HDetachLSTM, PackedHDetachLSTM
from studies.lstm import _cpp, _kernel
from studies.lstm._kernel import FusedHDetachLayer, StepMask, to_internal_order

TOL = 1e-10  # max abs error allowed between the two paths, float64
T, B, I, H = 11, 5, 3, 7
MASKS = ["none", "random", "all", "first_only"]
# Tests that build the extension run wherever a compiler is: a failed build then fails them loudly.
needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the extension"
)


def _mask(name: str, steps: int, models: int = 1) -> torch.Tensor | None:
    if name == "none":
        return None
    if name == "random":
        return torch.rand(steps, models, generator=torch.Generator().manual_seed(12)) < 0.5
    if name == "all":
        return torch.ones(steps, models, dtype=torch.bool)
    return (torch.arange(steps) == 0).view(steps, 1).expand(steps, models).clone()


def _run(choice: str, monkeypatch, forward, leaves: list[torch.Tensor], last_step_only: bool):
    """Outputs and the gradients of leaves with HDETACH_LSTM_KERNEL=choice."""
    monkeypatch.setenv(_cpp.KERNEL_ENV, choice)
    for t in leaves:
        t.grad = None
    out, (h_n, c_n) = forward()
    if last_step_only:  # pixel MNIST: the gradient enters at the last step only
        loss = out[-1].tanh().pow(2).sum()
    else:
        weights = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
        loss = (out.sin() * weights).sum() + h_n.sum() + c_n.pow(2).sum()
    loss.backward()
    grads = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in leaves]
    return [out.detach(), h_n.detach(), c_n.detach(), *grads]


def _max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@needs_compiler
def test_cpp_kernel_builds_and_runs_both_passes(monkeypatch):
    """With HDETACH_LSTM_KERNEL=cpp the Python recurrences are never called."""
    monkeypatch.setenv(_cpp.KERNEL_ENV, "cpp")
    assert _cpp.uses_cpp(torch.zeros(1, dtype=torch.float64))

    def python_path(*args, **kwargs):
        raise AssertionError("the Python recurrence ran")

    monkeypatch.setattr(_kernel, "forward_recurrence", python_path)
    monkeypatch.setattr(_kernel, "backward_recurrence", python_path)
    model = HDetachLSTM(I, H, p_detach=0.5)
    out, _ = model(torch.randn(T, B, I))
    out.sum().backward()
    assert model.weight_hh_l0.grad is not None and model.weight_hh_l0.grad.abs().sum() > 0


def test_python_choice_never_touches_the_extension(monkeypatch):
    monkeypatch.setenv(_cpp.KERNEL_ENV, "python")
    monkeypatch.setattr(_cpp, "_build", lambda: pytest.fail("the extension was loaded"))
    assert not _cpp.uses_cpp(torch.zeros(1))
    HDetachLSTM(I, H)(torch.randn(T, B, I))[0].sum().backward()


@needs_compiler
@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("last_step_only", [False, True])
def test_cpp_equals_python_float64(monkeypatch, mask_name, num_layers, last_step_only):
    torch.manual_seed(20)
    model = HDetachLSTM(I, H, num_layers, p_detach=0.5).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(num_layers, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = _mask(mask_name, T)
    fixed = torch.zeros(T, dtype=torch.bool) if mask is None else mask.view(T)
    leaves = [x, *hx, *model.parameters()]
    runs = {
        choice: _run(choice, monkeypatch, lambda: model(x, hx, detach_mask=fixed), leaves, last_step_only)
        for choice in ("cpp", "python")
    }
    assert _max_err(runs["cpp"], runs["python"]) <= TOL
    assert runs["cpp"][3].abs().max() > 0  # the input gradient is there, not trivially equal


@needs_compiler
@pytest.mark.parametrize("input_size", [1, 2, 5, 16])  # the C++ path fuses the input side up to 4
@pytest.mark.parametrize("bias", [True, False])
def test_input_sizes_and_bias(monkeypatch, input_size, bias):
    torch.manual_seed(27)
    model = HDetachLSTM(input_size, H, bias=bias, p_detach=0.5).double()
    x = torch.randn(T, B, input_size, dtype=torch.float64, requires_grad=True)
    mask = _mask("random", T)
    assert mask is not None
    leaves = [x, *model.parameters()]
    runs = {
        choice: _run(choice, monkeypatch, lambda: model(x, detach_mask=mask.view(T)), leaves, False)
        for choice in ("cpp", "python")
    }
    assert _max_err(runs["cpp"], runs["python"]) <= TOL


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_split_over_threads(monkeypatch, dtype):
    """A batch large enough for the C++ path to give each thread its own slice of rows."""
    torch.manual_seed(21)
    model = HDetachLSTM(I, H, 2, p_detach=0.5).to(dtype)
    x = torch.randn(40, 37, I, dtype=dtype, requires_grad=True)
    mask = _mask("random", 40)
    assert mask is not None
    leaves = [x, *model.parameters()]
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # uneven slices: 13, 13 and 11 rows
    try:
        runs = {
            choice: _run(choice, monkeypatch, lambda: model(x, detach_mask=mask.view(40)), leaves, False)
            for choice in ("cpp", "python")
        }
    finally:
        torch.set_num_threads(threads)
    if dtype == torch.float64:
        assert _max_err(runs["cpp"], runs["python"]) <= TOL
    else:  # float32: relative to each tensor's scale (the weight gradients sum 40 x 37 terms)
        for a, b in zip(runs["cpp"], runs["python"], strict=True):
            assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


@needs_compiler
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("last_step_only", [False, True])
def test_packed_models_cpp_equals_python(monkeypatch, num_layers, last_step_only):
    torch.manual_seed(22)
    K = 4
    packed = PackedHDetachLSTM(K, I, H, num_layers, p_detach=[0.0, 0.25, 0.5, 1.0]).double()
    x = torch.randn(T, K, B, I, dtype=torch.float64, requires_grad=True)
    hx = tuple(torch.randn(num_layers, K, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = _mask("random", T, K)
    assert mask is not None
    mask[:, 0], mask[:, 3] = False, True
    leaves = [x, *hx, *packed.parameters()]
    runs = {
        choice: _run(choice, monkeypatch, lambda: packed(x, hx, detach_mask=mask), leaves, last_step_only)
        for choice in ("cpp", "python")
    }
    assert _max_err(runs["cpp"], runs["python"]) <= TOL


@needs_compiler
@pytest.mark.parametrize("mask_name", [*MASKS, "mixed"])
def test_one_kernel_call_over_several_models(monkeypatch, mask_name):
    """The layer itself with K > 1 (on CPU the modules hand it one model at a time): per-model masks."""
    torch.manual_seed(23)
    K = 3
    x = torch.randn(K, T, B, I, dtype=torch.float64, requires_grad=True)
    h0, c0 = (torch.randn(K, B, H, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w_ih = torch.randn(K, 4 * H, I, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(K, 4 * H, H, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(K, 4 * H, dtype=torch.float64, requires_grad=True)
    blocked = _mask("random", T, K) if mask_name == "mixed" else _mask(mask_name, T, K)
    if mask_name == "mixed":
        assert blocked is not None
        blocked[:, 1] = ~blocked[:, 0]  # every step blocks some models and not others
    leaves = [x, h0, c0, w_ih, w_hh, bias]

    def forward(use_cpp: bool):
        mask = None if blocked is None else StepMask(blocked, x.dtype, x.device)
        args = (to_internal_order(w_ih, H), to_internal_order(w_hh, H), to_internal_order(bias, H))
        out, h_n, c_n = FusedHDetachLayer.apply(x, h0, c0, *args, mask, use_cpp)
        return out.transpose(0, 1), (h_n, c_n)  # (T, K, B, H)

    runs = {
        name: _run("auto", monkeypatch, lambda use_cpp=use_cpp: forward(use_cpp), leaves, False)
        for name, use_cpp in (("cpp", True), ("python", False))
    }
    assert _max_err(runs["cpp"], runs["python"]) <= TOL


@needs_compiler
def test_saturated_and_nan_pre_activations(monkeypatch):
    """Gates far in the tails of the sigmoid match the Python path; NaN propagates as through torch."""
    torch.manual_seed(24)
    model = HDetachLSTM(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64) * 1e3
    x[5, 1, 0] = float("inf")  # saturates every gate of one sample
    x[3, 0, 0] = float("nan")
    leaves = list(model.parameters())
    runs = {
        choice: _run(choice, monkeypatch, lambda: model(x), leaves, False) for choice in ("cpp", "python")
    }
    assert torch.equal(runs["cpp"][0].isnan(), runs["python"][0].isnan())
    nan = runs["cpp"][0].isnan()
    assert nan[3:, 0].all() and nan.sum() == nan[3:, 0].numel()  # from the NaN input on, in its sample only
    assert (runs["cpp"][0] - runs["python"][0])[~nan].abs().max() <= TOL


def test_failed_build_falls_back_with_one_warning_or_raises_when_forced(monkeypatch, caplog):
    failure = (None, RuntimeError("no compiler"))
    monkeypatch.setattr(_cpp, "_build", lambda: failure)
    monkeypatch.setenv(_cpp.KERNEL_ENV, "auto")
    model = HDetachLSTM(I, H)
    with caplog.at_level(logging.WARNING, logger=_cpp.__name__):
        for _ in range(2):
            model(torch.randn(T, B, I))[0].sum().backward()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no compiler" in warnings[0].getMessage()
    monkeypatch.setenv(_cpp.KERNEL_ENV, "cpp")
    with pytest.raises(RuntimeError, match="could not be built"):
        model(torch.randn(T, B, I))


def test_unsupported_tensors_and_choices(monkeypatch):
    monkeypatch.setenv(_cpp.KERNEL_ENV, "cpp")
    assert not _cpp.uses_cpp(torch.zeros(1, device="meta"))  # accelerators keep the Python path
    assert not _cpp.uses_cpp(torch.zeros(1, dtype=torch.bfloat16))
    monkeypatch.setenv(_cpp.KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match=_cpp.KERNEL_ENV):
        _cpp.uses_cpp(torch.zeros(1))


@needs_compiler
def test_workspace_buffers_are_reused_only_once_released(monkeypatch):
    """The C++ path recycles its large buffers: never one still referenced, always one released."""
    monkeypatch.setenv(_cpp.KERNEL_ENV, "cpp")
    ops = _cpp.cpp_ops()
    K, steps, batch, hidden = 1, 13, 3, 5  # a shape no other test uses
    torch.manual_seed(25)

    def forward():
        x = torch.randn(K, steps, batch, 2, dtype=torch.float64)
        w_ih = torch.randn(K, 4 * hidden, 2, dtype=torch.float64)
        w_hh = torch.randn(K, 4 * hidden, hidden, dtype=torch.float64)
        h0, c0 = (torch.randn(K, batch, hidden, dtype=torch.float64) for _ in range(2))
        return ops.recurrence_forward(x, w_ih, None, h0, c0, w_hh)

    first = forward()
    kept = [t.clone() for t in first]
    second = forward()
    assert not {t.data_ptr() for t in first} & {t.data_ptr() for t in second}
    assert all(torch.equal(a, b) for a, b in zip(first, kept, strict=True))  # untouched by the second call
    first_pointers = {t.data_ptr() for t in first}
    del first
    third = forward()
    assert {t.data_ptr() for t in third} == first_pointers


@needs_compiler
def test_backward_twice_with_retained_graph(monkeypatch):
    monkeypatch.setenv(_cpp.KERNEL_ENV, "cpp")
    torch.manual_seed(26)
    model = HDetachLSTM(I, H, p_detach=0.5).double()
    out, _ = model(torch.randn(T, B, I, dtype=torch.float64), detach_mask=torch.rand(T) < 0.5)
    loss = out.sin().sum()
    loss.backward(retain_graph=True)
    once = model.weight_hh_l0.grad.clone()
    loss.backward()
    assert torch.allclose(model.weight_hh_l0.grad, 2 * once, rtol=0, atol=TOL)


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_a_lock_left_by_a_killed_loader_does_not_hang_the_next_one():
    """torch's build lock is a plain file; a worker SIGKILLed while loading the extension leaves it.
    The next process must load anyway (before the fix it waited on it forever)."""
    import subprocess
    import sys

    assert _cpp._build()[1] is None  # built, so the child only loads
    stale = _cpp.build_directory() / "lock"
    stale.write_text("")
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "from studies.lstm import _cpp; ops, error = _cpp._build(); assert error is None",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert not stale.exists()


def test_build_directory_honours_torch_extensions_dir(monkeypatch, tmp_path):
    """As the README says (before, the build always went to torch's default root)."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _cpp.build_directory().parent == tmp_path
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert _cpp.build_directory().parent == Path(cpp_extension.get_default_build_root())


def test_build_loads_from_the_build_directory(monkeypatch, tmp_path):
    """_build hands torch the directory build_directory() names, and takes its lock there (no compile:
    torch's loader is stubbed). torch appends its own link flags to the list it is given: that must
    not change the directory afterwards."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    loads = []

    def load(**kwargs):
        loads.append(kwargs)
        kwargs["extra_cflags"].append("-DADDED_BY_TORCH")
        kwargs["extra_ldflags"].append("-ltorch")

    monkeypatch.setattr(cpp_extension, "load", load)
    before = _cpp.build_directory()
    _, error = _cpp._build.__wrapped__()  # the uncached body: this process's build stays as it is
    assert error is None
    [kwargs] = loads
    assert Path(kwargs["build_directory"]) == before == _cpp.build_directory()
    assert before.parent == tmp_path
    assert (_cpp.build_directory() / "hdetach.flock").exists()


def _copy_sources(tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name / "csrc"
    shutil.copytree(_cpp.SOURCE_DIR, copy)
    return copy


def test_checkouts_with_identical_kernel_sources_share_a_build_directory(monkeypatch, tmp_path):
    here = _cpp.build_directory()
    for name in ("a", "b"):  # two more checkouts, elsewhere
        monkeypatch.setattr(_cpp, "SOURCE_DIR", _copy_sources(tmp_path, name))
        assert _cpp.build_directory() == here


@pytest.mark.parametrize("source", sorted(p.name for p in _cpp.SOURCE_DIR.iterdir() if p.is_file()))
def test_a_changed_kernel_source_gets_its_own_build_directory(monkeypatch, tmp_path, source):
    """Checkouts with different kernel sources used to share one folder and rebuild it over each other."""
    here = _cpp.build_directory()
    copy = _copy_sources(tmp_path, "other")
    data = bytearray((copy / source).read_bytes())
    data[-1] ^= 1  # one bit of the last byte
    (copy / source).write_bytes(bytes(data))
    monkeypatch.setattr(_cpp, "SOURCE_DIR", copy)
    other = _cpp.build_directory()
    assert other != here and other.parent == here.parent


def test_build_settings_and_new_files_change_the_build_directory(monkeypatch, tmp_path):
    here = _cpp.build_directory()
    monkeypatch.setattr(_cpp, "CFLAGS", [*_cpp.CFLAGS, "-DSOMETHING"])
    assert _cpp.build_directory() != here
    monkeypatch.undo()
    copy = _copy_sources(tmp_path, "other")
    monkeypatch.setattr(_cpp, "SOURCE_DIR", copy)
    (copy / ".hidden.swp").write_text("an editor's")  # not a source
    assert _cpp.build_directory() == here
    (copy / "extra.h").write_text("// a new header\n")
    assert _cpp.build_directory() != here
