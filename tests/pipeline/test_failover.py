"""Broker failovers on a replicated cluster (3 nodes, RF 3, min.insync.replicas 2) cost the worker
nothing, in either delivery mode: records flow in throughout (10 a second to each worker; the
benchmark, bench/failover_bench.py, feeds 40 and measures the latencies), and
none is missing, none is doubled to a read_committed reader (exactly-once), none is dead-lettered,
and no worker process exits.

Each test runs one worker per delivery mode side by side, on topics and groups of their own, through
the same failover on one cluster shared by the module (so the failover, and the model load, happens
once for both modes):
- each node SIGKILLed for 15 s in turn, the group coordinators and the transaction coordinator
  first, then a rolling restart of all three (SIGTERM, a controlled shutdown, and start), each once
  no partition is under-replicated;
- two nodes SIGKILLed for 60 s: no controller quorum and no in-sync writes, an outage the workers
  wait out, resuming on their own when the nodes return.

A wedged transactional call or a fenced producer is allowed to happen here: the worker replaces its
Kafka clients in the process, and each replacement is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.failover import Feeder, Watcher, failover_settings, latencies, transactional_id
from harness.kafka_cluster import KafkaCluster
from harness.kafka_io import read_all
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of
from worker.config import Settings

# Six node restarts, each a JVM start that a loaded machine slows down: more than the suite's 300 s.
pytestmark = [pytest.mark.slow(minutes=4.5), pytest.mark.timeout(600)]

DOWN_SECONDS = 15.0
LONG_DOWN_SECONDS = 60.0
DELIVERIES = ("at-least-once", "exactly-once")
RATE = 10.0  # records a second to each worker: enough to flow throughout, little CPU beside the suite


@dataclass(frozen=True)
class Flow:
    """One worker and the records flowing through it."""

    settings: Settings
    worker: WorkerProcess
    feeder: Feeder
    watcher: Watcher

    @property
    def delivery(self) -> str:
        return self.settings.pipeline.delivery

    def check_alive(self, when: str) -> None:
        assert self.worker.process is not None
        code = self.worker.process.poll()
        assert code is None, f"the {self.delivery} worker exited with {code} {when}\n{self.worker.log_tail()}"


@contextmanager
def flows_for_each_delivery(cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]],
                            checkpoint: Path, tmp_path: Path) -> Iterator[list[Flow]]:
    """A worker per delivery mode, each fed steadily; yields once each has output 50 records."""
    bucket, keys = photo_bucket
    flows: list[Flow] = []
    try:
        for delivery in DELIVERIES:
            settings = failover_settings(cluster, s3_server, checkpoint, prefix="failover", bucket=bucket,
                                         delivery=delivery, journal_dir=tmp_path / delivery / "journal")
            kafka = settings.kafka
            worker = WorkerProcess(settings_env(settings) | s3_server.env(), log_path=tmp_path / f"{delivery}.log")
            feeder = Feeder(cluster.bootstrap_servers, kafka.input_topic, bucket=bucket, keys=keys, rate=RATE)
            flows.append(Flow(settings, worker.start(), feeder.start(),
                              Watcher(cluster.bootstrap_servers, kafka.output_topic).start()))
        deadline = time.monotonic() + 120
        for flow in flows:
            while len(flow.watcher.visible_at) < 50:
                flow.check_alive("before the failover")
                assert time.monotonic() < deadline, f"no outputs before the failover\n{flow.worker.log_tail()}"
                time.sleep(0.2)
        yield flows
    finally:
        for flow in flows:
            flow.watcher.stop()
            flow.worker.close()


def run_through(cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]], checkpoint: Path,
                tmp_path: Path, failover: Callable[[list[Flow]], None]) -> list[Flow]:
    """Both workers through `failover(flows)` with records flowing; returns once every record
    produced is visible to each (or fails), checking that none exited or dead-lettered."""
    cluster.start()  # a test that failed may have left a node down
    cluster.wait_until_replicated()
    with flows_for_each_delivery(cluster, s3_server, photo_bucket, checkpoint, tmp_path) as flows:
        note("both workers flowing")
        failover(flows)
        note("failover over")
        time.sleep(3)  # records keep coming after the last node is back
        produced = [flow.feeder.stop() for flow in flows]
        for flow, ids in zip(flows, produced, strict=True):
            missing = flow.watcher.wait_for(ids, timeout=180)
            flow.check_alive("after the failover")
            assert not missing, (f"{flow.delivery}: {len(missing)} ids missing, e.g. {sorted(missing)[:5]}\n"
                                 f"{flow.worker.log_tail()}")
        for flow in flows:
            assert flow.worker.terminate(timeout=60) == 0, flow.worker.log_tail()
    for flow in flows:
        assert read_all(cluster.bootstrap_servers, flow.settings.kafka.dead_letter_topic) == [], \
            f"{flow.delivery}: nothing is dead-lettered"
    return flows


def note(what: str) -> None:
    """A timestamped step, shown with a failure (to line up with the workers' and nodes' logs)."""
    print(f"{time.strftime('%H:%M:%S')} {what}", flush=True)


def check_outputs(cluster: KafkaCluster, flows: list[Flow], what: str) -> None:
    """Every id reaches a fresh read_committed reader, exactly once in exactly-once; prints what the
    failover cost each mode."""
    for flow in flows:
        seen = ids_of(read_all(cluster.bootstrap_servers, flow.settings.kafka.output_topic))
        assert set(seen) >= set(flow.feeder.produced_at), f"{flow.delivery}: no id is missing"
        doubled = sum(seen.values()) - len(seen)
        replaced = flow.worker.log_path.read_text(errors="replace").count("replacing the Kafka clients")
        figures = ", ".join(f"{k} {v:.1f} s" for k, v in latencies(flow.feeder, flow.watcher).items())
        print(f"{what}, {flow.delivery}: {len(flow.feeder.produced_at)} records, {doubled} duplicates, "
              f"{replaced} client replacements; produce-to-visible {figures}")
        if flow.delivery == "exactly-once":
            assert doubled == 0, "a read_committed reader sees each input once"


def coordinators(cluster: KafkaCluster, flows: list[Flow]) -> list[int]:
    """The nodes coordinating the workers' groups and, exactly-once, transactions."""
    nodes = []
    for flow in flows:
        kafka = flow.settings.kafka
        nodes.append(cluster.group_coordinator(kafka.group_id))
        if flow.delivery == "exactly-once":
            nodes.append(cluster.transaction_coordinator(transactional_id(flow.settings)))
    return nodes


