"""Simulated coverage of the nominal 95% intervals that `studies.robustness.summarize` reports.

Study designs are learning rates x seeds (3x2, 5x2, 3x3, 5x3, 5x5, 5x10 by default). Each simulated
study has two variants, "vanilla" (the baseline, p_detach 0) and "h-detach" (p_detach 0.5), at the
same learning rates and seeds, with a higher-is-better metric ("accuracy", threshold 0.9); every
trial is done, none diverged. A study is drawn as follows (constants below):

- per learning rate, a baseline level  level_lr ~ N(LEVEL_MEAN, LEVEL_SD**2)  and a true paired
  difference  delta_lr ~ N(DELTA_MEAN, DELTA_SD**2), independently, so the lrs genuinely differ;
- per (lr, seed) pair, with S1, S2 independent draws of a standardised noise S (mean 0, sd 1):
      vanilla  = level_lr + SIGMA_B * S1
      h-detach = level_lr + delta_lr + SIGMA_B * S1 + SIGMA_D * S2
  so the pair's difference is  d = delta_lr + eps,  eps = SIGMA_D * S2, independent of the baseline.
  Values are not clipped to [0, 1] (they stay inside it in practice).

Noise families for S (both S1 and S2; `--noise`): "normal", N(0, 1); "skewed", the reflected,
centred gamma  S = (k - G) / sqrt(k),  G ~ Gamma(k = GAMMA_SHAPE = 1): an exponential, skewness -2,
a long lower tail (a seed occasionally does much worse) and bounded above; "laplace" (optional),
Laplace with scale 1/sqrt(2), symmetric with heavy tails.

True values, exact given the study's draws (finite-population estimands over the grid's lrs, the
quantities the stratified bootstrap targets; every lr has the same number of seeds):

- mean difference     = mean over the grid's lrs of delta_lr;
- P(better)           = mean over the grid's lrs of P(d > 0 | lr) = P(S > -delta_lr / SIGMA_D), the
                        exact survival function of S (scipy.stats: norm, gamma, laplace);
- per-lr mean (vanilla)  = level_lr,  per-lr mean (h-detach) = level_lr + delta_lr.

Statistics checked: the comparison's mean_difference_ci_low/high and prob_improvement_ci_low/high,
and each variant's per-lr mean_ci_low/mean_ci_high (LRStats) where the schema has those fields
("not reported" otherwise). An interval covers when low <= truth <= high. An interval that is None
counts as "no interval" (column "no CI"): "coverage" is over the intervals reported, "none=miss"
(coverage_counting_none in the JSON) counts a missing interval as a miss. The Monte-Carlo standard
error treats each study as a cluster (the per-lr intervals of one study are not independent); with
one interval per study it is the binomial one. The default run (400 studies) takes about 15 s,
`--quick` (100 studies, overriding `--studies`) about 4 s.

    python benchmarks/bench_coverage.py [--studies 400] [--quick] [--designs 3x2 5x10]
        [--noise normal skewed] [--seed 0] [--out benchmarks/results/coverage.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import stats

from studies.robustness import LRStats, RobustnessSummary, TrialOutcome, summarize

REPO = Path(__file__).resolve().parents[1]
DESIGNS = ["3x2", "5x2", "3x3", "5x3", "5x5", "5x10"]  # learning rates x seeds
BASELINE, VARIANT = ("vanilla", 0.0), ("h-detach", 0.5)  # name, p_detach
METRIC, THRESHOLD = "accuracy", 0.9
LEVEL_MEAN, LEVEL_SD = 0.90, 0.03  # baseline level per lr
DELTA_MEAN, DELTA_SD = 0.01, 0.01  # true paired difference per lr
SIGMA_B, SIGMA_D = 0.02, 0.02  # seed noise of the baseline, of the paired difference
GAMMA_SHAPE = 1.0
CONFIDENCE = 0.95  # what the summary's intervals claim
PER_LR_FIELDS = ("mean_ci_low", "mean_ci_high")


@dataclass(frozen=True)
class Noise:
    """A standardised noise S (mean 0, sd 1): a sampler and its exact survival function P(S > x)."""

    sample: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]
    sf: Callable[[np.ndarray], np.ndarray]
    description: str


def _skewed_sf(x: np.ndarray) -> np.ndarray:
    k = GAMMA_SHAPE  # S > x  <=>  G < k - x sqrt(k)
    return np.asarray(stats.gamma.cdf(k - x * np.sqrt(k), a=k))


NOISES: dict[str, Noise] = {  # the order fixes each family's random stream: append, do not reorder
    "normal": Noise(
        lambda rng, shape: rng.standard_normal(shape),
        lambda x: np.asarray(stats.norm.sf(x)),
        "N(0, 1)",
    ),
    "skewed": Noise(
        lambda rng, shape: (GAMMA_SHAPE - rng.gamma(GAMMA_SHAPE, size=shape)) / np.sqrt(GAMMA_SHAPE),
        _skewed_sf,
        f"(k - G) / sqrt(k), G ~ Gamma({GAMMA_SHAPE:g}): skewness {-2 / np.sqrt(GAMMA_SHAPE):g}",
    ),
    "laplace": Noise(
        lambda rng, shape: rng.laplace(0.0, 1 / np.sqrt(2), size=shape),
        lambda x: np.asarray(stats.laplace.sf(x, scale=1 / np.sqrt(2))),
        "Laplace(0, 1/sqrt(2))",
    ),
}
STATISTICS = ["mean difference", "P(better)", f"lr mean ({BASELINE[0]})", f"lr mean ({VARIANT[0]})"]


@dataclass
class Study:
    outcomes: list[TrialOutcome]
    truth: dict[str, np.ndarray]  # per statistic: its true value(s), one per interval


def draw_study(rng: np.random.Generator, noise: Noise, n_lrs: int, n_seeds: int) -> Study:
    lrs = np.logspace(-4, -2, n_lrs)
    level = rng.normal(LEVEL_MEAN, LEVEL_SD, n_lrs)
    delta = rng.normal(DELTA_MEAN, DELTA_SD, n_lrs)
    base = level[:, None] + SIGMA_B * noise.sample(rng, (n_lrs, n_seeds))
    variant = base + delta[:, None] + SIGMA_D * noise.sample(rng, (n_lrs, n_seeds))
    outcomes = [
        TrialOutcome(
            variant=name, p_detach=p_detach, lr=float(lr), seed=seed, state="done", metric=float(value)
        )
        for (name, p_detach), values in ((BASELINE, base), (VARIANT, variant))
        for lr, row in zip(lrs, values, strict=True)
        for seed, value in enumerate(row)
    ]
    truth = {
        "mean difference": np.array([delta.mean()]),
        "P(better)": np.array([noise.sf(-delta / SIGMA_D).mean()]),
        STATISTICS[2]: level,
        STATISTICS[3]: level + delta,
    }
    return Study(outcomes, truth)


Interval = tuple[float | None, float | None]


def intervals(summary: RobustnessSummary, per_lr: bool) -> dict[str, list[Interval]]:
    """Per statistic, the summary's intervals in the order of `Study.truth` (lrs ascending)."""
    comparison = summary.comparisons[0]
    found: dict[str, list[Interval]] = {
        "mean difference": [(comparison.mean_difference_ci_low, comparison.mean_difference_ci_high)],
        "P(better)": [(comparison.prob_improvement_ci_low, comparison.prob_improvement_ci_high)],
    }
    if per_lr:
        by_name = {v.name: v for v in summary.variants}
        for statistic, (name, _) in zip(STATISTICS[2:], (BASELINE, VARIANT), strict=True):
            found[statistic] = [
                (getattr(s, PER_LR_FIELDS[0]), getattr(s, PER_LR_FIELDS[1])) for s in by_name[name].lrs
            ]
    return found


