"""A replicated Kafka 4.x cluster for failover tests: three combined KRaft nodes (broker and controller
each, a static controller quorum of three), built from harness/kafka_broker.py's nodes (same jar
cache, JVM flags and child-process handling).

Replicated as production runs it: replication factor 3 and min.insync.replicas 2 for every topic
it creates, the offsets topic and the transaction state log, so that any one node can be SIGKILLed
(``kill``), stopped cleanly (``stop``: SIGTERM, a controlled shutdown that moves leadership first)
and started again (``start``) while clients go on. With two nodes down the survivor can neither
elect leaders (no controller quorum) nor accept writes (min.insync.replicas), as in production.

It costs three JVMs: start it once per test module (harness/pytest_plugin.py ``kafka_cluster``),
not per test. Helpers say which node leads what: ``group_coordinator``,
``transaction_coordinator`` and ``partition_leaders``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from harness.children import free_port
from harness.kafka_broker import KafkaBroker, Membership, new_cluster_id

NODES = 3
TRANSACTION_STATE_PARTITIONS = 4  # as the single broker's; the coordinator of an id follows its hash
_REPLICATED = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "transaction.state.log.num.partitions": str(TRANSACTION_STATE_PARTITIONS),
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
}


class KafkaCluster:
    """Three nodes, ids 1..3; ``node(id)`` gives one to kill, stop or start."""

    def __init__(self, *, properties: Mapping[str, str] | None = None, keep_logs: bool = False) -> None:
        ports = [(free_port(), free_port()) for _ in range(NODES)]
        voters = ",".join(f"{i}@127.0.0.1:{controller}" for i, (_, controller) in enumerate(ports, start=1))
        cluster_id = new_cluster_id()
        props = _REPLICATED | dict(properties or {})
        self.nodes = [
            KafkaBroker(properties=props, keep_logs=keep_logs, startup_timeout=120.0,
                        membership=Membership(i, port, controller, voters, cluster_id))
            for i, (port, controller) in enumerate(ports, start=1)
        ]
        self._admin: AdminClient | None = None

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def start(self) -> None:
        """Start every node that is not running, then wait for each (a quorum needs two of them)."""
        stopped = [node for node in self.nodes if not node.is_running]
        if not stopped:
            return
        for node in stopped:
            node.start(wait=False)
        for node in stopped:
            node.wait_until_serving()
        if all(node.is_running for node in self.nodes):
            self.group_coordinator("harness-warmup", timeout=60)  # loads the offsets topic's coordinators

    def close(self, *, keep_logs: bool = False) -> None:
        """SIGKILL every node, then delete their files: the last node of a quorum cannot shut down
        cleanly (no quorum left to hand over to) and would wait out its timeout."""
        self._admin = None
        for node in self.nodes:
            node.kill()
            node.close(keep_logs=keep_logs)

    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        return self._admin

    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 60.0) -> None:
        """A topic with replication factor 3 (min.insync.replicas 2, the cluster's default)."""
        running = next(node for node in self.nodes if node.is_running)
        running.create_topic(name, partitions, replication_factor=NODES, timeout=timeout)

    # -- who leads what ----------------------------------------------------------------------------

    def group_coordinator(self, group: str, *, timeout: float = 30.0) -> int:
        """The node id of the consumer group's coordinator."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(KafkaException):
                # A long request timeout: librdkafka 2.16 can abort (an assertion in
                # rd_kafka_enq_once) when this request times out while no coordinator can be found.
                description = self.admin().describe_consumer_groups([group], request_timeout=30)[group].result()
                return int(description.coordinator.id)
            self._admin = None  # the next try with a fresh client: this one may hold on to a dead coordinator
            if time.monotonic() > deadline:
                raise TimeoutError(f"no coordinator for group {group}")
            time.sleep(0.2)

    def transaction_coordinator(self, transactional_id: str) -> int:
        """The node id leading the transaction state partition of ``transactional_id``. The Python
        AdminClient has no describe_transactions, so this is computed as the broker does:
        Utils.abs(transactionalId.hashCode()) % transaction.state.log.num.partitions."""
        partition = abs_java(java_hash(transactional_id)) % TRANSACTION_STATE_PARTITIONS
        return self.partition_leaders("__transaction_state")[partition]

    def partition_leaders(self, topic: str) -> dict[int, int]:
        """Partition -> leading node id (-1 while it has none)."""
        metadata = self.admin().list_topics(topic, timeout=10).topics[topic]
        return {p: info.leader for p, info in metadata.partitions.items()}

    def wait_for_leaders(self, topic: str, *, timeout: float = 60.0) -> None:
        """Until every partition of ``topic`` has a leader among the running nodes."""
        deadline = time.monotonic() + timeout
        running = {i for i, node in enumerate(self.nodes, start=1) if node.is_running}
        while True:
            with contextlib.suppress(KafkaException):
                if all(leader in running for leader in self.partition_leaders(topic).values()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} has partitions without a running leader")
            time.sleep(0.2)


    def wait_until_replicated(self, *, timeout: float = 120.0) -> None:
        """Until every partition of every topic, internal ones included, has all three replicas in
        sync: what an operator waits for (no under-replicated partitions) before the next restart."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(KafkaException):
                topics = self.admin().list_topics(timeout=10).topics.values()
                if all(len(p.isrs) == NODES for t in topics for p in t.partitions.values()):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("partitions still under-replicated")
            time.sleep(0.5)


def java_hash(text: str) -> int:
    """Java's String.hashCode: 31-based over UTF-16 code units, in 32-bit signed arithmetic."""
    value = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        value = (31 * value + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def abs_java(value: int) -> int:
    """Kafka's Utils.abs: Math.abs, except that Integer.MIN_VALUE gives 0."""
    return 0 if value == -(1 << 31) else abs(value)
