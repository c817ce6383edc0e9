"""The job queue: studies become one job per grid cell; workers claim packs of them under leases.

Every operation is a function of a `sessionmaker` that runs one short transaction; there is no
global state. Submit and cancel in `submission`, failed cells queued again in `requeue`, claim in
`claim`, the life of a lease in `leases`, the worker registry in `workers`, read-only views in
`reads`.
"""

from studies.queue._types import CancelResult, ClaimedJob, HeartbeatReply, ReapedJob, RequeueResult
from studies.queue.claim import claim
from studies.queue.held_jobs import (
    cancel_job,
    complete_many,
    fail,
    heartbeat,
    release,
    retry_held,
    set_optuna_trials,
)
from studies.queue.reads import (
    JobOutcome,
    QueueSnapshot,
    count_studies,
    get_job,
    get_study,
    job_counts,
    job_outcomes,
    list_jobs,
    list_studies,
    queue_snapshot,
    running_jobs_by_worker,
    unfinished_jobs,
)
from studies.queue.reaper import reap
from studies.queue.requeue import requeue_failed
from studies.queue.retry import RetryDecision, RetryPolicy
from studies.queue.submission import (
    Submission,
    cancel_study,
    default_optuna_study_name,
    delete_study,
    pack_key,
    submit_study,
    submit_study_once,
    validate_spec,
)
from studies.queue.workers import list_workers, register_worker, set_worker_status, worker_stopped

__all__ = [
    "CancelResult",
    "ClaimedJob",
    "HeartbeatReply",
    "JobOutcome",
    "QueueSnapshot",
    "ReapedJob",
    "RequeueResult",
    "RetryDecision",
    "RetryPolicy",
    "Submission",
    "cancel_job",
    "cancel_study",
    "claim",
    "complete_many",
    "count_studies",
    "default_optuna_study_name",
    "delete_study",
    "fail",
    "get_job",
    "get_study",
    "heartbeat",
    "job_counts",
    "job_outcomes",
    "list_jobs",
    "list_studies",
    "list_workers",
    "pack_key",
    "queue_snapshot",
    "reap",
    "register_worker",
    "release",
    "requeue_failed",
    "retry_held",
    "running_jobs_by_worker",
    "set_optuna_trials",
    "set_worker_status",
    "submit_study",
    "submit_study_once",
    "unfinished_jobs",
    "validate_spec",
    "worker_stopped",
]
