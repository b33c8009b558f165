"""Broker failovers on a replicated cluster (3 nodes, RF 3, min.insync.replicas 2) cost the worker
nothing: records flow in throughout (about 40 a second), and none is missing, none is doubled to a
read_committed reader (exactly-once), none is dead-lettered, and the worker process never exits.

What is failed over, on one cluster shared by the module:
- each node SIGKILLed in turn, the group coordinator first and then the transaction coordinator,
  then a rolling restart of all three (SIGTERM, a controlled shutdown, and start), each once no
  partition is under-replicated: one worker per delivery mode goes through all of it, so the model
  loads once per mode. Each node is down for 10 s, not the 15 s of bench/failover_bench.py: the
  harness's brokers give up a dead node after 3 s (broker.session.timeout.ms), so 10 s still sees
  every partition and coordinator move away and back;
- two nodes SIGKILLed for 60 s (no controller quorum, no in-sync writes): exactly-once only, the
  mode whose transactions have to outlive it; at-least-once meets the same outage with nothing to
  fence (it cuts 90 s from a suite that runs on two cores).

A wedged transactional call or a fenced producer is allowed to happen here (the worker replaces its
clients); each replacement is printed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.failover import Feeder, Watcher, latencies
from harness.kafka_cluster import KafkaCluster
from harness.kafka_io import read_all
from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of
from worker.config import Settings

DOWN_SECONDS = 10.0
LONG_DOWN_SECONDS = 60.0


def cluster_settings(cluster: KafkaCluster, bucket: str, checkpoint: Path, s3_server: S3Server, tmp_path: Path,
                     delivery: str) -> Settings:
    name = f"failover-{uuid.uuid4().hex[:8]}"
    for suffix, partitions in (("in", 3), ("out", 2), ("dlq", 1)):
        cluster.create_topic(f"{name}-{suffix}", partitions)
    return Settings(
        model=tiny_model_settings(checkpoint, decode_journal_dir=tmp_path / "journal"),
        kafka={"bootstrap_servers": cluster.bootstrap_servers, "group_id": name, "input_topic": f"{name}-in",
               "output_topic": f"{name}-out", "dead_letter_topic": f"{name}-dlq", "group_instance_id": "worker-0"},
        s3={"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "allowed_sources": (bucket,)},
        pipeline={"metrics_port": 0, "delivery": delivery},
    )


def run_through(
    cluster: KafkaCluster, settings: Settings, s3_server: S3Server, photo_bucket: tuple[str, list[str]],
    tmp_path: Path, failover: Callable[[Callable[[str], None]], None],
) -> tuple[Feeder, Watcher, WorkerProcess]:
    """A worker with records flowing in through `failover(check_alive)`; returns once every record
    produced is visible (or fails)."""
    bucket, keys = photo_bucket
    kafka = settings.kafka
    worker = WorkerProcess(settings_env(settings) | s3_server.env(), log_path=tmp_path / "worker.log").start()
    feeder = Feeder(cluster.bootstrap_servers, kafka.input_topic, bucket=bucket, keys=keys).start()
    watcher = Watcher(cluster.bootstrap_servers, kafka.output_topic).start()

    def alive(when: str) -> None:
        assert worker.process is not None
        code = worker.process.poll()
        assert code is None, f"the worker exited with {code} {when}\n{worker.log_tail()}"

    try:
        deadline = time.monotonic() + 120
        while len(watcher.visible_at) < 100:
            alive("before the failover")
            assert time.monotonic() < deadline, f"no outputs before the failover\n{worker.log_tail()}"
            time.sleep(0.2)
        failover(alive)
        time.sleep(3)  # records keep coming after the last node is back
        produced = feeder.stop()
        missing = watcher.wait_for(produced, timeout=180)
        alive("after the failover")
        assert not missing, f"{len(missing)} ids missing, e.g. {sorted(missing)[:5]}\n{worker.log_tail()}"
        assert worker.terminate(timeout=60) == 0, worker.log_tail()
    finally:
        watcher.stop()
        worker.close()
    assert read_all(cluster.bootstrap_servers, kafka.dead_letter_topic) == [], "nothing is dead-lettered"
    return feeder, watcher, worker


def duplicates(cluster: KafkaCluster, settings: Settings, what: str, feeder: Feeder, watcher: Watcher,
               worker: WorkerProcess) -> int:
    """Records seen more than once by a fresh read_committed reader; prints what the failover cost."""
    seen = ids_of(read_all(cluster.bootstrap_servers, settings.kafka.output_topic))
    assert set(seen) >= set(feeder.produced_at), "no id is missing"
    doubled = sum(seen.values()) - len(seen)
    replaced = worker.log_path.read_text(errors="replace").count("replacing the Kafka clients")
    figures = ", ".join(f"{k} {v:.1f} s" for k, v in latencies(feeder, watcher).items())
    print(f"{what}: {len(feeder.produced_at)} records, {doubled} duplicates, {replaced} client "
          f"replacements; produce-to-visible {figures}")
    return doubled


def kill_each_then_roll(cluster: KafkaCluster, settings: Settings) -> Callable[[Callable[[str], None]], None]:
    def failover(alive: Callable[[str], None]) -> None:
        first = [cluster.group_coordinator(settings.kafka.group_id)]
        if settings.pipeline.delivery == "exactly-once":
            first.append(cluster.transaction_coordinator(f"{settings.kafka.group_id}-worker-0"))
        order = list(dict.fromkeys([*first, 1, 2, 3]))  # the coordinators first, each node once
        for node_id in order:
            cluster.node(node_id).kill()
            time.sleep(DOWN_SECONDS)
            alive(f"with node {node_id} down")
            cluster.node(node_id).start()
            cluster.wait_until_replicated()  # as an operator would before failing the next one
        for node in cluster.nodes:  # a rolling restart
            node.stop()
            node.start()
            cluster.wait_until_replicated()
            alive("during the rolling restart")

    return failover


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_each_broker_killed_in_turn_then_a_rolling_restart_costs_nothing(
    delivery: str, kafka_cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]],
    tiny_checkpoint: Path, tmp_path: Path, aws_credentials: Any,
) -> None:
    settings = cluster_settings(kafka_cluster, photo_bucket[0], tiny_checkpoint, s3_server, tmp_path, delivery)
    feeder, watcher, worker = run_through(kafka_cluster, settings, s3_server, photo_bucket, tmp_path,
                                          kill_each_then_roll(kafka_cluster, settings))
    doubled = duplicates(kafka_cluster, settings, f"kill each, then roll, {delivery}", feeder, watcher, worker)
    if delivery == "exactly-once":
        assert doubled == 0, "a read_committed reader sees each input once"


def test_two_brokers_down_for_a_minute_costs_nothing_exactly_once(
    kafka_cluster: KafkaCluster, s3_server: S3Server, photo_bucket: tuple[str, list[str]], tiny_checkpoint: Path,
    tmp_path: Path, aws_credentials: Any,
) -> None:
    settings = cluster_settings(kafka_cluster, photo_bucket[0], tiny_checkpoint, s3_server, tmp_path, "exactly-once")

    def failover(alive: Callable[[str], None]) -> None:
        down = list(dict.fromkeys([kafka_cluster.group_coordinator(settings.kafka.group_id), 1, 2]))[:2]
        for node_id in down:
            kafka_cluster.node(node_id).kill()
        time.sleep(LONG_DOWN_SECONDS)
        alive(f"with nodes {down} down")
        for node_id in down:
            kafka_cluster.node(node_id).start(wait=False)
        for node_id in down:
            kafka_cluster.node(node_id).wait_until_serving()
        kafka_cluster.wait_until_replicated()

    feeder, watcher, worker = run_through(kafka_cluster, settings, s3_server, photo_bucket, tmp_path, failover)
    doubled = duplicates(kafka_cluster, settings, "two nodes down for 60 s, exactly-once", feeder, watcher, worker)
    assert doubled == 0, "a read_committed reader sees each input once"
