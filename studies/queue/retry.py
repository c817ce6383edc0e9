"""Whether a failed or abandoned attempt runs again: one decision shared by `fail` and `reap`."""

from __future__ import annotations

from dataclasses import dataclass

from studies.db.models import JobState


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

    def decide(self, attempts: int, cancel_requested: bool = False) -> RetryDecision:
        if cancel_requested:
            return RetryDecision(JobState.CANCELLED, "study cancelled")
        if attempts < self.max_attempts:
            return RetryDecision(
                JobState.QUEUED, f"retrying: attempt {attempts} of {self.max_attempts} ended"
            )
        return RetryDecision(JobState.FAILED, f"gave up after {attempts} of {self.max_attempts} attempts")
