"""Exactly-once through a broker that stops answering in the middle of commits, for longer than the
worker's transactional calls wait: one worker rides it out, and nothing is lost or doubled.

Why: a broker that hangs with its connections open (a long GC pause, a saturated disk, a network
path dropping packets) is not a broker that went away. Nothing resets; the worker's librdkafka
calls simply run out of time while the broker may still act on what it was sent: a
commit_transaction that timed out on the client can complete on the broker once the stall ends.
The worker must neither give up (a pod restart for a hiccup) nor retry the commit's steps out of
order (the transaction is then abandoned or, worse, doubled). Here every client connection goes
through a TCP proxy (``proxied_kafka_broker``) that freezes all traffic, twice while outputs are
flowing, for longer than a transactional call waits (kafka.transaction_call_seconds: 3 s here; the
default 10 s runs the same code and took 16 s more); the worker commits on every loop turn that
finished something, so each stall catches a commit in flight. The checks and the topics go through
the broker's direct listener, which the stalls do not touch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.kafka_io import committed_and_end_offsets, produce_requests, read_all, written_count
from harness.pytest_plugin import ProxiedKafka
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import ids_of, requests_for
from worker.config import Settings

pytestmark = pytest.mark.slow(minutes=1.2)

N_RECORDS = 2000
CALL_SECONDS = 3.0  # kafka.transaction_call_seconds: a call past twice this counts as wedged
STALL_SECONDS = 4.0  # longer than a call waits, shorter than wedged
# Outputs written (markers included) when each stall starts. Two stalls, not three: the third
# caught nothing the second does not, and took 12 s of make test's 12-minute budget.
STALL_AT = (400, 1100)


def assert_running(worker: WorkerProcess, when: str) -> None:
    """The worker must never need a restart: an exit is a failure at once."""
    assert worker.process is not None
    code = worker.process.poll()
    assert code is None, f"the worker exited with {code} {when}\n{worker.log_tail()}"


def wait_for(condition: Callable[[], bool], *, what: str, worker: WorkerProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert_running(worker, f"while waiting for {what}")
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s\n{worker.log_tail()}"
        time.sleep(0.1)


def test_one_exactly_once_worker_rides_out_broker_stalls_longer_than_its_commit_timeout(
    proxied_kafka_broker: ProxiedKafka,
    s3_server: S3Server,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    kafka = proxied_kafka_broker
    direct = kafka.direct_bootstrap_servers
    bucket, keys = photo_bucket
    settings = make_settings(
        bucket,
        bootstrap=kafka.bootstrap_servers,
        kafka={"group_instance_id": "worker-0", "transaction_call_seconds": CALL_SECONDS},
        pipeline={"delivery": "exactly-once", "max_batch_wait_ms": 20},
    )
    topics = settings.kafka
    for topic, partitions in ((topics.input_topic, 3), (topics.output_topic, 2), (topics.dead_letter_topic, 1)):
        kafka.create_topic(topic, partitions)
    requests = requests_for(bucket, keys, N_RECORDS)
    produce_requests(direct, topics.input_topic, requests)

    def committed_inputs() -> int:
        committed, _ends = committed_and_end_offsets(direct, topics.group_id, topics.input_topic)
        return sum(max(offset, 0) for offset in committed.values())  # -1001: nothing committed yet

    def outputs_written(at_least: int) -> Callable[[], bool]:
        return lambda: written_count(direct, topics.output_topic) >= at_least

    worker = WorkerProcess(settings_env(settings) | s3_server.env(), log_path=tmp_path / "worker.log").start()
    try:
        for number, at in enumerate(STALL_AT, start=1):
            wait_for(outputs_written(at), what=f"{at} outputs before stall {number}", worker=worker, timeout=120)
            assert committed_inputs() < N_RECORDS, "the stall starts mid-stream, with commits to come"
            kafka.proxy.stall(STALL_SECONDS)
            time.sleep(STALL_SECONDS)
            assert_running(worker, f"during stall {number}")
        wait_for(lambda: committed_inputs() == N_RECORDS, what="every input committed", worker=worker, timeout=120)
        code = worker.terminate(timeout=60)
        assert code == 0, f"a clean stop after the stalls, not {code}\n{worker.log_tail()}"
    finally:
        worker.close()

    seen = ids_of(read_all(direct, topics.output_topic))
    missing = {r.id for r in requests} - set(seen)
    duplicates = sum(seen.values()) - len(seen)
    print(f"{len(STALL_AT)} stalls of {STALL_SECONDS:.0f} s: {len(missing)} missing, {duplicates} duplicates")
    assert not missing, f"{len(missing)} ids missing, e.g. {sorted(missing)[:5]}"
    assert duplicates == 0, "a read_committed reader sees each input exactly once"
    assert read_all(direct, topics.dead_letter_topic) == []
