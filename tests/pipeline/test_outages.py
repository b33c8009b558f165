"""Outages are not bad records: S3 down for a long while dead-letters nothing and loses nothing, and a
record parked by a stage is retried into that same stage; a device that fails every batch stops the
worker without a single dead letter or commit."""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from harness.faulty_proxy import FaultyS3Proxy
from harness.kafka_broker import KafkaBroker
from harness.kafka_io import committed_and_end_offsets, produce_requests, read_all, wait_until_committed, written_count
from harness.models import tiny_model_settings
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY, Sink, requests_for
from worker.config import Settings
from worker.engine import Embedder, PreparedImage
from worker.errors import DeviceFailed, SourceOutage
from worker.formats.positions import KafkaPosition
from worker.images.stages import ThreadStage
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.deadletter import DeadLetters
from worker.stream.failures import FailureRouter
from worker.stream.outage import OutageGate
from worker.stream.produce import AckedEmitter
from worker.stream.stop import Stop

# Many times every record's own retry budget (3 attempts, under 0.2 s) and every round of the outage
# backoff (0.5 s doubling to its 4 s cap, and one at the cap): a longer outage only runs more rounds of
# the same code. It was 20 s, ten of them spent repeating the capped round.
OUTAGE_SECONDS = 10



def test_an_outage_parked_by_the_fetch_stage_is_retried_into_that_same_stage_object() -> None:
    now = [0.0]
    metrics, stop = Metrics(), Stop()
    outages = OutageGate(initial_wait=1.0, max_wait=1.0, metrics=metrics, clock=lambda: now[0])
    letters = DeadLetters(emitter=AckedEmitter(outbox=None, tracker=None),  # type: ignore[arg-type]
                              topic="dlq", policy="dead-letter", max_consecutive=3, max_bytes=1_000_000,
                              worker_id="w", metrics=metrics, stop=stop)
    router = FailureRouter(dead_letters=letters, outages=outages, stop=stop)
    fetched: list[Work] = []

    def fetch_once_s3_is_back(work: Work) -> None:
        fetched.append(work)
        if len(fetched) == 1:
            raise SourceOutage("S3 down")

    failures = router.sink()
    done = Sink()
    fetch = ThreadStage(name="fetch", workers=1, step=fetch_once_s3_is_back, next_step=done, failures=failures,
                        timeout=30)
    failures.resume_at(fetch)
    work = Work(position=KafkaPosition("t", 0, 0))
    try:
        fetch.submit(work)
        deadline = time.monotonic() + 10
        while not outages.active:
            assert time.monotonic() < deadline, "the outage was never parked"
            fetch.poll()
            time.sleep(0.01)
        outages.poll()
        assert len(fetched) == 1, "retried before the wait was over"
        now[0] = 1.0
        outages.poll()
        while not done.done:
            assert time.monotonic() < deadline, "the parked record never came back through the fetch stage"
            fetch.poll()
            time.sleep(0.01)
    finally:
        fetch.close(time.monotonic() + 5)

    assert done.done == [work] and fetched == [work, work], "fetched twice, by the stage that parked it"
    assert stop.reason is None and done.failed == []


