"""The Ray Tune trainable: one pack of cells, trained on the device Ray assigned.

What Tune sees is what a Tune user expects: numbers under short flat keys, one per cell and metric
(`h-detach_lr0.01_s1/val_mse`), and the pack's counts (`step`, `n_running`, `n_diverged`,
`resumed_from_step`), so ResultGrid's dataframe, TensorBoard and the Ray dashboard can plot them.
Each report carries a `tune.Checkpoint` of the trainer's exact state; a pack Tune restarts after a
failure resumes from its latest one (`tune.get_checkpoint()`), not from step 0. The final report's
checkpoint also holds the pack's records, which the driver records in our tables
(`workers.ray_executor`): the records ride in a file, not in the metrics, so the metrics stay numbers.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import tune

from studies.spec import GridCell, StudySpec
from workers import faults

if TYPE_CHECKING:
    from studies.training import PackTrainer, TrialRecord

CHECKPOINT_FILE = "pack.ckpt"  # the trainer's state (studies.training.checkpoint)
FINAL_FILE = "final.json"  # in the final checkpoint only: {"device": ..., "records": [...]}
POINT_NAMES = ("train_loss", "val_")  # a curve point's values (the trainer's names), besides its step


def cell_labels(cells: Sequence[GridCell]) -> list[str]:
    """Short, stable names for a pack's cells, the prefixes of their metric keys."""
    labels = [f"{cell.variant}_lr{cell.lr:g}_s{cell.seed}" for cell in cells]
    if len(set(labels)) < len(labels):  # learning rates equal to 6 digits: the grid index tells them apart
        labels = [f"{label}_c{cell.index}" for label, cell in zip(labels, cells, strict=True)]
    return labels


def _counts(step: int, records: Sequence[TrialRecord], resumed_from: int) -> dict[str, float]:
    return {
        "step": step,
        "n_running": sum(r.status == "running" for r in records),
        "n_diverged": sum(r.status == "diverged" for r in records),
        "resumed_from_step": resumed_from,
    }


def evaluation_metrics(labels: Sequence[str], points: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """One evaluation's curve points (pack position -> point) as flat numeric metrics; a cell that
    no longer trains has none, so its curve ends where it stopped."""
    return {
        f"{labels[k]}/{name}": float(value)
        for k, point in points.items()
        for name, value in point.items()
        if name.startswith(POINT_NAMES)
    }


def points_from_metrics(result: Mapping[str, Any], labels: Sequence[str]) -> dict[int, dict[str, float]]:
    """The curve points a report carries (the inverse of `evaluation_metrics`), at its `step`."""
    points: dict[int, dict[str, float]] = {}
    for k, label in enumerate(labels):
        values = {
            key.removeprefix(f"{label}/"): value
            for key, value in result.items()
            if key.startswith(f"{label}/") and key.removeprefix(f"{label}/").startswith(POINT_NAMES)
        }
        if values:
            points[k] = {"step": float(result["step"]), **values}
    return points


def final_metrics(labels: Sequence[str], records: Sequence[TrialRecord]) -> dict[str, float]:
    """Each cell's test metrics of its final model (none for a diverged one)."""
    return {
        f"{label}/test_{name}": float(value)
        for label, record in zip(labels, records, strict=True)
        for name, value in record.final.items()
    }


def read_final(checkpoint: tune.Checkpoint) -> dict[str, Any] | None:
    """The final checkpoint's device and records; None for a checkpoint taken along the way."""
    filesystem, path = checkpoint.filesystem, f"{checkpoint.path}/{FINAL_FILE}"
    assert filesystem is not None  # a checkpoint Tune persisted names its (pyarrow) filesystem
    if filesystem.get_file_info(path).type.name == "NotFound":
        return None
    with filesystem.open_input_stream(path) as stream:
        return dict(json.loads(stream.read()))


def _report(trainer: PackTrainer, metrics: dict[str, float], final: dict[str, Any] | None = None) -> None:
    """Report `metrics` to Tune with a checkpoint of the trainer (Tune copies it to its storage
    before `tune.report` returns, so the directory is temporary)."""
    with tempfile.TemporaryDirectory(prefix="hdetach-pack-") as directory:
        trainer.save_checkpoint(Path(directory) / CHECKPOINT_FILE)
        if final is not None:
            (Path(directory) / FINAL_FILE).write_text(json.dumps(final))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def train_pack(config: dict[str, Any], packs: Mapping[str, Mapping[str, Any]]) -> None:
    """The Tune trainable: the pack named `config["pack"]` (its spec and cells in `packs`)."""
    import torch

    from studies.training import PackTrainer

    pack = packs[config["pack"]]
    spec = StudySpec.model_validate_json(pack["spec_json"])
    cells = [GridCell(**cell) for cell in pack["cells"]]
    labels = cell_labels(cells)
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    if device == "cpu":
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
        torch.set_num_threads(max(1, cpus))
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer = PackTrainer(spec.training_config(), [c.trial_params(spec) for c in cells], device)
    else:  # Tune restarted this pack after a failure
        with checkpoint.as_directory() as directory:
            trainer = PackTrainer.from_checkpoint(Path(directory) / CHECKPOINT_FILE, device)
    resumed_from = trainer.step
    points: dict[int, dict[str, float]] = {}

    def report_evaluation() -> bool:
        counts = _counts(trainer.step, trainer.records, resumed_from)
        _report(trainer, counts | evaluation_metrics(labels, points))
        points.clear()
        if checkpoint is None:
            faults.hit("ray-evaluated")
        return False  # Tune stops the trial itself (see the driver's stopper)

    records = trainer.run(on_eval=points.update, should_stop=report_evaluation)
    final = {"device": device, "records": [r.to_dict() for r in records]}
    _report(trainer, _counts(trainer.step, records, resumed_from) | final_metrics(labels, records), final)
