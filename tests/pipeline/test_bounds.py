"""Bounded memory and bounded stalls: big objects cannot take more than the byte budget, a record
that trickles or hangs fails alone while the rest of its partition flows, and shutdown never waits
on a stuck thread past the grace period."""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from harness.faulty_proxy import FaultyS3Proxy
from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY, requests_for
from worker.config import Settings
from worker.engine import Embedder, PreparedImage

MiB = 1024 * 1024
# These tests wrap the embedder's prepare() in this process and measure this process's memory: the
# preprocessing must run on threads here (decoder processes have their own tests).
ON_THREADS = FAST_TINY | {"preprocess_in": "threads"}



class SlowPrepare:
    """The real embedder whose preprocessing takes `delay` seconds, or blocks on `gate` for `stuck` bytes."""

    def __init__(self, inner: Embedder, *, delay: float = 0.0, stuck: bytes | None = None) -> None:
        self._inner = inner
        self._delay = delay
        self._stuck = stuck
        self.gate = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def prepare(self, data: bytes) -> PreparedImage:
        time.sleep(self._delay)
        if data == self._stuck:
            self.gate.wait()
        return self._inner.prepare(data)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold up to 32 MB after freeing a big block, and then serves 30 MB
    buffers from arenas it never gives back: RSS would measure the allocator, not the worker. A fixed
    threshold (what MALLOC_MMAP_THRESHOLD_ does; the Dockerfile sets it) keeps big buffers in mmap."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD


class PeakRss:
    def __init__(self) -> None:
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def separate_s3(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """moto in a process of its own, so that the memory it spends serving objects is not the worker's."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield endpoint, client
    finally:
        client.close()
        server.kill()
        server.wait()


def test_big_objects_never_hold_more_than_the_byte_budget(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    separate_s3: tuple[str, Any],
    make_settings: Callable[..., Settings],
    embedder: Embedder,
) -> None:
    endpoint, client = separate_s3
    client.create_bucket(Bucket="big")
    keys = [f"big-{i}.bin" for i in range(12)]  # 30 MB each and no image: each is dead-lettered in the end
    for i, key in enumerate(keys):
        client.put_object(Bucket="big", Key=key, Body=bytes([i]) * (30 * MiB))
    budget = 100 * MiB
    settings = make_settings(
        "big", input_partitions=1, model=ON_THREADS,
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"endpoint_url": endpoint, "max_object_bytes": 32 * MiB, "fetch_workers": 8},
        pipeline={"max_in_flight_bytes": budget},
    )
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    produce_requests(bootstrap, kafka.input_topic, requests_for("big", keys, len(keys)))
    fixed_mmap_threshold()
    baseline = rss_bytes()
    with PeakRss() as rss, InProcessWorker(settings, embedder=SlowPrepare(embedder, delay=0.5)) as worker:
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=120)
        worker.stop()

    assert len(read_all(bootstrap, kafka.dead_letter_topic)) == len(keys)
    # Without the budget all twelve objects (360 MB) would be fetched while preprocessing lags behind.
    overhead = 96 * MiB  # the worker's own start, curl's receive buffers, BytesIO's overallocation, allocator slack
    assert rss.peak - baseline < budget + overhead, f"peak grew by {(rss.peak - baseline) / MiB:.0f} MiB"


def test_a_trickling_object_times_out_alone_and_the_partition_flows(
    kafka_broker: KafkaBroker,
    photo_bucket: tuple[str, list[str]],
    s3_client: Any,
    proxy: FaultyS3Proxy,
    aws_credentials: Credentials,
    make_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    bucket, keys = photo_bucket
    s3_client.put_object(Bucket=bucket, Key="slow.jpg", Body=small_photos[0][1])
    proxy.trickle("slow.jpg")
    settings = make_settings(
        bucket, input_partitions=1, model=ON_THREADS,
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"endpoint_url": proxy.endpoint_url, "fetch_workers": 4},
        pipeline={"record_timeout_seconds": 3},
    )
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    requests = requests_for(bucket, ["slow.jpg", *keys], 40)
    produce_requests(bootstrap, kafka.input_topic, requests)
    with InProcessWorker(settings, embedder=embedder) as worker:
        committed = wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        worker.stop()

    slow_ids = {r.id for r in requests if r.uri.key == "slow.jpg"}
    letters = read_all(bootstrap, kafka.dead_letter_topic)
    assert {m.key().decode() for m in letters} == slow_ids  # type: ignore[union-attr]
    assert {dict(m.headers() or [])["__connect.errors.exception.class.name"] for m in letters} == {b"RecordTimeout"}
    outputs = Counter(m.key().decode() for m in read_all(bootstrap, kafka.output_topic))  # type: ignore[union-attr]
    assert set(outputs) == {r.id for r in requests} - slow_ids
    assert sum(committed.values()) == len(requests)


def test_a_stuck_preprocess_fails_its_record_and_shutdown_does_not_wait_for_it(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    s3_client: Any,
    s3_bucket: str,
    make_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    stuck, good = small_photos[0][1], small_photos[1][1]
    s3_client.put_object(Bucket=s3_bucket, Key="stuck.jpg", Body=stuck)
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=good)
    settings = make_settings(
        s3_bucket, input_partitions=1, model=ON_THREADS,
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
        pipeline={"record_timeout_seconds": 3, "shutdown_grace_seconds": 1, "liveness_stall_seconds": 1},
    )
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    keys = ["good.jpg"] * 3 + ["stuck.jpg"] + ["good.jpg"] * 3 + ["stuck.jpg"]
    produce_requests(bootstrap, kafka.input_topic, requests_for(s3_bucket, keys[:-1], len(keys) - 1))
    device = SlowPrepare(embedder, stuck=stuck)
    worker = InProcessWorker(settings, embedder=device).start()
    try:
        committed = wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        assert sum(committed.values()) == len(keys) - 1, "the stuck record failed; the rest flowed"
        # Now a record that sticks while the worker runs: the watermark stalls, and /livez would say so;
        # and a stop within its deadline waits for the stuck thread only until the grace period ends.
        produce_requests(bootstrap, kafka.input_topic, requests_for(s3_bucket, ["stuck.jpg"], 1))
        time.sleep(1.5)
        assert worker.runtime.stalled_seconds() >= 1, "records in flight and nothing finished"
        started = time.monotonic()
        worker.stop(timeout=30)
        # The grace period (1 s) and the consumer's close; the stuck thread returns only when the test lets it.
        assert time.monotonic() - started < 4, "shutdown waited on the stuck thread"
    finally:
        device.gate.set()

    letters = read_all(bootstrap, kafka.dead_letter_topic)
    assert [dict(m.headers() or [])["__connect.errors.stage"] for m in letters] == [b"preprocess"]
