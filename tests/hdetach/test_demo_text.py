"""What `hdetach demo` prints after its summary table: numbers from the run, never hard-coded."""

from __future__ import annotations

from typing import Any

from hdetach.demo import demo_overrides, what_it_shows
from studies.presets import preset_spec


def _lr(lr: float, successes: int, runs: int = 3) -> dict[str, Any]:
    return {"lr": lr, "successes": successes, "seeds_run": runs}


def _summary(vanilla: list[int], hdetach: list[int], robust: dict[str, tuple[float, float] | None]) -> dict:
    lrs = [1e-2, 3e-2, 1e-1]

    def variant(name: str, counts: list[int]) -> dict[str, Any]:
        low_high = robust[name]
        return {
            "name": name,
            "lrs": [_lr(lr, k) for lr, k in zip(lrs, counts, strict=True)],
            "robust_lr_low": None if low_high is None else low_high[0],
            "robust_lr_high": None if low_high is None else low_high[1],
            "robust_contiguous": low_high is not None,
        }

    return {
        "metric": "mse",
        "higher_is_better": False,
        "robust_level": 0.8,
        "variants": [variant("vanilla", vanilla), variant("h-detach", hdetach)],
        "comparisons": [
            {
                "variant": "h-detach",
                "baseline": "vanilla",
                "n_pairs": 9,
                "mean_difference": 0.0544,
                "mean_difference_ci_low": 0.00188,
                "mean_difference_ci_high": 0.104,
                "prob_improvement": 0.67,
                "prob_improvement_ci_low": 0.39,
                "prob_improvement_ci_high": 0.86,
                "wilcoxon_p": 0.359,
            }
        ],
        "caveats": ["3 seeds per learning rate: robustness at a success rate of 0.8 cannot be claimed"],
    }


SPEC = preset_spec("adding-T50-small", demo_overrides(1500, 3))


def test_the_lines_follow_the_runs_numbers():
    summary = _summary([3, 3, 0], [3, 3, 2], {"vanilla": (0.01, 0.03), "h-detach": (0.01, 0.03)})
    lines = what_it_shows(summary, SPEC)
    assert "  vanilla: lr 0.01: 3/3, lr 0.03: 3/3, lr 0.1: 0/3; robust lr range: 0.01–0.03" in lines
    assert "  h-detach: lr 0.01: 3/3, lr 0.03: 3/3, lr 0.1: 2/3; robust lr range: 0.01–0.03" in lines
    (paired,) = [line for line in lines if line.startswith("paired comparison")]
    assert "9 pairs (positive = h-detach lower mse)" in paired
    assert "mean difference +0.0544" in paired and "P(better) 0.67 [95% CI 0.39, 0.86]" in paired
    assert "Wilcoxon p 0.359" in paired
    at = lines.index("what these numbers can support:")
    assert lines[at + 1].startswith("  3 seeds per learning rate: robustness at a success rate of 0.8")
    text = " ".join(lines)
    assert "at lr 0.1 vanilla succeeded on 0 of 3 seeds and h-detach on 2 of 3" in text
    assert "at lr 0.01 (3 of 3 each) and 0.03 (3 of 3 each) they did equally well" in text
    assert "T=50" in text and "3 seeds per rate and 1500 steps" in text
    assert "does not test the paper's claims" in text


def test_equal_results_and_no_robust_range_are_said_as_such():
    summary = _summary([1, 0, 0], [1, 0, 0], {"vanilla": None, "h-detach": None})
    lines = what_it_shows(summary, preset_spec("adding-T50-small", demo_overrides(300, 1)))
    assert "  vanilla: lr 0.01: 1/3, lr 0.03: 0/3, lr 0.1: 0/3; robust lr range: none" in lines
    text = " ".join(lines)
    assert "succeeded equally often at every learning rate" in text
    assert "h-detach on" not in text
    assert "1 seed per rate and 300 steps" in text


def test_demo_overrides_pick_seeds_and_evaluations():
    assert demo_overrides(1500, 2) == {
        "name": "demo-adding-T50",
        "seeds": [1, 2],
        "budget": {"steps": 1500, "eval_every": 100},
    }
    assert demo_overrides(5, 1)["budget"]["eval_every"] == 1
