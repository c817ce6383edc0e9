"""The paper presets: every one is a valid spec that mirrors the paper's settings."""

from __future__ import annotations

import pytest

from studies.presets import PRESETS, preset_spec, validated_presets

_PAPER_TASKS = ("copying-T100", "copying-T300", "pixel-mnist", "permuted-mnist")


def test_every_preset_is_a_valid_spec_with_the_papers_p_detach():
    specs = validated_presets()
    assert set(specs) == {
        "copying-T100",
        "copying-T100-small",
        "copying-T300",
        "copying-T300-small",
        "pixel-mnist",
        "pixel-mnist-small",
        "permuted-mnist",
        "permuted-mnist-small",
        "adding-T50-small",
    }
    assert specs["copying-T100"].task.T == 100 and specs["copying-T300"].task.T == 300
    for name, spec in specs.items():
        p = {v.name: v.p_detach for v in spec.variants}
        assert p == {"vanilla": 0.0, "h-detach": 0.25 if "mnist" in name else 0.5}
        assert spec.training.clip_norm == 1.0
        if name.endswith("-small") and name != "adding-T50-small":
            assert spec.grid_size <= 12 and spec.model.hidden_size <= 32 and spec.budget.steps <= 1000


def test_adding_preset_is_the_demos_cpu_regime_with_lower_is_better_mse():
    spec = validated_presets()["adding-T50-small"]
    assert spec.task.name == "adding" and spec.task.T == 50 and spec.model.hidden_size == 64
    assert spec.lr_values() == [1e-2, 3e-2, 1e-1] and spec.seeds == [1, 2, 3] and spec.grid_size == 18
    assert spec.budget.steps == 1500 and spec.budget.batch_size == 32
    assert spec.success.metric == "mse" and spec.success.threshold == 0.01
    config = spec.training_config()
    assert config.success is not None and (config.success.metric, config.success.threshold) == ("mse", 0.01)


def test_overrides_merge_nested_objects_and_replace_the_rest():
    spec = preset_spec("copying-T100-small", {"seeds": [7], "budget": {"steps": 300}, "priority": 3})
    assert spec["seeds"] == [7] and spec["priority"] == 3
    assert (
        spec["budget"]["steps"] == 300
        and spec["budget"]["batch_size"] == PRESETS["copying-T100-small"]["budget"]["batch_size"]
    )
    assert PRESETS["copying-T100-small"]["seeds"] == [1, 2]  # the preset itself is untouched


def test_unknown_preset_names_the_presets():
    with pytest.raises(KeyError, match="copying-T100"):
        preset_spec("copying-T1000")


PAPER_PRESETS = [f"{base}{size}" for base in _PAPER_TASKS for size in ("", "-small")]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_switch_h_detach_off_for_the_authors_final_epochs(name):
    spec = validated_presets()[name]
    epochs = 600 if name.startswith("copying") else 200  # the authors' n_epochs
    assert spec.training.p_off_fraction == pytest.approx(39 / epochs)
    config = spec.training_config()
    assert config.budget.steps - config.p_off_step == round(39 / epochs * spec.budget.steps) > 0


def test_paper_presets_report_the_test_score_at_best_validation():
    specs = validated_presets()
    assert all(specs[name].selection == "best_val" for name in PAPER_PRESETS)
