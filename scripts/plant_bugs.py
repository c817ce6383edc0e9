"""Plant realistic one-line bugs, one at a time, in a scratch copy of HEAD, and report which tests
catch each. A bug no test catches names a rule no test makes happen.

    .venv/bin/python scripts/plant_bugs.py [--only NAME ...] [--out benchmarks/results/planted_bugs.json]

Not run in CI (it runs the named test files once per bug: about 10 minutes on 2 cores). Each bug is
a text replacement that must match exactly once in HEAD; one that no longer matches is reported
"stale", to be brought up to date with the code. The README's "Tests that make the rules happen"
shows the last table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "planted_bugs.json"
LSTM, TRAINER, ADAM = (
    "tests/studies/test_hdetach_lstm.py",
    "tests/studies/test_trainer.py",
    "tests/studies/test_packed_adam.py",
)
QUEUE, ROBUST, API = (
    "tests/studies/test_queue.py",
    "tests/studies/test_robustness.py",
    "tests/service/test_studies_api.py",
)


@dataclass(frozen=True)
class Bug:
    name: str
    area: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # the test files that should catch it


BUGS = [
    Bug(
        "cell update drops half of i*g",
        "kernel",
        "studies/lstm/_kernel.py",
        "c_next.addcmul_(i, g)",
        "c_next.addcmul_(i, g, value=0.5)",
        (LSTM,),
    ),
    Bug(
        "backward forgets the forget gate",
        "kernel",
        "studies/lstm/_kernel.py",
        "dc_carry = dc * f[:, t]",
        "dc_carry = dc",
        (LSTM,),
    ),
    Bug(
        "mixed mask read one step late",
        "kernel",
        "studies/lstm/_kernel.py",
        "d_pre_t * mask.keep[t].view(K, 1, 1)",
        "d_pre_t * mask.keep[t - 1].view(K, 1, 1)",
        (LSTM,),
    ),
    Bug(
        "no gradient clipping",
        "trainer",
        "studies/training/trainer.py",
        "            clip_grad_norm_per_model(params, self.max_norm)\n",
        "",
        (TRAINER, ADAM),
    ),
    Bug(
        "a pack clipped by its largest norm",
        "trainer",
        "studies/training/packed.py",
        "coef = (max_norm / (norms + 1e-6))",
        "coef = (max_norm / (norms.max() + 1e-6))",
        (ADAM, TRAINER),
    ),
    Bug(
        "Adam's first moment weighted the wrong way",
        "trainer",
        "studies/training/packed.py",
        "m.lerp_(p.grad, 1 - beta1)",
        "m.lerp_(p.grad, beta1)",
        (ADAM,),
    ),
    Bug(
        "divergence never detected",
        "trainer",
        "studies/training/trainer.py",
        "finite = torch.isfinite(losses.detach())",
        "finite = torch.ones_like(losses, dtype=torch.bool)",
        (TRAINER,),
    ),
    Bug(
        "a tie replaces the best-validation model",
        "trainer",
        "studies/training/trainer.py",
        "return self.success.better(value, best)",
        "return not self.success.better(best, value)",
        (TRAINER,),
    ),
    Bug(
        "every trial draws masks with the first trial's p",
        "trainer",
        "studies/training/trainer.py",
        "u < self.p_detach[k]",
        "u < self.p_detach[0]",
        (TRAINER,),
    ),
    Bug(
        "p_detach switched off one step late",
        "trainer",
        "studies/training/config.py",
        "return step < self.p_off_step",
        "return step <= self.p_off_step",
        (TRAINER,),
    ),
    Bug(
        "the threshold itself is not a success",
        "statistics",
        "studies/training/sections.py",
        "value >= self.threshold if self.higher_is_better",
        "value > self.threshold if self.higher_is_better",
        (TRAINER,),
    ),
    Bug(
        "copying accuracy over 11 steps",
        "tasks",
        "studies/tasks/copying.py",
        "last_steps=N_SYMBOLS)",
        "last_steps=N_SYMBOLS + 1)",
        ("tests/studies/test_tasks.py",),
    ),
    Bug(
        "diverged runs keep their metric",
        "statistics",
        "studies/robustness/_outcome.py",
        "np.where(ran & ~diverged & finite, metric, np.nan)",
        "np.where(ran & finite, metric, np.nan)",
        (ROBUST,),
    ),
    Bug(
        "success needs better than the threshold",
        "statistics",
        "studies/robustness/_outcome.py",
        "success = sign * value >= sign * threshold",
        "success = sign * value > sign * threshold",
        (ROBUST,),
    ),
    Bug(
        "population std instead of sample std",
        "statistics",
        "studies/robustness/_variant.py",
        "float(np.std(values, ddof=1)) if values.size >= 2",
        "float(np.std(values, ddof=0)) if values.size >= 2",
        (ROBUST,),
    ),
    Bug(
        "repeated seeds accepted",
        "spec",
        "studies/spec.py",
        'if len(set(value)) != len(value):\n            raise ValueError("seeds must be distinct")',
        'if len(set(value)) < len(value) - 1:\n            raise ValueError("seeds must be distinct")',
        ("tests/studies/test_spec_data.py", QUEUE, API),
    ),
    Bug(
        "eval_every equal to steps refused",
        "spec",
        "studies/spec.py",
        "if self.budget.eval_every > self.budget.steps:",
        "if self.budget.eval_every >= self.budget.steps:",
        ("tests/studies/test_spec_data.py", "tests/studies/test_presets.py"),
    ),
    Bug(
        "a reaped lease spends an attempt",
        "queue",
        "studies/queue/reaper.py",
        "            job.attempts -= 1\n",
        "",
        (QUEUE,),
    ),
    Bug(
        "a claim ignores a cancel in flight",
        "queue",
        "studies/queue/claim.py",
        "STUDIES.c.cancel_requested.is_(False),",
        "True,",
        (QUEUE,),
    ),
    Bug(
        "leases reaped a day late",
        "queue",
        "studies/queue/reaper.py",
        "Job.lease_expires_at < now)",
        "Job.lease_expires_at < now - timedelta(days=1))",
        (QUEUE,),
    ),
    Bug(
        "DELETE needs only read access",
        "service",
        "service/routes/studies.py",
        "    status_code=status.HTTP_204_NO_CONTENT,\n    dependencies=[WriteAccess],",
        "    status_code=status.HTTP_204_NO_CONTENT,\n    dependencies=[ReadAccess],",
        (API,),
    ),
    Bug(
        "Optuna records the final model whatever the selection",
        "optuna",
        "studies/tracking.py",
        'result.get("best_val" if selection == "best_val" else "final")',
        'result.get("final")',
        ("tests/studies/test_optuna_rows.py", "tests/studies/test_results.py"),
    ),
]


def scratch_copy(where: Path) -> None:
    """HEAD's tracked files, as committed, into `where`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")