@dataclass
class Tally:
    """One statistic over the studies of one design: per study, intervals expected/reported/covering."""

    expected: list[int] = field(default_factory=list)
    reported: list[int] = field(default_factory=list)
    covered: list[int] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    truths: list[float] = field(default_factory=list)

    def add(self, found: list[Interval], truth: np.ndarray) -> None:
        if len(found) != truth.size:
            raise RuntimeError(f"{len(found)} intervals for {truth.size} true values")
        reported = covered = 0
        for (low, high), true in zip(found, truth.tolist(), strict=True):
            if low is None or high is None:
                continue
            reported += 1
            covered += int(low <= true <= high)
            self.widths.append(high - low)
        self.expected.append(truth.size)
        self.reported.append(reported)
        self.covered.append(covered)
        self.truths.extend(truth.tolist())

    def result(self) -> dict[str, Any]:
        n, r, c = (np.array(x, dtype=float) for x in (self.expected, self.reported, self.covered))
        widths = np.array(self.widths)

        def ratio(denominator: np.ndarray) -> tuple[float | None, float | None]:
            """sum(c) / sum(denominator) and its cluster (per-study) standard error."""
            used = denominator > 0
            m, total = int(used.sum()), denominator.sum()
            if total == 0:
                return None, None
            p = c.sum() / total
            if m < 2:
                return float(p), None
            se = np.sqrt(m / (m - 1) * np.sum((c[used] - p * denominator[used]) ** 2)) / total
            return float(p), float(se)

        coverage, se = ratio(r)
        strict, strict_se = ratio(n)
        return {
            "reported": True,
            "studies": len(self.expected),
            "intervals_expected": int(n.sum()),
            "intervals_reported": int(r.sum()),
            "coverage": coverage,
            "coverage_se": se,
            "coverage_counting_none": strict,
            "coverage_counting_none_se": strict_se,
            "no_interval_share": float(1 - r.sum() / n.sum()),
            "zero_width_share": float(np.mean(widths == 0)) if widths.size else None,
            "median_width": float(np.median(widths)) if widths.size else None,
            "truth_mean": float(np.mean(self.truths)),
        }


