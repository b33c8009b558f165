"""Nothing is lost when the worker process dies: SIGKILL at random points, and SIGTERM under load.

These run `python -m worker` as its own process, as a pod does, against the real broker and S3.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import (
    committed_and_end_offsets,
    produce_requests,
    read_all,
    wait_until_committed,
    written_count,
)
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of, requests_for
from worker.config import Settings
from worker.formats.encoding import EmbeddingEncoder

pytestmark = pytest.mark.slow(minutes=2.5)

N_KILL = 1500  # above three kill points of up to 450 fresh outputs each


def wait_for_outputs(
    broker: KafkaBroker, topic: str, at_least: int, worker: WorkerProcess, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while written_count(broker.bootstrap_servers, topic) < at_least:
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
        assert time.monotonic() < deadline, f"fewer than {at_least} outputs in time\n{worker.log_tail()}"
        time.sleep(0.1)


def test_sigkill_at_three_random_points_loses_no_record_in_either_delivery_mode(
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """One worker per delivery mode, side by side, each killed three times at random points."""
    bucket, keys = photo_bucket
    requests = requests_for(bucket, keys, N_KILL)
    envs: dict[str, tuple[Settings, dict[str, str]]] = {}
    for delivery in ("at-least-once", "exactly-once"):
        settings = make_settings(
            bucket,
            input_partitions=4,
            kafka={"group_instance_id": "worker-0", "consumer_config": {"session.timeout.ms": "6000"}},
            pipeline={"delivery": delivery, "max_batch_wait_ms": 20},
            model={"decode_journal_dir": tmp_path / delivery},  # each pod has its own
        )
        produce_requests(kafka_broker.bootstrap_servers, settings.kafka.input_topic, requests)
        envs[delivery] = settings, settings_env(settings) | s3_server.env()
    rng = random.Random(7)
    kill_points: dict[str, list[int]] = {delivery: [] for delivery in envs}
    for attempt in range(3):  # each life makes some fresh progress, a random amount, then dies
        lives = {delivery: WorkerProcess(env, log_path=tmp_path / f"{delivery}-{attempt}.log").start()
                 for delivery, (_, env) in envs.items()}
        try:
            for delivery in lives:
                written = written_count(kafka_broker.bootstrap_servers, envs[delivery][0].kafka.output_topic)
                kill_points[delivery].append(written + rng.randint(100, 450))
            deadline, killed = time.monotonic() + 120, set[str]()
            while len(killed) < len(lives):
                for delivery, worker in lives.items():
                    if delivery in killed:
                        continue
                    assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
                    output_topic = envs[delivery][0].kafka.output_topic
                    if written_count(kafka_broker.bootstrap_servers, output_topic) >= kill_points[delivery][-1]:
                        worker.kill()
                        killed.add(delivery)
                assert time.monotonic() < deadline, f"fewer outputs than the kill points {kill_points} in time"
                time.sleep(0.1)
        finally:
            for worker in lives.values():
                worker.close()
    finals = {delivery: WorkerProcess(env, log_path=tmp_path / f"{delivery}-final.log").start()
              for delivery, (_, env) in envs.items()}
    try:
        for delivery, worker in finals.items():
            kafka = envs[delivery][0].kafka
            wait_until_committed(kafka_broker.bootstrap_servers, kafka.group_id, kafka.input_topic)
            assert worker.terminate(timeout=60) == 0, worker.log_tail()
    finally:
        for worker in finals.values():
            worker.close()

    for delivery, (settings, _) in envs.items():
        outputs = read_all(kafka_broker.bootstrap_servers, settings.kafka.output_topic)
        seen = ids_of(outputs)
        assert set(seen) == {r.id for r in requests}, f"{delivery}: every id has an output"
        duplicates = sum(count - 1 for count in seen.values())
        print(f"{delivery}: killed after {kill_points[delivery]} outputs; {len(outputs)} outputs, "
              f"{duplicates} duplicates")
        if delivery == "exactly-once":
            assert duplicates == 0, "a read_committed reader sees each input exactly once"
        assert read_all(kafka_broker.bootstrap_servers, settings.kafka.dead_letter_topic) == []


def test_sigterm_under_load_drains_commits_and_exits_within_the_grace_period(
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    bucket, keys = photo_bucket
    grace = 10.0
    settings = make_settings(
        bucket, pipeline={"shutdown_grace_seconds": grace, "max_in_flight": 200, "max_batch_wait_ms": 20}
    )
    total = 1500  # it stops after 300 with at most 200 in flight: mid-stream, with the successor's half to do
    requests = requests_for(bucket, keys, total)
    produce_requests(kafka_broker.bootstrap_servers, settings.kafka.input_topic, requests)
    env = settings_env(settings) | s3_server.env()

    worker = WorkerProcess(env, log_path=tmp_path / "worker.log").start()
    try:
        wait_for_outputs(kafka_broker, settings.kafka.output_topic, 300, worker)
        started = time.monotonic()
        assert worker.terminate(timeout=grace + 10) == 0, worker.log_tail()
        assert time.monotonic() - started < grace, "exits within the grace period"
    finally:
        worker.close()

    committed, ends = committed_and_end_offsets(
        kafka_broker.bootstrap_servers, settings.kafka.group_id, settings.kafka.input_topic
    )
    assert sum(committed.values()) < total, "it stopped mid-stream (else this test proves nothing)"
    decoder = EmbeddingEncoder(field_name=settings.model.output_field, model_name="", pretrained="", normalized=True)
    done: dict[int, set[int]] = {p: set() for p in ends}
    for message in read_all(kafka_broker.bootstrap_servers, settings.kafka.output_topic):
        record = decoder.decode(message.value())  # type: ignore[arg-type]
        done[record["input_partition"]].add(record["input_offset"])
    for partition, offsets in done.items():
        assert offsets == set(range(committed[partition])), (
            f"partition {partition}: committed {committed[partition]} must be exactly past every output, "
            "with no output beyond it (nothing in flight was left uncommitted)"
        )

    # A successor picks up at the commit: every id, and no duplicates after a clean stop.
    successor = WorkerProcess(env, log_path=tmp_path / "successor.log").start()
    try:
        wait_until_committed(kafka_broker.bootstrap_servers, settings.kafka.group_id, settings.kafka.input_topic)
        assert successor.terminate(timeout=30) == 0
    finally:
        successor.close()
    seen = ids_of(read_all(kafka_broker.bootstrap_servers, settings.kafka.output_topic))
    assert set(seen) == {r.id for r in requests}
    assert max(seen.values()) == 1, "a clean stop commits exactly what it produced"
