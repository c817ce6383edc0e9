"""What the queue operations hand back: small frozen values, never live ORM rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from studies.db.models import JobState, StudyStatus
from studies.spec import GridCell, StudySpec


@dataclass(frozen=True)
class ClaimedJob:
    """One job a worker now holds; report on it with `lease_token`."""

    job_id: int
    study_id: int
    cell_index: int
    variant: str
    p_detach: float
    lr: float
    seed: int
    lease_token: str
    lease_expires_at: datetime
    attempt: int  # 1 for the first claim
    pack_key: str  # equal keys: one packed training run
    spec_json: str
    optuna_study_name: str

    @cached_property
    def spec(self) -> StudySpec:
        """The study's spec, parsed once (when first asked: a spec this version refuses fails the
        pack that needs it, not the claim)."""
        return StudySpec.model_validate_json(self.spec_json)

    @property
    def cell(self) -> GridCell:
        """The grid point this job trains."""
        return GridCell(
            index=self.cell_index, variant=self.variant, p_detach=self.p_detach, lr=self.lr, seed=self.seed
        )


@dataclass(frozen=True)
class HeartbeatReply:
    held: frozenset[int]  # leases extended
    lost: frozenset[int]  # stop working on these: reaped, reclaimed or finished elsewhere
    cancelled: frozenset[int]  # held, but their study was cancelled: stop and call cancel_job


@dataclass(frozen=True)
class ReapedJob:
    job_id: int
    study_id: int
    worker_id: str | None
    optuna_trial_id: int | None  # the abandoned attempt's trial: mark it FAIL
    state: JobState  # QUEUED again, or FAILED / CANCELLED for good


@dataclass(frozen=True)
class CancelResult:
    study_id: int
    status: StudyStatus  # CANCELLED at once unless jobs are still running
    cancelled_jobs: int  # queued jobs cancelled now
    running_jobs: int  # stopped by their workers at their next heartbeat


@dataclass(frozen=True)
class RequeueResult:
    study_id: int
    status: StudyStatus  # RUNNING once cells were queued again (a finished study is reopened)
    requeued: int  # failed cells queued again
