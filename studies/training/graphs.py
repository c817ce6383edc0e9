"""A training step replayed as a CUDA graph, taken only once it proved equal to the eager step.

A small LSTM on a GPU is launch-bound: a copying T=100 iteration is a few thousand kernel
launches from Python. Captured once per input shape and replayed, the iteration costs one launch
from Python. A graph bakes in everything the host decided while it was captured, so the step it
replays must read nothing back to the host (`PackTrainer._device_step` is written that way) and
its inputs live in static buffers that each call overwrites.

Safe by construction: for each new input shape the step first runs eagerly (the reference), then
the state is put back, the graph is captured and replayed on the same inputs, and every state
tensor is compared with the reference (`GRAPH_TOLERANCE`). Only a graph that matches is used;
otherwise (or if capture fails) one line is logged, the state is the eager step's, and that shape
stays eager. HDETACH_CUDA_GRAPHS: `auto` (default) graphs on CUDA devices, `on` the same but a
failed check is an error, `off` never. Graphs are a CUDA feature: on a CPU every choice runs eagerly.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

GRAPHS_ENV = "HDETACH_CUDA_GRAPHS"
GRAPHS_CHOICES = ("auto", "on", "off")
# replayed graph against the eager step, by the model's dtype, for every floating state tensor
# relative to the values' size (allclose's rtol = atol); integer and bool state must be equal
GRAPH_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
WARMUP_STEPS = 3  # eager runs on a side stream before capture, as torch.cuda.graph's notes ask

Step = Callable[..., None]
# capture(run, reset) -> replay: runs `run` to warm up, calls `reset`, captures `run`
Capture = Callable[[Callable[[], None], Callable[[], None]], Callable[[], None]]


def graphs_choice() -> str:
    choice = os.environ.get(GRAPHS_ENV, "auto").strip().lower() or "auto"
    if choice not in GRAPHS_CHOICES:
        raise ValueError(f"{GRAPHS_ENV}={choice!r}: expected one of {', '.join(GRAPHS_CHOICES)}")
    return choice


def capture_cuda_graph(run: Callable[[], None], reset: Callable[[], None]) -> Callable[[], None]:
    """Warm `run` up on a side stream, `reset` what the warm-up changed, capture `run` as a graph
    (on the current CUDA device: GraphedStep makes it the inputs' device)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_STEPS):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    reset()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return graph.replay


class GraphedStep:
    """`step(*inputs)` (device tensors) run through a CUDA graph per input shape, once it passed
    its check; `state()` lists every tensor the step changes (parameters, optimizer moments,
    counters), which the check compares (to `tolerance`) and restores."""

    def __init__(
        self,
        step: Step,
        state: Callable[[], Sequence[Tensor]],
        tolerance: float,
        required: bool = False,
        capture: Capture = capture_cuda_graph,
    ):
        self.step, self.state, self.tolerance = step, state, tolerance
        self.required, self.capture = required, capture
        # per input shape: (replay, static input buffers), or None where the shape runs eagerly
        self._graphs: dict[tuple, tuple[Callable[[], None], list[Tensor]] | None] = {}
        self.outcomes: dict[str, bool] = {}  # per input shape met so far: whether it runs as a graph

    @classmethod
    def for_device(
        cls, device: torch.device, dtype: torch.dtype, step: Step, state: Callable[[], Sequence[Tensor]]
    ) -> GraphedStep | None:
        """The graphed step HDETACH_CUDA_GRAPHS asks for on `device` for a `dtype` model, or None
        (run it eagerly)."""
        choice = graphs_choice()
        if choice == "off" or device.type != "cuda":
            return None
        return cls(step, state, GRAPH_TOLERANCE[dtype], required=choice == "on")

    def __call__(self, *inputs: Tensor) -> None:
        key = _shape_key(inputs)
        if key not in self._graphs:
            self._graphs[key] = self._first_step(inputs)
            self.outcomes[_shapes(inputs)] = self._graphs[key] is not None
            return
        entry = self._graphs[key]
        if entry is None:
            self.step(*inputs)
            return
        replay, static = entry
        for buffer, value in zip(static, inputs, strict=True):
            buffer.copy_(value)
        with _on_device_of(inputs):
            replay()

    def _first_step(self, inputs: Sequence[Tensor]) -> tuple[Callable[[], None], list[Tensor]] | None:
        """Run the step once eagerly and once as a graph from the same state; keep the graph if the
        two agree. Either way the state ends as the eager step left it (or the equal graphed one)."""
        tensors = list(self.state())
        before = [t.detach().clone() for t in tensors]
        self.step(*inputs)
        expected = [t.detach().clone() for t in tensors]
        try:
            _restore(tensors, before)
            static = [t.clone() for t in inputs]
            with _on_device_of(inputs):
                replay = self.capture(lambda: self.step(*static), lambda: _restore(tensors, before))
                # again: had the step run while "captured" (kernels sent to another device's stream,
                # say), an empty graph would otherwise pass the comparison below
                _restore(tensors, before)
                replay()
            _check_equal(tensors, expected, self.tolerance)
        except Exception as error:  # any failure means: this shape runs eagerly
            _restore(tensors, expected)
            why = f"{type(error).__name__}: {error}".splitlines()[0]
            if self.required:
                raise RuntimeError(
                    f"{GRAPHS_ENV}=on, but the training step cannot be graphed: {why}"
                ) from error
            log.warning("CUDA graph not used for inputs %s (%s); the step runs eagerly", _shapes(inputs), why)
            return None
        return replay, static


@contextlib.contextmanager
def _on_device_of(inputs: Sequence[Tensor]) -> Iterator[None]:
    """The inputs' CUDA device as the current one (capture, its side stream and replay use the
    current device, which is cuda:0 unless set), or nothing for other devices."""
    device = inputs[0].device if inputs else None
    if device is None or device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield


def _shape_key(inputs: Sequence[Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)


def _shapes(inputs: Sequence[Tensor]) -> str:
    return ", ".join(str(tuple(t.shape)) for t in inputs)


@torch.no_grad()
def _restore(tensors: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for tensor, value in zip(tensors, values, strict=True):
        tensor.copy_(value)


def _check_equal(tensors: Sequence[Tensor], expected: Sequence[Tensor], tolerance: float) -> None:
    for i, (have, want) in enumerate(zip((t.detach() for t in tensors), expected, strict=True)):
        if not want.is_floating_point():  # integer and bool state: exactly
            if not torch.equal(have, want):
                raise ArithmeticError(f"state tensor {i} differs from the eager step")
        elif not torch.allclose(have, want, rtol=tolerance, atol=tolerance, equal_nan=True):
            worst = float((have - want).abs().nan_to_num(float("inf")).max())
            raise ArithmeticError(f"state tensor {i} differs from the eager step by {worst:.3g}")
