"""Train a pack of trials: Adam per trial, clipping per trial, h-detach masks per trial.

A single trial is a pack of one. Each trial draws its data and its masks from its own
generators (seeded from the trial seed), so it gives the same results alone or in any pack.
Divergence (a non-finite loss) ends a trial as an outcome while the rest of its pack goes on.

A training iteration is in two parts: the host draws each trial's batch and detach mask from the
trial's generators (on the host, so a seed gives the same masks on every device), and the device
runs forward, loss, backward, per-trial clipping and Adam without reading anything back
(`_device_step`), so a GPU never waits on the host and a CUDA graph can replay the iteration
(studies.training.graphs). Losses and divergences are kept on the device and read at each
evaluation (after every step on a CPU, where reading costs nothing).

Model selection, as in the authors' code: at every evaluation that improves a trial's validation
value of the success metric (better as its SuccessRule says; a tie keeps the earlier model;
a model whose validation metrics are not all finite is never chosen), a copy of that trial's
slice of the packed parameters is kept. At the end each trial is tested twice: the final model
(`final`) and the kept one (`best_val`, from step `best_val_step`), a diverged trial too if it was
evaluated before it diverged.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from studies.tasks import Task, make_task
from studies.training.checkpoint import load_checkpoint, save_checkpoint
from studies.training.config import TrainingConfig, TrialParams, derived_seed
from studies.training.graphs import GraphedStep
from studies.training.model import PackedSequenceModel
from studies.training.packed import PackedAdam, clip_grad_norm_per_model
from studies.training.record import TrialRecord

# once per evaluation: {trial index in the pack: its curve point} for the trials still running
EvalCallback = Callable[[dict[int, dict[str, float]]], None]


def _per_model(metrics: dict[str, dict[str, Tensor]], k: int) -> dict[str, dict[str, float]]:
    """Model k's values of {key: {metric: (K,) tensor}}."""
    return {key: {name: float(v[k]) for name, v in values.items()} for key, values in metrics.items()}


