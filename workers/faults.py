"""Fault injection, for tests only: die or fail at a named point of an attempt.

`HDETACH_TEST_FAULT=point[:action[:probability]]`, read once per process. Points:
`trials-started` (the Optuna trials exist, the jobs do not point at them yet), `results-recorded`
(results are in our tables, the Optuna trials not yet closed), `curve-write` (before a learning-
curve write), `training` (before a pack trains), `ray-evaluated` (in a Ray trial that started
from scratch, once its first evaluation and checkpoint reached Tune; a retry resumes from that
checkpoint, so it is not hit again). Actions: `kill` (SIGKILL this process, the default),
`db-error` (raise a database error, as a dropped connection would), `oom` (raise
torch.OutOfMemoryError when the pack has more than one trial), `device-assert` (raise the CUDA
error a device-side assert gives). Unset, `hit` costs one dict lookup.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
from functools import cache

import torch
from sqlalchemy.exc import OperationalError

FAULT_ENV = "HDETACH_TEST_FAULT"
POINTS = ("trials-started", "results-recorded", "curve-write", "training", "ray-evaluated")


@cache
def _planned() -> tuple[str, str, float] | None:
    raw = os.environ.get(FAULT_ENV, "").strip()
    if not raw:
        return None
    point, action, probability = ([*raw.split(":"), "", ""])[:3]
    if point not in POINTS:
        raise ValueError(f"{FAULT_ENV}: unknown point {point!r}; points: {', '.join(POINTS)}")
    return point, action or "kill", float(probability or 1.0)


def hit(point: str, pack_size: int = 1) -> None:
    """Act out the planned fault if it is planned at `point`."""
    plan = _planned()
    if plan is None or plan[0] != point or random.random() >= plan[2]:
        return
    action = plan[1]
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "db-error":
        raise OperationalError("injected", {}, sqlite3.OperationalError("injected: connection dropped"))
    elif action == "oom" and pack_size > 1:
        raise torch.OutOfMemoryError(f"injected: out of memory with {pack_size} trials")
    elif action == "device-assert":
        raise RuntimeError("CUDA error: device-side assert triggered (injected)")