def run_design(
    noise_name: str, design: str, studies: int, seed: int, per_lr: bool
) -> dict[str, dict[str, Any]]:
    n_lrs, n_seeds = (int(x) for x in design.split("x"))
    # one stream per (seed, family, design): a subset of designs or families gives the same numbers
    rng = np.random.default_rng([seed, list(NOISES).index(noise_name), n_lrs, n_seeds])
    noise = NOISES[noise_name]
    tallies = {statistic: Tally() for statistic in STATISTICS}
    for _ in range(studies):
        study = draw_study(rng, noise, n_lrs, n_seeds)
        summary = summarize(
            study.outcomes,
            metric=METRIC,
            threshold=THRESHOLD,
            higher_is_better=True,
            baseline=BASELINE[0],
        )
        for statistic, found in intervals(summary, per_lr).items():
            tallies[statistic].add(found, study.truth[statistic])
    missing = {"reported": False, "why": f"LRStats has no {' / '.join(PER_LR_FIELDS)}"}
    return {s: tallies[s].result() if s in STATISTICS[:2] or per_lr else missing for s in STATISTICS}


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.rstrip("\n")  # porcelain status lines begin with a significant space


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def row(noise: str, design: str, statistic: str, r: dict[str, Any]) -> list[str]:
    if not r["reported"]:
        return [noise, design, statistic, "not reported", "", "", "", ""]
    se = "" if r["coverage_se"] is None else f" ± {100 * r['coverage_se']:.1f}"
    width = "-" if r["median_width"] is None else f"{r['median_width']:.4f}"
    return [
        noise,
        design,
        statistic,
        f"{_pct(r['coverage'])}{se}",
        _pct(r["coverage_counting_none"]),
        _pct(r["no_interval_share"]),
        _pct(r["zero_width_share"]),
        width,
    ]


HEADER = [
    "noise",
    "design",
    "statistic",
    "coverage %",
    "none=miss %",
    "no CI %",
    "zero width %",
    "median width",
]
WIDTHS = [8, 6, 20, 13, 11, 7, 12, 12]


def print_row(cells: list[str]) -> None:
    padded = (
        f"{c:<{w}}" if i < 3 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, WIDTHS, strict=True))
    )
    print("  ".join(padded).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=400, help="studies per design and noise family")
    parser.add_argument("--quick", action="store_true", help="100 studies per design and noise family")
    parser.add_argument("--designs", nargs="+", default=DESIGNS, help="lrs x seeds, e.g. 3x2 5x10")
    parser.add_argument("--noise", nargs="+", choices=list(NOISES), default=["normal", "skewed"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coverage.json")
    args = parser.parse_args()
    studies = 100 if args.quick else args.studies
    for design in args.designs:
        parts = design.split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            parser.error(f"design {design!r} is not LRSxSEEDS, e.g. 5x3")
    per_lr = all(name in LRStats.model_fields for name in PER_LR_FIELDS)

    commit = _git("rev-parse", "HEAD") or None
    dirty = [
        line[3:]
        for line in _git(
            "status", "--porcelain", "--", "studies/robustness", "benchmarks/bench_coverage.py"
        ).splitlines()
    ]
    print(f"commit {commit}{' + local changes in ' + ', '.join(dirty) if dirty else ''}")
    print(
        f"{studies} studies per design and noise, nominal {CONFIDENCE:.0%}; "
        f"per-lr mean intervals {'reported' if per_lr else 'not reported by this summary'}"
    )
    print_row(HEADER)
    results: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    started = time.perf_counter()
    for noise in args.noise:
        for design in args.designs:
            found = run_design(noise, design, studies, args.seed, per_lr)
            results.setdefault(noise, {})[design] = found
            for statistic in STATISTICS:
                print_row(row(noise, design, statistic, found[statistic]))
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.1f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "settings": {
            "studies": studies,
            "designs": args.designs,
            "noise": {name: NOISES[name].description for name in args.noise},
            "seed": args.seed,
            "confidence": CONFIDENCE,
            "variants": {BASELINE[0]: BASELINE[1], VARIANT[0]: VARIANT[1]},
            "baseline": BASELINE[0],
            "metric": METRIC,
            "threshold": THRESHOLD,
            "level_mean": LEVEL_MEAN,
            "level_sd": LEVEL_SD,
            "delta_mean": DELTA_MEAN,
            "delta_sd": DELTA_SD,
            "sigma_baseline": SIGMA_B,
            "sigma_difference": SIGMA_D,
            "per_lr_mean_ci_reported": per_lr,
        },
        "estimands": {
            "mean difference": "mean over the grid's lrs of delta_lr",
            "P(better)": "mean over the grid's lrs of P(delta_lr + SIGMA_D * S > 0), exact",
            STATISTICS[2]: "level_lr, per lr",
            STATISTICS[3]: "level_lr + delta_lr, per lr",
        },
        "git_commit": commit,
        "dirty_files": dirty,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": elapsed,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "results": results,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
