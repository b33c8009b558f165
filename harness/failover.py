"""Records flowing through a failover, for tests/pipeline/test_failover.py and bench/failover_bench.py.

- ``Feeder``: a thread producing image requests to the input topic at a steady rate (acks=all,
  idempotent, never timing out: an outage delays it, never drops a record), noting when each id was
  produced.
- ``Watcher``: a thread reading the output topic as a ``read_committed`` consumer, noting when each id
  first became visible and how often it was seen (the tests count duplicates with a fresh reader
  afterwards too: harness/kafka_io.py ``read_all``).
- ``latencies``: produce-to-visible, per id, from the two.
- ``failover_settings``: fresh topics on the cluster and a worker's settings for them;
  ``transactional_id``: the id whose coordinator a test or the benchmark takes down.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from harness.kafka_cluster import KafkaCluster
from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from worker.config import Settings
from worker.formats.messages import ImageRequest, S3Uri, encode_request_json
from worker.kafka.config import producer_config

_LOG = logging.getLogger("harness.librdkafka")


class Feeder:
    def __init__(self, bootstrap: str, topic: str, *, bucket: str, keys: list[str], rate: float = 40.0) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "logger": _LOG, "linger.ms": 5,
                                   "enable.idempotence": True, "message.timeout.ms": 0})
        self._topic, self._bucket, self._keys, self._rate = topic, bucket, keys, rate
        self.produced_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        n, started = 0, time.monotonic()
        while not self._stop.is_set():
            request = ImageRequest(id=f"img-{n:06d}", uri=S3Uri(self._bucket, self._keys[n % len(self._keys)]))
            try:
                self._producer.produce(self._topic, encode_request_json(request), request.id.encode())
            except BufferError:
                self._producer.poll(0.1)
                continue
            self.produced_at[request.id] = time.monotonic()
            n += 1
            self._producer.poll(0)
            time.sleep(max(0.0, started + n / self._rate - time.monotonic()))

    def stop(self, timeout: float = 120.0) -> set[str]:
        """Stop producing, wait for every acknowledgement; the ids produced."""
        self._stop.set()
        self._thread.join()
        if self._producer.flush(timeout) != 0:
            raise RuntimeError("the feeder's records were not all acknowledged")
        self._producer.close()
        return set(self.produced_at)


class Watcher:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "logger": _LOG, "group.id": f"watch-{uuid.uuid4()}",
                                   "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                   "isolation.level": "read_committed"})
        # Assigned, not subscribed: a group of its own would rebalance through the outage and read
        # again from the start, counting the same records twice.
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.visible_at: dict[str, float] = {}
        self.seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, 0.2):
                if message.error() is not None or message.key() is None:
                    continue
                key = message.key().decode()  # type: ignore[union-attr]
                self.visible_at.setdefault(key, time.monotonic())
                self.seen[key] = self.seen.get(key, 0) + 1
        self._consumer.close()

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Until every id is visible or the timeout passes; the ids still missing."""
        deadline = time.monotonic() + timeout
        while (missing := ids - self.visible_at.keys()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return missing

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def duplicates(self) -> int:
        return sum(self.seen.values()) - len(self.seen)


def latencies(feeder: Feeder, watcher: Watcher) -> dict[str, float]:
    """Median, p99 and max of produce-to-visible over the ids seen, in seconds."""
    values = sorted(watcher.visible_at[i] - t for i, t in feeder.produced_at.items() if i in watcher.visible_at)
    if not values:
        return {"median": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "p99": values[min(len(values) - 1, int(len(values) * 0.99))],
            "max": values[-1]}


def failover_settings(cluster: KafkaCluster, s3: S3Server, checkpoint: Path, *, prefix: str, bucket: str,
                      delivery: str, journal_dir: Path) -> Settings:
    """Fresh topics on `cluster` (input 3 partitions, output 2, dead letters 1) and the settings of one
    worker for them: the tiny model, static membership (worker-0), default timeouts, the S3 server."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for suffix, partitions in (("in", 3), ("out", 2), ("dlq", 1)):
        cluster.create_topic(f"{name}-{suffix}", partitions)
    return Settings(
        model=tiny_model_settings(checkpoint, decode_journal_dir=journal_dir),
        kafka={"bootstrap_servers": cluster.bootstrap_servers, "group_id": name, "input_topic": f"{name}-in",
               "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq", "group_instance_id": "worker-0"},
        s3={"endpoint_url": s3.endpoint_url, "region": "us-east-1", "allowed_sources": (bucket,)},
        pipeline={"metrics_port": 0, "delivery": delivery},
    )


def transactional_id(settings: Settings) -> str:
    """The exactly-once worker's transactional.id, as the worker sets it."""
    tid: str = producer_config(settings.kafka, settings.pipeline)["transactional.id"]
    return tid