class PackTrainer:
    """Trains K trials sharing one TrainingConfig; `run()` returns one TrialRecord per trial."""

    def __init__(
        self,
        config: TrainingConfig,
        trials: Sequence[TrialParams],
        device: str | torch.device = "cpu",
        task: Task | None = None,
    ):
        if not trials:
            raise ValueError("a pack needs at least one trial")
        self.config, self.trials = config, list(trials)
        self.device = torch.device(device)
        self.dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.task = task or make_task(config.task.name, **config.task.options())
        K = len(self.trials)
        self.model = PackedSequenceModel.for_trials(
            self.trials,
            self.task.input_size,
            config.model.hidden_size,
            self.task.output_size,
            config.model.num_layers,
            self.task.loss_on,
        ).to(device=self.device, dtype=self.dtype)
        self.lr = torch.tensor([t.lr for t in self.trials], dtype=torch.float64)
        self.optimizer = PackedAdam(
            self.model.parameters(),
            self.lr,
            (config.training.beta1, config.training.beta2),
            config.training.eps,
        )
        self.optimizer.init_state()
        self.max_norm = torch.tensor(
            [math.inf if t.clip_norm is None else t.clip_norm for t in self.trials],
            device=self.device,
            dtype=self.dtype,
        )
        # each trial's p_detach from where it lives (the model's buffer), on the host, where masks are drawn
        self.p_detach = self.model.lstm.p_detach.detach().to("cpu", torch.float32)
        self.data_gens = [torch.Generator().manual_seed(derived_seed(t.seed, "data")) for t in self.trials]
        self.mask_gens = [torch.Generator().manual_seed(derived_seed(t.seed, "mask")) for t in self.trials]
        self.success = config.success_rule(self.task.default_success())
        # each trial's view of the task (its own pixel permutation, for per-seed permuted MNIST)
        self.trial_tasks = [self.task.for_trial(derived_seed(t.seed, "task")) for t in self.trials]
        self.records = [TrialRecord(t, data=self.task.description) for t in self.trials]
        # per trial: its parameters (name -> its slice) at its best validation so far, or None
        self._best: list[dict[str, Tensor] | None] = [None] * K
        self.active = [True] * K  # on the host; the device's copy is ahead of it between evaluations
        self.step = 0
        # what the device step keeps, read by _collect_steps: whether each trial still trains, the
        # step at which it diverged (-1: it did not), its training losses since the last evaluation
        device = self.device
        self._active_on = torch.ones(K, dtype=torch.bool, device=device)
        self._diverged_at_on = torch.full((K,), -1, dtype=torch.int64, device=device)
        self._loss_sum_on = torch.zeros(K, dtype=torch.float64, device=device)
        self._loss_count_on = torch.zeros(K, dtype=torch.int64, device=device)
        self._step_on = torch.zeros((), dtype=torch.int64, device=device)
        # the graph holds the step through weak references: a trainer and its graph would otherwise
        # keep each other (and the pack's GPU memory) alive until a full garbage collection
        step, state = weakref.WeakMethod(self._device_step), weakref.WeakMethod(self._step_state)
        self.graphed_step = GraphedStep.for_device(
            self.device,
            self.dtype,
            lambda *inputs: step()(*inputs),  # type: ignore[misc]
            lambda: state()(),  # type: ignore[misc]
        )
        # read the device's outcome after every step where that costs nothing (no device to wait for)
        self.collect_every_step = self.device.type == "cpu"

    # -- the loop ---------------------------------------------------------------------------
    def run(
        self,
        on_eval: EvalCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_path: str | Path | None = None,
        max_steps: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> list[TrialRecord]:
        """Train until the budget is spent or every trial ended.

        `should_stop` is asked after each evaluation; if it says yes, the pack checkpoints and
        returns with status "interrupted". `max_steps` stops early the same way (for tests).
        """
        cfg = self.config
        while self.step < cfg.budget.steps and any(self.active):
            started = time.perf_counter()
            self._train_step()
            self._add_wall_time(time.perf_counter() - started)
            if on_step is not None:
                on_step(self.step)
            if self.step % cfg.budget.eval_every == 0 or self.step == cfg.budget.steps:
                started = time.perf_counter()
                self._evaluate_and_record(on_eval)
                self._add_wall_time(time.perf_counter() - started)
                if checkpoint_path is not None:
                    self.save_checkpoint(checkpoint_path)
                stop_now = should_stop is not None and should_stop()
                if stop_now or (max_steps is not None and self.step >= max_steps):
                    for r in self.records:
                        if r.status == "running":
                            r.status = "interrupted"
                    return self.records
        self._finish()
        return self.records

    def _train_step(self) -> None:
        x, y, mask = self._draw_batch()
        x, y = x.to(self.device, self.dtype), y.to(self.device)
        if self.graphed_step is not None:  # the mask goes to the device: a graph cannot read the host's
            self.graphed_step(x, y, mask.to(self.device))
        else:  # a host mask lets the recurrence skip the GEMMs of steps where no model is blocked
            self._device_step(x, y, mask)
        self.step += 1
        if self.collect_every_step:
            self._collect_steps()

    def _draw_batch(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every trial's batch and detach mask from its own generators: x (T, K, B, I), y (T, K, B)
        or (K, B), the mask (T, K) (True: h_{t-1} blocked at step t), all on the host."""
        cfg, task, K = self.config, self.task, len(self.trials)
        xs, ys, masks = [], [], []
        p_on = cfg.detach_on(self.step)
        for k in range(K):
            if self.active[k]:
                x, y = self.trial_tasks[k].train_batch(cfg.budget.batch_size, self.data_gens[k])
                u = torch.rand(task.seq_len, generator=self.mask_gens[k])
                blocked = u < self.p_detach[k] if p_on else torch.zeros(task.seq_len, dtype=torch.bool)
            else:  # a finished trial keeps its slot but draws nothing from its generators
                x, y = self._idle_batch
                blocked = torch.zeros(task.seq_len, dtype=torch.bool)
            xs.append(x)
            ys.append(y)
            masks.append(blocked)
        x = torch.stack(xs, dim=1)
        y = torch.stack(ys, dim=-2 if ys[0].dim() == 2 else 0)
        return x, y, torch.stack(masks, dim=1)

    def _device_step(self, x: Tensor, y: Tensor, mask: Tensor) -> None:
        """Forward, loss, backward, per-trial clipping and Adam for the trials still training, on
        the device and reading nothing back. A trial whose loss is not finite is frozen and zeroed
        (its NaNs never reach the rest of the pack) and its step noted, for _collect_steps."""
        self.model.train()
        losses = self.task.losses(self.model(x, mask), y)  # (K,)
        finite = torch.isfinite(losses.detach())
        diverging = self._active_on & ~finite
        active = self._active_on & finite
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(active, losses, torch.zeros_like(losses)).sum().backward()
        params = list(self.model.parameters())
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.masked_fill_(~active.view(-1, *[1] * (p.dim() - 1)), 0.0)
            clip_grad_norm_per_model(params, self.max_norm)
            self.optimizer.step(active)
            self.model.reset_models(diverging)
            self.optimizer.reset_models(diverging)
            self._step_on += 1
            self._diverged_at_on.copy_(torch.where(diverging, self._step_on, self._diverged_at_on))
            self._loss_sum_on.add_(torch.where(active, losses.detach().double(), 0.0))
            self._loss_count_on.add_(active.long())
            self._active_on.copy_(active)

    def _step_state(self) -> list[Tensor]:
        """Every tensor _device_step changes (a graphed step is checked against the eager one on these)."""
        moments = [t for state in self.optimizer.state.values() for t in state.values()]
        counters = [
            self._active_on,
            self._diverged_at_on,
            self._loss_sum_on,
            self._loss_count_on,
            self._step_on,
        ]
        return [*self.model.parameters(), *moments, *counters]

    def _collect_steps(self) -> None:
        """Bring the device's view of the steps since the last call to the host: which trials
        diverged (and when), how many steps each has run."""
        diverged_at = self._diverged_at_on.tolist()
        for k, at in enumerate(diverged_at):
            if not self.active[k]:
                continue
            record = self.records[k]
            if at >= 0:
                record.status, record.diverged_at, record.steps_run = "diverged", at, at - 1
                self._deactivate(k)
            else:
                record.steps_run = self.step

    @property
    def _idle_batch(self) -> tuple[Tensor, Tensor]:
        if not hasattr(self, "_idle"):
            x, y = self.task.train_batch(self.config.budget.batch_size, torch.Generator().manual_seed(0))
            self._idle = (torch.zeros_like(x), torch.zeros_like(y))
        return self._idle

    def stop_trial(self, k: int, status: str = "cancelled") -> None:
        """End trial k now (e.g. its study was cancelled); the rest of the pack goes on."""
        if self.records[k].status == "running":
            self.records[k].status = status
            self._deactivate(k)

    def _deactivate(self, k: int) -> None:
        self.active[k] = False
        self._active_on[k] = False
        self.optimizer.freeze(k)

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str, task: Task | None = None) -> dict[str, Tensor]:
        """Metrics of every model of the pack on a fixed evaluation set, each a (K,) tensor.

        `task` (another delay, for transfer copying) is seen alike by every trial; the pack's own task
        is seen through each trial's view, so per-seed views get their own inputs."""
        K = len(self.trials)
        views = [task] * K if task is not None else self.trial_tasks
        task = views[0]
        self.model.eval()
        sums: dict[str, Tensor] = {}
        if all(view is task for view in views):
            batches = (
                (x.to(self.device, self.dtype).unsqueeze(1).expand(-1, K, -1, -1), y)  # (T, K, B, I)
                for x, y in task.eval_batches(split, self.config.budget.eval_batch_size)
            )
        else:  # same targets in the same order; the inputs differ per view
            per_view = zip(
                *(view.eval_batches(split, self.config.budget.eval_batch_size) for view in views), strict=True
            )
            batches = (
                (torch.stack([x for x, _ in group], dim=1).to(self.device, self.dtype), group[0][1])
                for group in per_view
            )
        for xk, y in batches:
            batch = task.metrics(self.model(xk), y)
            for key, value in batch.items():
                sums[key] = sums[key] + value if key in sums else value
        return task.finalize(sums)

    def _evaluate_and_record(self, on_eval: EvalCallback | None) -> None:
        self._collect_steps()
        loss_sum, loss_count = self._loss_sum_on.tolist(), self._loss_count_on.tolist()
        self._loss_sum_on.zero_()
        self._loss_count_on.zero_()
        running = [k for k, r in enumerate(self.records) if r.status == "running"]
        if not running:
            return
        metrics = self.evaluate("val")
        points = {}
        for k in running:
            record = self.records[k]
            point = {"step": float(self.step)}
            if loss_count[k]:
                point["train_loss"] = loss_sum[k] / loss_count[k]
            point.update({f"val_{name}": float(v[k]) for name, v in metrics.items()})
            record.curve.append(point)
            value = point.get(f"val_{self.success.metric}", math.nan)
            if self._improves(k, point, value):
                self._keep_best(k, value)
            if record.steps_to_threshold is None and self.success.meets(value):
                record.steps_to_threshold = self.step
                if self.config.stop_on_success:
                    record.status = "succeeded"
                    self._deactivate(k)
            points[k] = point
        if on_eval is not None:
            on_eval(points)

    def _improves(self, k: int, point: dict[str, float], value: float) -> bool:
        """Whether this evaluation beats trial k's best validation value (a tie does not)."""
        if not all(math.isfinite(v) for name, v in point.items() if name.startswith("val_")):
            return False
        best = self.records[k].best_val_value
        if best is None:
            return math.isfinite(value)
        return self.success.better(value, best)

    @torch.no_grad()
    def _keep_best(self, k: int, value: float) -> None:
        record = self.records[k]
        record.best_val_step, record.best_val_value = self.step, value
        self._best[k] = {name: p[k].detach().clone() for name, p in self.model.named_parameters()}

    @torch.no_grad()
    def _swap_best(self, ks: Sequence[int]) -> None:
        """Exchange the current weights of trials `ks` with their kept best ones (twice: undone)."""
        params = dict(self.model.named_parameters())
        for k in ks:
            best = self._best[k]
            assert best is not None
            for name, saved in best.items():
                current = params[name][k].clone()
                params[name][k].copy_(saved)
                saved.copy_(current)

    def _finish(self) -> None:
        """Test every trial that did not diverge, and mark the rest of the pack completed."""
        self._collect_steps()
        alive = [k for k, r in enumerate(self.records) if r.status not in ("diverged", "cancelled")]
        transfer_tasks = self._transfer_tasks()
        if alive:
            final, transfer = self._test_all(transfer_tasks)
            for k in alive:
                record = self.records[k]
                record.final = {name: float(v[k]) for name, v in final.items()}
                record.transfer = _per_model(transfer, k)
                if record.status == "running":
                    record.status = "completed"
        # the best-validation models, diverged ones included if they were ever evaluated
        kept = [
            k for k, r in enumerate(self.records) if r.status != "cancelled" and self._best[k] is not None
        ]
        if kept:
            self._swap_best(kept)
            try:
                best, transfer = self._test_all(transfer_tasks)
            finally:
                self._swap_best(kept)
            for k in kept:
                self.records[k].best_val = {name: float(v[k]) for name, v in best.items()}
                self.records[k].best_val_transfer = _per_model(transfer, k)

    def _transfer_tasks(self) -> dict[str, Task]:
        """The task at each transfer delay (copying), by delay; built once for both models' tests."""
        tasks = {}
        for T in self.config.task.transfer_T:
            options = {**self.config.task.options(), "T": T}
            options.pop("train_size", None)  # only the test set is used
            tasks[str(T)] = make_task(self.config.task.name, **options)
        return tasks

    def _test_all(
        self, transfer_tasks: dict[str, Task]
    ) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
        """The pack's current models on the test set, and on the test set of every transfer delay."""
        transfer = {T: self.evaluate("test", task) for T, task in transfer_tasks.items()}
        return self.evaluate("test"), transfer

    def _add_wall_time(self, seconds: float) -> None:
        for k, record in enumerate(self.records):
            if self.active[k] or record.status == "running":
                record.wall_time_s += seconds

    # -- checkpoints (studies.training.checkpoint) -------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        """Everything needed to continue exactly where the pack is now (written atomically)."""
        save_checkpoint(self, path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> PackTrainer:
        return load_checkpoint(path, device)