def test_an_s3_outage_far_past_the_retry_budget_dead_letters_nothing_and_loses_nothing(
    kafka_broker: KafkaBroker,
    photo_bucket: tuple[str, list[str]],
    proxy: FaultyS3Proxy,
    aws_credentials: Credentials,
    make_settings: Callable[..., Settings],
    embedder: Embedder,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(
        bucket, input_partitions=3, model=FAST_TINY,
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"endpoint_url": proxy.endpoint_url, "max_attempts": 3, "backoff_initial_seconds": 0.01,
            "backoff_max_seconds": 0.05, "timeout_seconds": 5},
        pipeline={"outage_retry_initial_seconds": 0.5, "outage_retry_max_seconds": 4},
    )
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    requests = requests_for(bucket, keys, 400)
    with InProcessWorker(settings, embedder=embedder) as worker:
        produce_requests(bootstrap, kafka.input_topic, requests[:100])
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        proxy.outage(OUTAGE_SECONDS)
        produce_requests(bootstrap, kafka.input_topic, requests[100:])
        time.sleep(5)
        assert worker.counter("clip_worker_outage", cause="s3") == 1, "the outage is declared"
        assert written_count(bootstrap, kafka.dead_letter_topic) == 0
        committed = wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=OUTAGE_SECONDS + 60)
        assert worker.error is None
        worker.stop()

    assert sum(committed.values()) == len(requests)
    assert read_all(bootstrap, kafka.dead_letter_topic) == [], "an outage is not the records' fault"
    outputs = Counter(m.key().decode() for m in read_all(bootstrap, kafka.output_topic))  # type: ignore[union-attr]
    assert set(outputs) == {r.id for r in requests}, "every record is embedded after the outage"
    assert worker.counter("clip_worker_outage", cause="s3") == 0, "the outage is over"
    assert worker.counter("clip_worker_outage_retries_total") > 0


class BrokenDevice:
    """The real embedder on a device that fails every kernel launch, as after an Xid error."""

    def __init__(self, inner: Embedder) -> None:
        self._inner = inner
        inner._embed_batch = self._fail  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _fail(images: Sequence[PreparedImage]) -> list[Any]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_device_that_fails_every_batch_stops_the_worker_without_dead_letters_or_commits(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(bucket, input_partitions=2, model=FAST_TINY)
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    produce_requests(bootstrap, kafka.input_topic, requests_for(bucket, keys, 40))
    device = BrokenDevice(Embedder.load(tiny_model_settings(tiny_checkpoint, **FAST_TINY)))
    worker = InProcessWorker(settings, embedder=device).start()
    deadline = time.monotonic() + 60
    while worker.error is None:
        assert time.monotonic() < deadline, "the worker kept going on a broken device"
        time.sleep(0.1)
    with pytest.raises(DeviceFailed, match="known-good image fails too"):
        worker.stop()

    assert read_all(bootstrap, kafka.dead_letter_topic) == [], "a broken device is not the records' fault"
    assert read_all(bootstrap, kafka.output_topic) == []
    committed, _ends = committed_and_end_offsets(bootstrap, kafka.group_id, kafka.input_topic)
    assert all(offset < 0 for offset in committed.values()), f"nothing committed: {committed}"


def test_an_image_that_breaks_the_kernel_alone_is_its_own_failure(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    s3_client: Any,
    s3_bucket: str,
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
    small_photos: list[tuple[str, bytes]],
) -> None:
    """Told apart by the known-good probe: the batch splits down to the one image, the probe passes."""
    inner = Embedder.load(tiny_model_settings(tiny_checkpoint, **FAST_TINY))
    real = inner._embed_batch

    def embed_batch(images: Sequence[PreparedImage]) -> list[Any]:
        if any(image.format == "BMP" for image in images):  # the poison: the one BMP
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(images)

    inner._embed_batch = embed_batch  # type: ignore[method-assign]
    bmp = io.BytesIO()
    Image.open(io.BytesIO(small_photos[1][1])).save(bmp, "BMP")
    s3_client.put_object(Bucket=s3_bucket, Key="poison.jpg", Body=bmp.getvalue())
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=small_photos[0][1])
    settings = make_settings(s3_bucket, input_partitions=1, model=FAST_TINY,
                             kafka={"consumer_config": {"auto.commit.interval.ms": "200"}})
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    keys = ["good.jpg"] * 5 + ["poison.jpg"] + ["good.jpg"] * 5
    produce_requests(bootstrap, kafka.input_topic, requests_for(s3_bucket, keys, len(keys)))
    with InProcessWorker(settings, embedder=inner) as worker:
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        worker.stop()

    letters = read_all(bootstrap, kafka.dead_letter_topic)
    assert [m.key() for m in letters] == [b"img-00005"]
    assert dict(letters[0].headers() or [])["__connect.errors.exception.class.name"] == b"EmbedError"
    assert written_count(bootstrap, kafka.output_topic) == len(keys) - 1
