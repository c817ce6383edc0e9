"""The spec gate on data: full MNIST or an explicit subset, mnist_root only within the allowed
directory, and task options only where the task uses them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from studies.presets import preset_spec
from studies.spec import SpecLimits, StudySpec
from tests.studies.test_tasks import write_full_mnist_headers, write_idx


def validated(data: dict, mnist_dir: Path | None = None) -> StudySpec:
    limits = SpecLimits(mnist_dir=None if mnist_dir is None else str(mnist_dir))
    return StudySpec.model_validate(data, context={"limits": limits})


def refusal(data: dict, mnist_dir: Path | None = None) -> str:
    with pytest.raises(ValidationError) as error:
        validated(data, mnist_dir)
    (first,) = error.value.errors()
    return f"{'.'.join(map(str, first['loc']))}: {first['msg']}"


@pytest.mark.parametrize("preset", ["pixel-mnist", "permuted-mnist"])
def test_a_full_mnist_preset_is_refused_on_the_subset_unless_the_spec_allows_it(preset, tmp_path):
    message = refusal(preset_spec(preset))
    assert (
        message.startswith("task:") and "mnist_root" in message and "HDETACH_MNIST_DIR is not set" in message
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no MNIST IDX files" in refusal(preset_spec(preset), mnist_dir=empty)
    subset = validated(preset_spec(preset, {"task": {"allow_subset": True}}))
    assert subset.task.mnist_root is None and subset.task.allow_subset


def test_the_deployments_mnist_directory_is_used_and_recorded_in_the_spec(tmp_path):
    write_full_mnist_headers(tmp_path / "mnist")
    spec = validated(preset_spec("pixel-mnist"), mnist_dir=tmp_path / "mnist")
    assert spec.task.mnist_root == str(tmp_path / "mnist")
    # full data is preferred to the subset even where the subset is allowed
    allowed = validated(preset_spec("pixel-mnist-small"), mnist_dir=tmp_path / "mnist")
    assert allowed.task.mnist_root == str(tmp_path / "mnist")
    # the stored spec validates again to itself (the queue validates twice)
    again = StudySpec.model_validate(
        spec.model_dump(mode="json"), context={"limits": SpecLimits(mnist_dir=str(tmp_path / "mnist"))}
    )
    assert again == spec


def test_mnist_root_must_be_within_the_allowed_directory_and_hold_the_files(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    write_full_mnist_headers(allowed / "v1", gz=True)
    write_full_mnist_headers(outside)
    (allowed / "empty").mkdir()
    os.symlink(outside, allowed / "escape")
    spec = preset_spec("pixel-mnist")

    def with_root(root: str) -> dict:
        return preset_spec("pixel-mnist", {"task": {"mnist_root": root}})

    assert validated(with_root("v1"), allowed).task.mnist_root == str(allowed / "v1")  # relative to it
    assert validated(with_root(str(allowed / "v1")), allowed).task.mnist_root == str(allowed / "v1")
    for root in (str(outside), "../outside", "escape", "/etc", str(tmp_path / "allowed2")):
        assert "outside HDETACH_MNIST_DIR" in refusal(with_root(root), allowed), root
    assert "holds no MNIST IDX files" in refusal(with_root("empty"), allowed)
    assert "allows no MNIST directory" in refusal(with_root(str(allowed / "v1")))
    # plain parsing (a stored spec read back) applies no deployment rule
    assert StudySpec.model_validate(spec).task.mnist_root is None


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ({"name": "copying", "T": 10, "allow_subset": True}, "allow_subset applies to pixel_mnist"),
        ({"name": "pixel_mnist", "allow_subset": True, "T": 10}, "T applies to copying and adding"),
        ({"name": "pixel_mnist", "allow_subset": True, "permutation": "per_seed"}, "permutation applies"),
        ({"name": "adding", "T": 10, "train_size": 100}, "train_size applies to copying"),
        ({"name": "copying", "T": 10, "transfer_T": [3000]}, "transfer_T 3000 exceeds"),
        ({"name": "copying", "T": 10, "train_size": 0}, "greater than or equal to 1"),
        ({"name": "copying", "T": 10, "transfer_T": [True]}, "valid integer"),
        ({"name": "copying", "T": 10, "transfer_T": ["20"]}, "valid integer"),
        ({"name": "pixel_mnist", "allow_subset": True, "data_seed": 3}, "data_seed applies to copying"),
        (
            {
                "name": "permuted_mnist",
                "allow_subset": True,
                "permutation": "per_seed",
                "permutation_seed": 4,
            },
            "permutation 'fixed' only",
        ),
    ],
)
def test_task_options_are_refused_where_the_task_does_not_use_them(task, message):
    spec = {**preset_spec("copying-T100-small"), "task": task}
    assert message in refusal(spec)


def test_mnist_root_that_is_not_full_mnist_is_refused_unless_the_spec_allows_a_subset(tmp_path):
    write_idx(tmp_path / "small")  # 120 training and 20 test images
    small = preset_spec("pixel-mnist", {"task": {"mnist_root": "small"}})
    message = refusal(small, tmp_path)
    assert "holds 120 training and 20 test images, not full MNIST (60,000 and 10,000)" in message
    assert "allow_subset" in message
    allowed = validated(preset_spec("pixel-mnist-small", {"task": {"mnist_root": "small"}}), tmp_path)
    assert allowed.task.mnist_root == str(tmp_path / "small")
    # the deployment's own directory with a subset in it is no default for a full study either
    assert "HDETACH_MNIST_DIR" in refusal(preset_spec("pixel-mnist"), tmp_path / "small")


def test_files_that_are_not_mnist_or_cannot_be_read_are_refused_not_a_server_error(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (junk / name).write_bytes(b"\x00\x01\x02\x03")
    assert "holds IDX files that are not MNIST's" in refusal(
        preset_spec("pixel-mnist", {"task": {"mnist_root": "junk"}}), tmp_path
    )
    truncated = tmp_path / "truncated"
    write_full_mnist_headers(truncated)
    with (truncated / "train-images-idx3-ubyte").open("r+b") as file:
        file.truncate(1000)
    assert "truncated or corrupt" in refusal(
        preset_spec("pixel-mnist", {"task": {"mnist_root": "truncated"}}), tmp_path
    )
    too_long = preset_spec("pixel-mnist", {"task": {"mnist_root": "a" * 300}})
    assert "cannot be read" in refusal(too_long, tmp_path)


def test_the_stored_root_is_resolved_and_idx_links_out_of_the_directory_are_refused(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    write_full_mnist_headers(allowed / "real")
    os.symlink(allowed / "real", allowed / "link")
    spec = validated(preset_spec("pixel-mnist", {"task": {"mnist_root": "link"}}), allowed)
    assert spec.task.mnist_root == str(allowed / "real")  # re-pointing the link later changes nothing
    write_full_mnist_headers(outside)
    (allowed / "mixed").mkdir()
    for file in (allowed / "real").iterdir():
        os.symlink(outside / file.name if "t10k" in file.name else file, allowed / "mixed" / file.name)
    message = refusal(preset_spec("pixel-mnist", {"task": {"mnist_root": "mixed"}}), allowed)
    assert "links to IDX files outside HDETACH_MNIST_DIR" in message


def test_a_budget_may_evaluate_at_its_last_step_only_but_not_past_it():
    base = preset_spec("copying-T100-small")
    steps = base["budget"]["steps"]
    at_the_end = {**base, "budget": {**base["budget"], "eval_every": steps}}
    assert validated(at_the_end).budget.eval_every == steps
    past_it = {**base, "budget": {**base["budget"], "eval_every": steps + 1}}
    assert "budget.eval_every must not exceed budget.steps" in refusal(past_it)
