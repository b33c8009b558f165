"""Time-or-size batching and backpressure on the real broker and S3, with the tiny model on the CPU.

- a trickle is not held back waiting for a full batch: each image waits about max_batch_wait_ms;
- under load, with the device the bottleneck, batches leave full;
- with a slow device the consumer pauses at max_in_flight, and everything still arrives exactly once.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Message, Producer

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.models import TINY_MODEL_NAME
from harness.workers import InProcessWorker
from tests.pipeline.conftest import SlowDevice, requests_for
from worker.config import Settings
from worker.engine import Embedder
from worker.formats.encoding import EmbeddingEncoder
from worker.formats.messages import encode_request_json

FIELD = "image_clip_emb_tiny_vit"

# tiny_checkpoint and photo_bucket (the photos at 160 px) come from tests/conftest.py; make_settings
# and SlowDevice (which records the batch sizes) from tests/pipeline/conftest.py.


def settings_for(
    make_settings: Callable[..., Settings], bucket: str, *, input_partitions: int, batch_size: int, **pipeline: Any
) -> Settings:
    """The tiny model in fast mode in batches of `batch_size`, fresh topics, offsets committed every 200 ms."""
    return make_settings(
        bucket,
        input_partitions=input_partitions,
        model={"preprocess_mode": "fast", "inference_batch_size": batch_size, "preprocess_workers": 2},
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"fetch_workers": 4},
        pipeline=pipeline,
    )


def decoder(checkpoint: Path) -> EmbeddingEncoder:
    return EmbeddingEncoder(field_name=FIELD, model_name=TINY_MODEL_NAME, pretrained=str(checkpoint), normalized=True)


def histogram(worker: InProcessWorker, name: str) -> tuple[float, float]:
    """(count, sum) of a histogram."""
    return worker.counter(f"{name}_count"), worker.counter(f"{name}_sum")


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- (a) a trickle ---------------------------------------------------------------------------------

WAIT_MS = 200
# Everything a lone image spends outside the batcher here: produce and fetch over localhost, an S3
# GET from moto, a 160 px decode, a one-image forward pass and the Avro encode. It measures 20-60 ms
# on a 2-core box; 1.5 s is slack for a loaded CI machine. Were the wait ignored (a lone image held
# for a full batch of 32), no output would appear until shutdown, far past this bound.
SLACK_MS = 1500


def test_a_trickle_waits_at_most_max_batch_wait_and_goes_in_batches_of_one(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
) -> None:
    bucket, keys = photo_bucket
    settings = settings_for(make_settings, bucket, input_partitions=1, batch_size=32, max_batch_wait_ms=WAIT_MS)
    input_topic, output_topic = settings.kafka.input_topic, settings.kafka.output_topic
    bootstrap = kafka_broker.bootstrap_servers
    embedder = Embedder.load(settings.model)
    warmup, *trickle = requests_for(bucket, keys, 6)
    produced_at: dict[str, int] = {}

    def delivered(err: Any, msg: Message) -> None:
        assert err is None and msg.timestamp()[0] == TIMESTAMP_CREATE_TIME
        produced_at[msg.key().decode()] = msg.timestamp()[1]

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    with InProcessWorker(settings, embedder=embedder, s3_client=s3_client) as worker:
        # One record first, so that joining the group and the first S3 connection are not measured.
        produce_requests(bootstrap, input_topic, [warmup])
        wait_for(lambda: worker.counter("clip_worker_records_embedded_total") == 1, timeout=30, what="warm-up")
        for request in trickle:
            producer.produce(input_topic, encode_request_json(request), request.id.encode(), on_delivery=delivered)
            assert producer.flush(10) == 0
            time.sleep(0.6)
        wait_until_committed(bootstrap, settings.kafka.group_id, input_topic, timeout=30)
        worker.stop()

    outputs = read_all(bootstrap, output_topic)
    assert Counter(m.key().decode() for m in outputs) == Counter(r.id for r in [warmup, *trickle])
    records = {m.key().decode(): decoder(tiny_checkpoint).decode(m.value()) for m in outputs}
    # embedded_at is an Avro timestamp-millis: fastavro reads it as an aware datetime.
    latencies = {r.id: round(records[r.id]["embedded_at"].timestamp() * 1000) - produced_at[r.id] for r in trickle}
    # The lone image waited out max_batch_wait (it never filled a batch), and not much longer.
    assert all(WAIT_MS - 2 <= latency < WAIT_MS + SLACK_MS for latency in latencies.values()), latencies
    # Each image went alone: six batches (the warm-up included) of one image each.
    assert histogram(worker, "clip_worker_batch_size") == (6, 6)
    assert worker.counter("clip_worker_batch_size_bucket", le="1.0") == 6


# -- (b) under load --------------------------------------------------------------------------------


# Device time added per batch. On a 2-core box fetch (moto runs in this process) and preprocessing
# deliver ~60-70 images/s while the real forward pass competes for the same cores; at +0.15 s per
# batch the device (32 per ~0.45 s) is no bottleneck and batches leave at 11-31. At +0.6 s (32 per
# ~0.85 s) it clearly is, on an idle box; at +1.0 s it still is while the rest of the suite runs beside
# it and fetch and preprocessing get a share of the cores only.
LOADED_DELAY = 1.0


def test_under_load_batches_leave_full(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
) -> None:
    n, batch = 320, 32
    bucket, keys = photo_bucket
    settings = settings_for(make_settings, bucket, input_partitions=2, batch_size=batch)
    input_topic, output_topic = settings.kafka.input_topic, settings.kafka.output_topic
    bootstrap = kafka_broker.bootstrap_servers
    requests = requests_for(bucket, keys, n)
    produce_requests(bootstrap, input_topic, requests)
    device = SlowDevice(Embedder.load(settings.model), delay=LOADED_DELAY)
    with InProcessWorker(settings, embedder=device, s3_client=s3_client) as worker:
        wait_until_committed(bootstrap, settings.kafka.group_id, input_topic, timeout=60)
        worker.stop()

    outputs = read_all(bootstrap, output_topic)
    assert Counter(m.key().decode() for m in outputs) == Counter(r.id for r in requests), "each exactly once"
    sizes = device.batch_sizes
    assert sum(sizes) == n and max(sizes) <= batch
    assert histogram(worker, "clip_worker_batch_size") == (len(sizes), n)
    for le in (1, 2, 4, 8, 16, 32):  # the histogram saw the batches the device saw
        assert worker.counter("clip_worker_batch_size_bucket", le=f"{le}.0") == sum(s <= le for s in sizes)
    # 10 full batches would carry all 320. At startup the idle device takes up to two partial batches
    # (each once its oldest image has waited 50 ms; together up to two batches' worth, depending on how
    # fast the first images arrive); every batch formed while the device was busy leaves full, and the
    # tail takes the rest.
    full = sizes.count(batch)
    assert full >= 8, sizes
    assert sizes[2:-1] == [batch] * (len(sizes) - 3), sizes


# -- (c) backpressure ------------------------------------------------------------------------------


def test_a_slow_device_pauses_the_consumer_at_max_in_flight(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    photo_bucket: tuple[str, list[str]],
    make_settings: Callable[..., Settings],
) -> None:
    n, max_in_flight = 300, 40
    bucket, keys = photo_bucket
    settings = settings_for(make_settings, bucket, input_partitions=2, batch_size=16, max_in_flight=max_in_flight)
    input_topic, output_topic = settings.kafka.input_topic, settings.kafka.output_topic
    bootstrap = kafka_broker.bootstrap_servers
    requests = requests_for(bucket, keys, n)
    produce_requests(bootstrap, input_topic, requests)
    device = SlowDevice(Embedder.load(settings.model), delay=0.15)
    in_flight: list[float] = []
    paused: list[float] = []
    with InProcessWorker(settings, embedder=device, s3_client=s3_client) as worker:
        deadline = time.monotonic() + 60
        sample = worker.metrics.registry.get_sample_value
        while worker.counter("clip_worker_records_embedded_total") < n:
            assert time.monotonic() < deadline, f"only {worker.counter('clip_worker_records_embedded_total')} done"
            in_flight.append(sample("clip_worker_records_in_flight") or 0.0)
            paused.append(sample("clip_worker_consumer_paused") or 0.0)
            time.sleep(0.002)
        wait_until_committed(bootstrap, settings.kafka.group_id, input_topic, timeout=30)
        worker.stop()

    pauses = sum(1 for before, after in itertools.pairwise(paused) if (before, after) == (0, 1))
    resumes = sum(1 for before, after in itertools.pairwise(paused) if (before, after) == (1, 0))
    # 300 records through a window of 40 that resumes at 20: the window closes again and again.
    assert pauses >= 3 and resumes >= 3, (pauses, resumes)
    assert max(in_flight) <= max_in_flight, max(in_flight)
    assert max(in_flight) >= max_in_flight // 2, "the window was actually filled"
    outputs = read_all(bootstrap, output_topic)
    assert Counter(m.key().decode() for m in outputs) == Counter(r.id for r in requests), "each exactly once"
    # Pausing drops prefetched messages; none of them is polled twice after the resume.
    assert worker.counter("clip_worker_records_consumed_total") == n
    assert worker.counter("clip_worker_records_embedded_total") == n
    assert sum(device.batch_sizes) == n
