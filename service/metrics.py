"""Prometheus metrics, read from the database at scrape time (so every API replica agrees)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from deployment.backend import Backend
from studies import queue
from studies.db.models import JobState, WorkerStatus

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class QueueCollector(Collector):
    def __init__(self, backend: Backend):
        self.backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        counts, durations, workers = queue.queue_snapshot(self.backend.factory)
        depth = GaugeMetricFamily("hdetach_jobs", "jobs by state", labels=["state"])
        for state in JobState:
            depth.add_metric([state.value], counts.get(state.value, 0))
        yield depth
        yield GaugeMetricFamily(
            "hdetach_running_jobs", "jobs being trained now", value=counts.get("running", 0)
        )
        yield GaugeMetricFamily(
            "hdetach_completed_trials", "grid cells with a recorded result", value=counts.get("done", 0)
        )
        values = sorted(durations)
        buckets = [(str(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS] + [("+Inf", len(values))]
        yield HistogramMetricFamily(
            "hdetach_trial_duration_seconds",
            "training wall time of recorded trials",
            buckets=buckets,
            sum_value=sum(values),
        )
        beats = GaugeMetricFamily(
            "hdetach_worker_last_heartbeat_timestamp_seconds",
            "last heartbeat of each worker",
            labels=["worker", "device"],
        )
        for worker_id, device, last, _ in workers:
            beats.add_metric([worker_id, device], last.timestamp())
        yield beats
        by_status = GaugeMetricFamily(
            "hdetach_workers",
            "registered workers by status (halted: stopped claiming after infrastructure failures)",
            labels=["status"],
        )
        statuses = Counter(status for *_, status in workers)
        for status in WorkerStatus:
            by_status.add_metric([status.value], statuses.get(status.value, 0))
        yield by_status


def make_registry(backend: Backend) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(QueueCollector(backend))
    return registry
