"""The spec gate on data: full MNIST or an explicit subset, mnist_root only within the allowed
directory, and task options only where the task uses them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from studies.presets import preset_spec
from studies.spec import SpecLimits, StudySpec
from tests.studies.test_tasks import write_idx


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
    assert "holds no IDX files" in refusal(preset_spec(preset), mnist_dir=empty)
    subset = validated(preset_spec(preset, {"task": {"allow_subset": True}}))
    assert subset.task.mnist_root is None and subset.task.allow_subset


def test_the_deployments_mnist_directory_is_used_and_recorded_in_the_spec(tmp_path):
    write_idx(tmp_path / "mnist")
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
    write_idx(allowed / "v1")
    write_idx(outside)
    (allowed / "empty").mkdir()
    os.symlink(outside, allowed / "escape")
    spec = preset_spec("pixel-mnist")

    def with_root(root: str) -> dict:
        return preset_spec("pixel-mnist", {"task": {"mnist_root": root}})

    assert validated(with_root("v1"), allowed).task.mnist_root == str(allowed / "v1")  # relative to it
    assert validated(with_root(str(allowed / "v1")), allowed).task.mnist_root == str(allowed / "v1")
    for root in (str(outside), "../outside", "escape", "/etc"):
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
