"""Milliseconds per training iteration: nn.LSTM, the per-step detach loop, ours, ours packed.

One iteration = forward, loss, backward, gradient clipping (1.0) and an Adam step, at the paper's
shapes. Implementations are timed round-robin (one iteration each, in turn) so that a noisy
shared machine slows them alike; the table shows medians. Packed rows give the cost per trial.
On a CPU, "ours" is timed twice: with the compiled recurrence (C++) and with the Python one
(HDETACH_LSTM_KERNEL=cpp / python); packed rows use the default (auto). On a GPU, "ours" is timed
with and without the Triton step kernels, and each pack also replayed as a CUDA graph ("ours
graphed K=..."); "K=1/this" compares a pack with K=1 of its own kind.

    python benchmarks/bench_lstm.py [--device cuda] [--repeats 7] [--packs 1 8] [--shapes "pixel MNIST"]
        [--out benchmarks/results/lstm_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from studies import HDetachLSTM, PackedHDetachLSTM, detach_loop_lstm
from studies.lstm._cpp import KERNEL_ENV
from studies.lstm._kernel import TRITON_ENV
from studies.training.graphs import GRAPH_TOLERANCE, GraphedStep
from studies.training.packed import PackedAdam, PackedLinear, clip_grad_norm_per_model


@dataclass(frozen=True)
class Shape:
    name: str
    steps: int
    hidden: int
    classes: int
    loss_every_step: bool
    p_detach: float
    batch: int = 100


SHAPES = [
    Shape("copying T=100", 120, 128, 9, True, 0.5),
    Shape("copying T=300", 320, 128, 9, True, 0.5),
    Shape("pixel MNIST", 784, 100, 10, False, 0.25),
]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def single_model_step(shape: Shape, kind: str, device: torch.device) -> Callable[[], None]:
    """One training iteration of one model: 'nn.LSTM', 'detach loop', 'ours' or 'ours (C++ / python)'."""
    lstm = (
        nn.LSTM(1, shape.hidden)
        if kind == "nn.LSTM"
        else HDetachLSTM(1, shape.hidden, p_detach=shape.p_detach)
    )
    head = nn.Linear(shape.hidden, shape.classes)
    lstm, head = lstm.to(device), head.to(device)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.rand(shape.steps, shape.batch, 1, device=device)
    y_shape = (shape.steps, shape.batch) if shape.loss_every_step else (shape.batch,)
    y = torch.randint(0, shape.classes, y_shape, device=device)

    def step() -> None:
        if kind == "detach loop":
            mask = torch.rand(shape.steps) < shape.p_detach
            out, _ = detach_loop_lstm(lstm, x, None, mask)
        else:
            out, _ = lstm(x)
        logits = head(out if shape.loss_every_step else out[-1])
        opt.zero_grad(set_to_none=True)
        _loss(logits, y).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    if kind in ("ours (C++)", "ours (python)"):  # the CPU recurrences
        return with_kernel(KERNEL_ENV, "cpp" if "C++" in kind else "python", step)
    if kind in ("ours (Triton)", "ours (no Triton)"):  # an accelerator's: fused step kernels or not
        return with_kernel(TRITON_ENV, "on" if kind == "ours (Triton)" else "off", step)
    return step


def with_kernel(variable: str, choice: str, step: Callable[[], None]) -> Callable[[], None]:
    """step run with the environment variable (HDETACH_LSTM_KERNEL, HDETACH_TRITON: read at every
    forward) set to choice."""

    def run() -> None:
        before = os.environ.get(variable)
        os.environ[variable] = choice
        try:
            step()
        finally:
            if before is None:
                del os.environ[variable]
            else:
                os.environ[variable] = before

    return run


def packed_step(shape: Shape, K: int, device: torch.device, graphed: bool = False) -> Callable[[], None]:
    """One training iteration of K packed models (half vanilla, half h-detach), per-model Adam and
    clip; `graphed`: replayed as a CUDA graph (studies.training.graphs), its detach mask drawn once
    on the device (a graph cannot read a host mask), where the eager rows draw one per iteration."""
    p = [0.0 if k % 2 == 0 else shape.p_detach for k in range(K)]
    lstm = PackedHDetachLSTM(K, 1, shape.hidden, p_detach=p).to(device)
    head = PackedLinear(K, shape.hidden, shape.classes).to(device)
    params = [*lstm.parameters(), *head.parameters()]
    opt = PackedAdam(params, lr=[1e-3] * K)
    opt.init_state()
    max_norm = torch.ones(K, device=device)
    x = torch.rand(shape.steps, K, shape.batch, 1, device=device)
    y_shape = (shape.steps, K, shape.batch) if shape.loss_every_step else (K, shape.batch)
    y = torch.randint(0, shape.classes, y_shape, device=device)
    mask = (torch.rand(shape.steps, K) < torch.tensor(p)).to(device) if graphed else None

    def step() -> None:
        out, _ = lstm(x, detach_mask=mask)  # (T, K, B, H)
        logits = head(out if shape.loss_every_step else out[-1])
        opt.zero_grad(set_to_none=True)
        (_loss(logits, y) * K).backward()  # the sum of the K models' mean losses
        clip_grad_norm_per_model(params, max_norm)
        opt.step()

    if not graphed:
        return step
    state = [*params, *(t for s in opt.state.values() for t in s.values())]
    return GraphedStep(step, lambda: state, GRAPH_TOLERANCE[torch.float32], required=True)


def time_round_robin(
    steps: dict[str, Callable[[], None]], repeats: int, device: torch.device
) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--packs", type=int, nargs="*", default=[1, 8, 32], help="K of packed rows; none: no rows"
    )
    parser.add_argument("--shapes", nargs="+", default=[s.name for s in SHAPES])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip packs whose activations exceed this")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for shape in (s for s in SHAPES if s.name in args.shapes):
        ours = (
            ("ours (C++)", "ours (python)") if device.type == "cpu" else ("ours (Triton)", "ours (no Triton)")
        )
        steps: dict[str, Callable[[], None]] = {
            kind: single_model_step(shape, kind, device) for kind in ("nn.LSTM", "detach loop", *ours)
        }
        for K in args.packs:
            # forward keeps gates, h, c, tanh(c); backward adds d_pre and dc/dh: about 14 floats per unit
            gigabytes = 14 * K * shape.steps * shape.batch * shape.hidden * 4 / 1e9
            if gigabytes > args.max_gb:
                print(f"skipping {shape.name} K={K}: needs about {gigabytes:.0f} GB (--max-gb {args.max_gb})")
                continue
            steps[f"ours packed K={K}"] = packed_step(shape, K, device)
            if device.type == "cuda":
                steps[f"ours graphed K={K}"] = packed_step(shape, K, device, graphed=True)
        medians = time_round_robin(steps, args.repeats, device)
        for name, ms in medians.items():
            K = int(name.rsplit("=", 1)[1]) if "K=" in name else 1
            rows.append(
                {"shape": shape.name, "impl": name, "K": K, "ms_per_iter": ms, "ms_per_trial_iter": ms / K}
            )
        _print_table(shape, [r for r in rows if r["shape"] == shape.name])
    machine = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    )
    result = {
        "device": str(device),
        "machine": machine,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "shapes": [asdict(s) for s in SHAPES if s.name in args.shapes],
        "rows": rows,
    }
    out = args.out or Path(__file__).parent / "results" / f"lstm_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def _print_table(shape: Shape, rows: list[dict]) -> None:
    by_impl = {r["impl"]: r for r in rows}
    loop, ref = (by_impl[k]["ms_per_trial_iter"] for k in ("detach loop", "nn.LSTM"))
    print(f"\n{shape.name}: T={shape.steps}, B={shape.batch}, H={shape.hidden}, p={shape.p_detach}")
    print(
        f"{'implementation':<20}{'ms/iter':>10}{'ms/trial':>10}{'loop/this':>11}{'nn.LSTM/this':>14}{'K=1/this':>10}"
    )
    for r in rows:
        t = r["ms_per_trial_iter"]
        kind = r["impl"].rsplit("K=", 1)[0]  # "ours packed " or "ours graphed "
        k1 = by_impl.get(f"{kind}K=1", {}).get("ms_per_trial_iter")
        speedup_k1 = f"{k1 / t:10.2f}" if k1 and r["K"] > 1 else f"{'':10}"
        print(f"{r['impl']:<20}{r['ms_per_iter']:10.1f}{t:10.1f}{loop / t:11.2f}{ref / t:14.2f}{speedup_k1}")


if __name__ == "__main__":
    main()
