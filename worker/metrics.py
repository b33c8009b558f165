"""Prometheus metrics, named by Prometheus conventions (base units, _total, _seconds, _bytes).

One registry per worker (not the global default), so tests and several workers in one process
do not share counters. Per-record latencies are timed where a stage already handles the record
(a float on its Work) and observed on the main thread as the stage hands it on: no clock or
allocation of its own per record, and histograms that count each record once per stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_END_TO_END = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


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
        self.fetch_seconds = Histogram(
            "clip_worker_fetch_seconds", "S3 fetch per record, retries and backoff included, whatever the outcome.",
            buckets=_SLOW, registry=r,
        )
        self.preprocess_seconds = Histogram(
            "clip_worker_preprocess_seconds", "Decode and preprocess per record, whatever the outcome.",
            buckets=_FAST, registry=r,
        )
        self.device_decoded = Counter(
            "clip_worker_device_decoded_total",
            "Images decoded on the device (model.decode); the rest are decoded on the CPU.", registry=r,
        )
        self.device_decode_refused = Counter(
            "clip_worker_device_decode_refused_total",
            "Images routed to the device decoder that it could not decode, prepared on the CPU instead.", registry=r,
        )
        self.device_decode_suspects = Counter(
            "clip_worker_device_decode_suspects_total",
            "Baseline JPEGs decoded on the CPU because their records were on the device when a worker stopped "
            "(the device journal).", registry=r,
        )
        self.batch_wait_seconds = Histogram(
            "clip_worker_batch_wait_seconds", "Time an image waited in the batcher for its batch to leave.",
            buckets=_FAST, registry=r,
        )
        self.produce_seconds = Histogram(
            "clip_worker_produce_seconds",
            "From handing an output record to the producer to the broker's acknowledgement "
            "(exactly-once: to its write into the open transaction).",
            buckets=_SLOW, registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "clip_worker_end_to_end_seconds",
            "From the input record's timestamp to its output's acknowledgement (exactly-once: its write into "
            "the transaction). Includes time spent in the topic before the worker polled it.",
            buckets=_END_TO_END, registry=r,
        )
        self.in_flight = Gauge("clip_worker_records_in_flight", "Records polled but not yet finished.", registry=r)
        self.paused = Gauge("clip_worker_consumer_paused", "1 while backpressure pauses the input.", registry=r)
        self.paused_seconds = Counter(
            "clip_worker_paused_seconds_total", "Time the input was paused by backpressure.", registry=r
        )
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
        self.client_replacements = Counter(
            "clip_worker_kafka_client_replacements_total",
            "Kafka clients replaced in the running process, by reason (wedged: a call did not return; "
            "fatal: the client was done).", ["reason"], registry=r,
        )
        self.build_info = Gauge(
            "clip_worker_build_info", "Always 1; the labels say what runs.",
            ["version", "model", "pretrained", "device", "dtype"], registry=r,
        )
        self.device_memory = Gauge(
            "clip_worker_device_memory_bytes", "Device memory held by tensors (CUDA only; 0 elsewhere).", registry=r
        )

    def describe(
        self, *, version: str, model: str, pretrained: str, device: str, dtype: str,
        device_memory: Callable[[], float] | None,
    ) -> None:
        """Publish what runs (build_info), and read the device's memory at each scrape when it can be."""
        self.build_info.labels(version=version, model=model, pretrained=pretrained, device=device, dtype=dtype).set(1)
        if device_memory is not None:
            self.device_memory.set_function(device_memory)


def record_lag(metrics: Metrics, stats_json: str) -> None:
    """librdkafka's statistics callback: publish the consumer lag of each partition it fetches."""
    stats = json.loads(stats_json)
    for topic, topic_stats in stats.get("topics", {}).items():
        for partition, p in topic_stats.get("partitions", {}).items():
            if int(partition) >= 0 and p.get("consumer_lag", -1) >= 0:
                metrics.lag.labels(topic=topic, partition=partition).set(p["consumer_lag"])
