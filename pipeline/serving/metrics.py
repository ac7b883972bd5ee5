"""The Prometheus metrics of `finetune serve`, at GET /metrics: predict requests by pipeline and HTTP
status and their latency, the texts per model call, the prediction log's queue depth, rows written
and rows dropped, the model version each pipeline serves, and the open negative-news alerts that the
monitor stored in the prediction store (monitoring/alerts.py). Each app has a registry of its own, so
two apps in one process (as in the tests) never mix their counts.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
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
        self.store = None  # the prediction store's engine, opened at the first scrape
        self.store_failing = False  # warned once per outage, not at every scrape

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
        yield from self.alerts(log)

    def alerts(self, log: Any) -> Iterator[Metric]:
        """The open alerts in the log's store, each as its share of negative texts; nothing while the store fails."""
        from sqlalchemy.exc import SQLAlchemyError

        from pipeline.errors import UserError
        from pipeline.monitoring.alerts import open_alerts
        from pipeline.monitoring.store import open_store

        try:
            self.store = self.store or open_store(log.location, log.first)
            found = open_alerts(self.store, datetime.now(timezone.utc).date())
        except (SQLAlchemyError, UserError) as exc:
            if not self.store_failing:
                logging.getLogger("uvicorn.error").warning("reading the open alerts from the prediction store failed: %s",
                                                           " ".join(str(exc).split())[:300])
            self.store_failing = True
            return
        self.store_failing = False
        gauge = GaugeMetricFamily("finetune_sentiment_alert", "Open negative-news alerts: the share of negative texts about the entity "
                                  "in the window (finetune.sentiment.alert)", labels=["pipeline", "entity", "window"])
        for alert in found:
            gauge.add_metric([alert["pipeline"], alert["entity"], "/".join(alert["window"])], alert["share"])
        yield gauge


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