def run_tests(where: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, str | None, float]:
    """("caught", first failing test) or ("missed", None), and the seconds it took."""
    env = {**os.environ, "PYTHONPATH": str(where)}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "caught (timed out)", None, time.monotonic() - started
    seconds = time.monotonic() - started
    if done.returncode == 0:
        return "missed", None, seconds
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M)
    return "caught", failed.group(1) if failed else f"exit {done.returncode}", seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the bugs to plant (default: all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per bug at most")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    rows = []
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        where = Path(tmp)
        scratch_copy(where)
        for bug in bugs:
            target = where / bug.path
            original = target.read_text()
            if original.count(bug.old) != 1:
                rows.append({**asdict(bug), "result": "stale", "caught_by": None, "seconds": 0.0})
                print(f"{'stale':<10} {bug.name} ({bug.path}: the text to replace is not there once)")
                continue
            target.write_text(original.replace(bug.old, bug.new))
            try:
                result, caught_by, seconds = run_tests(where, bug.tests, args.timeout)
            finally:
                target.write_text(original)
            rows.append(
                {**asdict(bug), "result": result, "caught_by": caught_by, "seconds": round(seconds, 1)}
            )
            print(f"{result:<10} {bug.name}: {caught_by or '-'} ({seconds:.0f} s)")
    caught = sum(r["result"].startswith("caught") for r in rows)
    print(f"\n{caught} of {len(rows)} planted bugs caught")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"caught": caught, "planted": len(rows), "bugs": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
