"""Records flowing through a failover, for tests/pipeline/test_failover.py and bench/failover_bench.py.

- ``Feeder``: a thread producing image requests to the input topic at a steady rate (acks=all,
  idempotent, never timing out: an outage delays it, never drops a record), noting when each id was
  produced.
- ``Watcher``: a thread reading the output topic as a ``read_committed`` consumer, noting when each id
  first became visible and how often it was seen (the tests count duplicates with a fresh reader
  afterwards too: harness/kafka_io.py ``read_all``).
- ``latencies``: produce-to-visible, per id, from the two.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from worker.formats.messages import ImageRequest, S3Uri, encode_request_json

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