def check_alive(flows: list[Flow], when: str) -> None:
    for flow in flows:
        flow.check_alive(when)


def test_each_broker_killed_in_turn_then_a_rolling_restart_costs_either_delivery_nothing(
    kafka_cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]], tiny_checkpoint: Path,
    tmp_path: Path, aws_credentials: Any,
) -> None:
    def failover(flows: list[Flow]) -> None:
        for node_id in dict.fromkeys([*coordinators(kafka_cluster, flows), 1, 2, 3]):  # coordinators first
            kafka_cluster.node(node_id).kill()
            note(f"node {node_id} killed")
            time.sleep(DOWN_SECONDS)
            check_alive(flows, f"with node {node_id} down")
            kafka_cluster.node(node_id).start()
            note(f"node {node_id} serving")
            kafka_cluster.wait_until_replicated()  # as an operator would before failing the next one
            note("replicated")
        for node_id, node in enumerate(kafka_cluster.nodes, start=1):  # a rolling restart
            node.stop()
            note(f"node {node_id} stopped")
            node.start()
            kafka_cluster.wait_until_replicated()
            note("serving and replicated")
            check_alive(flows, "during the rolling restart")

    flows = run_through(kafka_cluster, s3_server, photo_bucket, tiny_checkpoint, tmp_path, failover)
    check_outputs(kafka_cluster, flows, "kill each for 15 s, then roll")


def test_two_brokers_down_for_a_minute_costs_either_delivery_nothing(
    kafka_cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]], tiny_checkpoint: Path,
    tmp_path: Path, aws_credentials: Any,
) -> None:
    def failover(flows: list[Flow]) -> None:
        down = list(dict.fromkeys([*coordinators(kafka_cluster, flows), 1, 2]))[:2]
        for node_id in down:
            kafka_cluster.node(node_id).kill()
        note(f"nodes {down} killed")
        time.sleep(LONG_DOWN_SECONDS)
        check_alive(flows, f"with nodes {down} down")
        for node_id in down:
            kafka_cluster.node(node_id).start(wait=False)
        for node_id in down:
            kafka_cluster.node(node_id).wait_until_serving()
        note(f"nodes {down} serving")
        kafka_cluster.wait_until_replicated()
        note("replicated")

    flows = run_through(kafka_cluster, s3_server, photo_bucket, tiny_checkpoint, tmp_path, failover)
    check_outputs(kafka_cluster, flows, "two nodes down for 60 s")
