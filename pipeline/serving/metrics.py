"""The Prometheus metrics of `finetune serve`, at GET /metrics: predict requests by pipeline and HTTP
status and their latency, the texts per model call, the prediction log's queue depth, rows written
and rows dropped, and the model version each pipeline serves. Each app has a registry of its own, so
two apps in one process (as in the tests) never mix their counts.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # texts


class ServingState(Collector):
    """What the services hold when Prometheus scrapes: each pipeline's model and readiness, and their
    prediction log's queue and counts."""

    def __init__(self, services: dict[str, Any]):
        self.services = services

    def collect(self) -> Iterator[Metric]:
        model = GaugeMetricFamily("finetune_model_info", "The model version a pipeline answers with (1); none while it has no model",
                                  labels=["pipeline", "name", "version", "runtime"])
        ready = GaugeMetricFamily("finetune_pipeline_ready", "1 when the pipeline has a model to answer with, 0 while its route answers 503",
                                  labels=["pipeline"])
        for name, service in self.services.items():
            if service.served:
                model.add_metric([name, service.served.name, service.served.version, service.served.runtime], 1)
            ready.add_metric([name], 1 if service.served else 0)
        yield model
        yield ready
        log = next((service.log for service in self.services.values() if service.log), None)
        if log is None:
            return
        yield GaugeMetricFamily("finetune_prediction_log_queue_depth", "Requests waiting to be written to the prediction store",
                                value=log.depth())
        written = CounterMetricFamily("finetune_prediction_log_written", "Answers written to the prediction store", labels=["pipeline"])
        for pipeline, count in sorted(log.counts.written.items()):
            written.add_metric([pipeline], count)
        yield written
        dropped = CounterMetricFamily("finetune_prediction_log_dropped", "Answers left out of the prediction store", labels=["reason"])
        dropped.add_metric(["queue_full"], log.counts.dropped_queue_full)
        dropped.add_metric(["write_failed"], log.counts.dropped_write_failed)
        yield dropped


class Metrics:
    """One app's registry: the counters and histograms it updates, and the state it reads on a scrape."""

    def __init__(self, services: dict[str, Any]):
        self.registry = CollectorRegistry()
        self.requests = Counter("finetune_requests", "Predict requests answered, by pipeline and HTTP status",
                                ["pipeline", "status"], registry=self.registry)
        self.latency = Histogram("finetune_request_seconds", "Seconds to answer a predict request, by pipeline", ["pipeline"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_texts = Histogram("finetune_batch_texts", "Texts scored in one model call, by pipeline", ["pipeline"],
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(ServingState(services))

    def answered(self, pipeline: str, status: int, seconds: float) -> None:
        """Count a predict request and its latency."""
        self.requests.labels(pipeline=pipeline, status=str(status)).inc()
        self.latency.labels(pipeline=pipeline).observe(seconds)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
