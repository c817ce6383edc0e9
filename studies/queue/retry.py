"""Whether a failed or abandoned attempt runs again: one decision shared by `fail` and `reap`.

Two kinds of failure are counted apart. A trial error (the trial's own training raised) spends
one of the job's `max_attempts`. A lost lease (the worker was killed or its node vanished) is an
infrastructure failure and spends none; it is counted in `lost_leases` only so that a trial which
takes its worker down every time (a segfault, the host's OOM killer) still ends, after
`MAX_LOST_LEASES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from studies.db.models import JobState

MAX_LOST_LEASES = 10


@dataclass(frozen=True)
class RetryDecision:
    state: JobState  # QUEUED: try again; FAILED: give up; CANCELLED: the study was cancelled
    reason: str

    @property
    def retry(self) -> bool:
        return self.state is JobState.QUEUED


@dataclass(frozen=True)
class RetryPolicy:
    """Up to `max_attempts` claims of a job; a cancelled study's jobs are never retried."""

    max_attempts: int
    max_lost_leases: int = MAX_LOST_LEASES

    def decide_lost(self, lost_leases: int, cancel_requested: bool = False) -> RetryDecision:
        """A lease expired (counted in `lost_leases`, not in the attempts)."""
        if cancel_requested:
            return RetryDecision(JobState.CANCELLED, "study cancelled")
        if lost_leases < self.max_lost_leases:
            return RetryDecision(JobState.QUEUED, f"retrying: lease lost {lost_leases} times")
        return RetryDecision(
            JobState.FAILED, f"gave up: its lease was lost {lost_leases} times (does it kill its worker?)"
        )

    def decide(self, attempts: int, cancel_requested: bool = False) -> RetryDecision:
        if cancel_requested:
            return RetryDecision(JobState.CANCELLED, "study cancelled")
        if attempts < self.max_attempts:
            return RetryDecision(
                JobState.QUEUED, f"retrying: attempt {attempts} of {self.max_attempts} ended"
            )
        return RetryDecision(JobState.FAILED, f"gave up after {attempts} of {self.max_attempts} attempts")
