"""Prometheus metrics, named by Prometheus conventions (_total, _seconds, _bytes).

One registry per worker (not the global default), so tests and several workers in one process
do not share counters.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("clip_worker_records_consumed_total", "Input records polled.", registry=r)
        self.embedded = Counter(
            "clip_worker_records_embedded_total", "Output records acknowledged by the broker.", registry=r
        )
        self.failed = Counter(
            "clip_worker_records_failed_total",
            "Records that failed for good, by stage and error class.",
            ["stage", "error"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "clip_worker_records_dead_lettered_total", "Dead-letter records acknowledged by the broker.", registry=r
        )
        self.fetch_retries = Counter(
            "clip_worker_fetch_retries_total",
            "S3 requests beyond the first per record, whether it was then fetched or failed.",
            registry=r,
        )
        self.fetched_bytes = Counter("clip_worker_fetched_bytes_total", "Image bytes read from S3.", registry=r)
        self.batch_size = Histogram(
            "clip_worker_batch_size", "Images per device batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "clip_worker_inference_seconds", "Device time per batch.", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight = Gauge("clip_worker_records_in_flight", "Records polled but not yet finished.", registry=r)
        self.paused = Gauge("clip_worker_consumer_paused", "1 while backpressure pauses the input.", registry=r)
        self.lag = Gauge(
            "clip_worker_consumergroup_lag",
            "Consumer lag per assigned partition, from librdkafka statistics.",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight_bytes = Gauge(
            "clip_worker_in_flight_bytes", "Bytes of fetched objects and prepared tensors in flight.", registry=r
        )
        self.outage = Gauge(
            "clip_worker_outage", "1 while records are parked by an outage, by cause.", ["cause"], registry=r
        )
        self.outage_retries = Counter(
            "clip_worker_outage_retries_total", "Parked records handed back to their stage.", registry=r
        )
        self.unassigned = Counter(
            "clip_worker_records_unassigned_total",
            "Records polled from a partition this consumer does not hold (dropped, not tracked).",
            registry=r,
        )
        self.rebalances = Counter(
            "clip_worker_rebalances_total", "Partition assignment changes.", ["kind"], registry=r
        )
        self.transactions = Counter(
            "clip_worker_transactions_total", "Kafka transactions, by outcome.", ["outcome"], registry=r
        )


def record_lag(metrics: Metrics, stats_json: str) -> None:
    """librdkafka's statistics callback: publish the consumer lag of each partition it fetches."""
    stats = json.loads(stats_json)
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            if int(partition) >= 0 and p.get("consumer_lag", -1) >= 0:
                metrics.lag.labels(topic=topic, partition=partition).set(p["consumer_lag"])
