"""Bad input on the real broker and S3: every record that can never succeed is dead-lettered once,
with headers that say where it came from and why it failed, and the good records around it are all
embedded; the other policies (skip, stop, the consecutive-failure limit) do what they promise.

One in-process worker per test (tiny model, fast preprocessing) reads S3 through the fault-injecting
proxy, with the credentials of the standard AWS chain (environment), so that a leaked secret would
show up in a dead-letter header.
"""

from __future__ import annotations

import functools
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message, Producer
from PIL import Image

from harness.faulty_proxy import FaultKind, FaultyS3Proxy
from harness.kafka_broker import KafkaBroker
from harness.kafka_io import committed_and_end_offsets, read_all, wait_until_committed
from harness.models import TINY_MODEL_NAME
from harness.photos import encode_jpeg, resize_long_side, source_photo
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY
from worker import __version__
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import FatalError
from worker.formats.encoding import EmbeddingEncoder

MAX_ATTEMPTS = 4
FIELD = "image_clip_emb_tiny_vit"
# 2000 seeded random bytes that start with no image signature (the bad-random case pins NotAnImage).
RANDOM_BYTES = random.Random(20260).randbytes(2000)


# -- fixtures ------------------------------------------------------------------------------------
# tiny_checkpoint, small_photos (160 px JPEGs, 4-10 kB), proxy and aws_credentials come from
# tests/conftest.py; make_settings from tests/pipeline/conftest.py.


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    return encode_jpeg(resize_long_side(Image.fromarray(source_photo("astronaut")), 640), quality=95)



@pytest.fixture
def worker_settings(
    make_settings: Callable[..., Settings], s3_bucket: str, proxy: FaultyS3Proxy, aws_credentials: Credentials
) -> Callable[..., Settings]:
    """worker_settings(input_partitions=..., max_object_bytes=..., **pipeline) -> make_settings for the
    test's bucket, with fresh topics, reading S3 through the proxy with quick retries and the
    credentials of the environment (aws_credentials), and committing every 200 ms."""

    def make(*, input_partitions: int, max_object_bytes: int = 32 * 1024 * 1024, preprocess_in: str = "threads",
             decode: str = "cpu", **pipeline: Any) -> Settings:
        return make_settings(
            s3_bucket,
            input_partitions=input_partitions,
            model=FAST_TINY | {"preprocess_in": preprocess_in, "decode": decode},
            kafka={"consumer_config": {"auto.commit.interval.ms": "200"}},
            s3={"endpoint_url": proxy.endpoint_url, "max_object_bytes": max_object_bytes, "fetch_workers": 4,
                "max_attempts": MAX_ATTEMPTS, "backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.01,
                "timeout_seconds": 5},
            pipeline=pipeline,
        )

    return make


# -- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Produced:
    key: bytes
    value: bytes
    partition: int
    offset: int
    timestamp_ms: int
    headers: list[tuple[str, bytes]]


def produce_located(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[bytes, Produced]:
    """Produce (key, value) records, each with its own CreateTime and a trace header; return where
    each one landed (partition, offset) by key."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    located: dict[bytes, Produced] = {}
    errors: list[str] = []
    # An hour old and a millisecond apart: a dead-letter record with this timestamp copied it.
    base_ms = int(time.time() * 1000) - 3_600_000

    def delivered(err: Any, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        kind, ts = msg.timestamp()
        assert kind == TIMESTAMP_CREATE_TIME
        key, value = msg.key(), msg.value()
        located[key] = Produced(key, value, msg.partition(), msg.offset(), ts, list(msg.headers() or []))

    for i, (key, value) in enumerate(records):
        headers = [("trace-id", b"trace-" + key)]
        producer.produce(topic, value, key, headers=headers, timestamp=base_ms + i, on_delivery=delivered)
    assert producer.flush(30) == 0 and not errors, errors
    assert len(located) == len(records), "keys must be unique"
    return located


def failed_counts(worker: InProcessWorker) -> Counter[tuple[str, str]]:
    """Every sample of clip_worker_records_failed_total, by (stage, error)."""
    counts: Counter[tuple[str, str]] = Counter()
    for family in worker.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "clip_worker_records_failed_total" and sample.value:
                counts[(sample.labels["stage"], sample.labels["error"])] += int(sample.value)
    return counts


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def request(image_id: str, uri: str) -> bytes:
    return json.dumps({"id": image_id, "uri": uri, "metadata": {"case": image_id}}).encode()


def wait_for_error(worker: InProcessWorker, timeout: float = 30.0) -> BaseException:
    """Wait until the worker's thread has died of an error (its close, with the last commit, is done)."""
    deadline = time.monotonic() + timeout
    while worker.error is None:
        assert time.monotonic() < deadline, "the worker did not stop on its own"
        time.sleep(0.05)
    return worker.error


def committed_offsets(broker: KafkaBroker, group: str, topic: str) -> dict[int, int]:
    committed, _ends = committed_and_end_offsets(broker.bootstrap_servers, group, topic)
    return committed


# -- the matrix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    key: str
    value: bytes
    stage: str
    error: str
    attempts: int | None  # None: not pinned here (see test_the_fetch_attempts_header_counts_the_requests_made)
    reason: str  # a part of __connect.errors.exception.message
    # Out of attempts with no success seen before the last one began, an object gets one more once S3
    # serves the last good object (worker/s3/reader.py): whether it does depends on the other fetches' timing.
    or_one_more: bool = False


# Decoder processes fetch and decode in children: the same matrix holds across the process boundary. With
# decode=gpu (libjpeg-turbo on the device thread here) the good photos skip the preprocess threads as bytes
# and the bad objects, none of them a whole baseline JPEG, take the CPU path: the same verdicts either way.
@pytest.mark.parametrize(("preprocess_in", "decode"), [("threads", "cpu"), ("processes", "cpu"), ("threads", "gpu")])
def test_every_bad_record_is_dead_lettered_once_and_every_good_one_embedded(
    preprocess_in: str,
    decode: str,
    kafka_broker: KafkaBroker,
    s3_client: Any,
    s3_bucket: str,
    proxy: FaultyS3Proxy,
    aws_credentials: Credentials,
    worker_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
    big_photo: bytes,
) -> None:
    bucket = s3_bucket
    uri = functools.partial(s3_uri, bucket)
    photos = [data for _, data in small_photos]
    # Good objects, plain and behind transient faults that clear within the attempt budget.
    good: dict[str, str] = {}  # id -> key
    for i, data in enumerate(photos):
        s3_client.put_object(Bucket=bucket, Key=f"good-{i:02d}.jpg", Body=data)
    for i in range(12):
        good[f"good-{i:02d}"] = f"good-{i % len(photos):02d}.jpg"
    transient: dict[FaultKind, int] = {"slowdown": 1, "internal-error": 2, "reset": 2}
    for kind, times in transient.items():
        key = f"flaky-{kind}.jpg"
        s3_client.put_object(Bucket=bucket, Key=key, Body=photos[0])
        proxy.fail(key, kind=kind, times=times)
        good[f"flaky-{kind}"] = key
    limit = max(len(p) for p in photos) + 256
    assert len(big_photo) > limit
    truncated = photos[1][: len(photos[1]) // 2]
    bad_objects = {
        "denied.jpg": photos[2],  # readable to moto; the proxy answers 403 every time
        "too-big.jpg": big_photo,
        "random.jpg": RANDOM_BYTES,
        "truncated.jpg": truncated,
        "page.html": b"<!DOCTYPE html><html><head><title>Not Found</title></head><body>404</body></html>",
        "doc.pdf": b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
        "empty.jpg": b"",
        "throttled.jpg": photos[3],
    }
    for key, data in bad_objects.items():
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    proxy.fail("denied.jpg", kind="denied", times=1000)
    proxy.fail("throttled.jpg", kind="slowdown", times=1000)

    bad = [
        Bad("bad-json", b'{"id": "bad-json", "uri": ', "decode-message", "BadMessage", 0, "malformed JSON"),
        Bad("bad-no-id", json.dumps({"uri": uri("good-00.jpg")}).encode(), "decode-message", "BadMessage", 0,
            "missing or empty field 'id'"),
        Bad("bad-no-uri", json.dumps({"id": "bad-no-uri"}).encode(), "decode-message", "BadMessage", 0,
            "missing field 'uri'"),
        Bad("bad-https", request("bad-https", "https://example.com/cat.jpg"), "decode-message", "BadMessage", 0,
            "s3://bucket/key"),
        Bad("bad-foreign-bucket", request("bad-foreign-bucket", "s3://some-other-bucket/good-00.jpg"), "fetch",
            "SourceForbidden", None, "outside the allowed sources"),
        Bad("bad-missing", request("bad-missing", uri("missing.jpg")), "fetch", "SourceNotFound", 1, "NoSuchKey"),
        Bad("bad-denied", request("bad-denied", uri("denied.jpg")), "fetch", "SourceAccessDenied", 1,
            "AccessDenied"),
        Bad("bad-too-big", request("bad-too-big", uri("too-big.jpg")), "fetch", "SourceTooLarge", 1,
            f"over the limit of {limit}"),
        Bad("bad-throttled", request("bad-throttled", uri("throttled.jpg")), "fetch", "RetriesExhausted",
            MAX_ATTEMPTS, "SlowDown", or_one_more=True),
        Bad("bad-random", request("bad-random", uri("random.jpg")), "decode-image", "NotAnImage", 1,
            "not an image"),
        Bad("bad-truncated", request("bad-truncated", uri("truncated.jpg")), "decode-image", "TruncatedImage", 1,
            "ends early"),
        Bad("bad-html", request("bad-html", uri("page.html")), "decode-image", "NotAnImage", 1, "an HTML page"),
        Bad("bad-pdf", request("bad-pdf", uri("doc.pdf")), "decode-image", "NotAnImage", 1, "a PDF document"),
        Bad("bad-empty-object", request("bad-empty-object", uri("empty.jpg")), "decode-image", "EmptyImage", 1,
            "zero bytes"),
    ]
    good_records = [(image_id.encode(), request(image_id, uri(key))) for image_id, key in good.items()]
    bad_records = [(b.key.encode(), b.value) for b in bad]
    interleaved = [r for pair in zip(good_records, bad_records, strict=False) for r in pair]
    interleaved += good_records[len(bad_records):] + bad_records[len(good_records):]
    assert len(interleaved) == len(good) + len(bad) == 29

    settings = worker_settings(input_partitions=3, max_object_bytes=limit, preprocess_in=preprocess_in, decode=decode)
    kafka = settings.kafka
    input_topic, output_topic, dlq = kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic
    produced = produce_located(kafka_broker.bootstrap_servers, input_topic, interleaved)
    with InProcessWorker(settings, embedder=Embedder(settings=settings.model, tower=embedder.tower)) as worker:
        committed = wait_until_committed(kafka_broker.bootstrap_servers, kafka.group_id, input_topic, timeout=60)
        worker.stop()

    # Offsets: the group committed the end of every partition of the input.
    assert sum(committed.values()) == len(interleaved)

    # Good records: one output each, the retried ones included.
    outputs = read_all(kafka_broker.bootstrap_servers, output_topic)
    assert Counter(m.key().decode() for m in outputs) == Counter(list(good)), "exactly one output per good record"
    decoder = EmbeddingEncoder(field_name=FIELD, model_name=TINY_MODEL_NAME, pretrained=str(tiny_checkpoint),
                               normalized=True)
    for message in outputs:
        record = decoder.decode(message.value())
        assert record["source_uri"] == uri(good[record["id"]]) and len(record[FIELD]) == 32
        origin = produced[record["id"].encode()]
        assert (record["input_partition"], record["input_offset"]) == (origin.partition, origin.offset)

    # Bad records: exactly one dead letter each, with the original copied and the right headers.
    letters = read_all(kafka_broker.bootstrap_servers, dlq)
    assert Counter(m.key().decode() for m in letters) == Counter(b.key for b in bad), "one dead letter per bad record"
    by_key = {b.key: b for b in bad}
    for letter in letters:
        case = by_key[letter.key().decode()]
        origin = produced[letter.key()]
        headers = letter.headers() or []
        added = {name: value.decode() for name, value in headers
                 if name.startswith(("__connect.errors.", "clip_worker."))}
        assert letter.value() == origin.value, case.key
        assert letter.timestamp() == (TIMESTAMP_CREATE_TIME, origin.timestamp_ms), case.key
        assert ("trace-id", b"trace-" + origin.key) in headers, f"{case.key}: original headers are kept"
        assert added["__connect.errors.topic"] == input_topic
        assert (int(added["__connect.errors.partition"]), int(added["__connect.errors.offset"])) == (
            origin.partition, origin.offset), case.key
        assert added["clip_worker.original.timestamp"] == str(origin.timestamp_ms), case.key
        assert added["__connect.errors.stage"] == case.stage, case.key
        assert added["__connect.errors.exception.class.name"] == case.error, case.key
        reason = added["__connect.errors.exception.message"]
        assert case.reason in reason, (case.key, reason)
        if case.attempts is not None:
            made = int(added["clip_worker.fetch.attempts"])
            assert made == case.attempts or (case.or_one_more and made == case.attempts + 1), case.key
            assert f"after {made} attempts" in reason or case.error != "RetriesExhausted", (case.key, reason)
        assert added["clip_worker.worker.version"] == __version__
        assert added["clip_worker.worker.id"] == f"clip-worker-{socket.gethostname()}", "the Kafka client.id"
        assert "__connect.errors.exception.stacktrace" not in added, "a stack trace only for unexpected errors"
        for name, value in headers:
            for credential in (aws_credentials.secret, aws_credentials.access_key_id):
                assert credential not in name and credential.encode() not in value, f"{case.key}: {name}"

    # Metrics agree, label by label.
    assert failed_counts(worker) == Counter((b.stage, b.error) for b in bad)
    assert worker.counter("clip_worker_records_dead_lettered_total") == len(bad)
    assert worker.counter("clip_worker_records_embedded_total") == len(good)
    assert worker.counter("clip_worker_records_consumed_total") == len(interleaved)
    # With decode=gpu every good record was decoded on the device, none refused; without, none was.
    on_device = (worker.counter("clip_worker_device_decoded_total"),
                 worker.counter("clip_worker_device_decode_refused_total"))
    assert on_device == ((len(good), 0) if decode == "gpu" else (0, 0))
    # Retries count for every record: those that cleared, and the one that ran out of attempts. A reset
    # on a kept-alive connection, before any byte of the answer, is what a stale connection looks
    # like: libcurl makes that request again on a new one itself, so a reset may not cost an attempt.
    retries = worker.counter("clip_worker_fetch_retries_total")
    assert sum(transient.values()) + MAX_ATTEMPTS - 1 - transient["reset"] // 2 <= retries
    assert retries <= sum(transient.values()) + MAX_ATTEMPTS  # the throttled object's one more attempt, maybe
    # The proxy served every transient fault, one 403 (never retried) and MAX_ATTEMPTS SlowDowns (or one more).
    assert proxy.faults_served - sum(transient.values()) - 1 in (MAX_ATTEMPTS, MAX_ATTEMPTS + 1)


def test_the_fetch_attempts_header_counts_the_requests_made(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    s3_bucket: str,
    proxy: FaultyS3Proxy,
    worker_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    """clip_worker.fetch.attempts is documented as "fetch attempts made". A SlowDown then a 403 is two
    requests; an allowlist refusal is made before any request, so zero."""
    s3_client.put_object(Bucket=s3_bucket, Key="revoked.jpg", Body=small_photos[0][1])
    proxy.fail("revoked.jpg", kind="slowdown", times=1)
    proxy.fail("revoked.jpg", kind="denied", times=1000)
    records = [
        (b"revoked", request("revoked", f"s3://{s3_bucket}/revoked.jpg")),
        (b"foreign", request("foreign", "s3://some-other-bucket/x.jpg")),
    ]
    settings = worker_settings(input_partitions=1)
    kafka = settings.kafka
    produce_located(kafka_broker.bootstrap_servers, kafka.input_topic, records)
    with InProcessWorker(settings, embedder=embedder) as worker:
        wait_until_committed(kafka_broker.bootstrap_servers, kafka.group_id, kafka.input_topic, timeout=60)
        worker.stop()

    dead_letters = read_all(kafka_broker.bootstrap_servers, kafka.dead_letter_topic)
    letters = {m.key(): dict(m.headers() or []) for m in dead_letters}
    assert set(letters) == {b"revoked", b"foreign"}
    assert letters[b"revoked"]["__connect.errors.exception.class.name"] == b"SourceAccessDenied"
    assert proxy.faults_served == 2, "one SlowDown, then one 403 (not retried)"
    # KNOWN WORKER BUG (worker/images/stages.py, fetch_step): a permanent SourceError after one or more
    # transient ones is reported as attempts=max(0, 1)=1, losing the retries; see the report.
    assert letters[b"revoked"]["clip_worker.fetch.attempts"] == b"2", "a SlowDown then a 403 is 2 requests made"
    # Same root cause: the allowlist refuses before any request, yet clip_worker.fetch.attempts says 1.
    assert letters[b"foreign"]["clip_worker.fetch.attempts"] == b"0", "an allowlist refusal makes no request"


# -- the other policies --------------------------------------------------------------------------


def test_skip_policy_drops_bad_records_and_still_commits_past_them(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    s3_bucket: str,
    worker_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=small_photos[0][1])
    s3_client.put_object(Bucket=s3_bucket, Key="random.jpg", Body=RANDOM_BYTES)
    uri = functools.partial(s3_uri, s3_bucket)
    goods = [(f"good-{i}".encode(), request(f"good-{i}", uri("good.jpg"))) for i in range(6)]
    bads = [
        (b"bad-json", b"{not json"),
        (b"bad-missing", request("bad-missing", uri("missing.jpg"))),
        (b"bad-random", request("bad-random", uri("random.jpg"))),
    ]
    records = [goods[0], bads[0], goods[1], goods[2], bads[1], goods[3], bads[2], goods[4], goods[5]]
    settings = worker_settings(input_partitions=2, on_error="skip")
    kafka = settings.kafka
    input_topic, output_topic, dlq = kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic
    produce_located(kafka_broker.bootstrap_servers, input_topic, records)
    with InProcessWorker(settings, embedder=embedder) as worker:
        committed = wait_until_committed(kafka_broker.bootstrap_servers, kafka.group_id, input_topic, timeout=60)
        worker.stop()

    assert sum(committed.values()) == len(records), "skipped records are committed past"
    assert read_all(kafka_broker.bootstrap_servers, dlq) == [], "skip writes no dead letter"
    outputs = read_all(kafka_broker.bootstrap_servers, output_topic)
    assert Counter(m.key() for m in outputs) == Counter(k for k, _ in goods)
    assert failed_counts(worker) == Counter(
        {("decode-message", "BadMessage"): 1, ("fetch", "SourceNotFound"): 1, ("decode-image", "NotAnImage"): 1}
    )
    assert worker.counter("clip_worker_records_dead_lettered_total") == 0
    assert worker.counter("clip_worker_records_embedded_total") == len(goods)


@pytest.mark.parametrize(
    ("bad_value", "stage", "error"),
    [
        pytest.param(b'{"id": "bad", "uri": 7', "decode-message", "BadMessage", id="malformed-json"),
        pytest.param(None, "decode-image", "NotAnImage", id="undecodable-image"),
    ],
)
def test_stop_policy_stops_the_worker_without_committing_the_bad_record(
    bad_value: bytes | None,
    stage: str,
    error: str,
    kafka_broker: KafkaBroker,
    s3_client: Any,
    s3_bucket: str,
    worker_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=small_photos[0][1])
    s3_client.put_object(Bucket=s3_bucket, Key="page.html", Body=b"<html><body>oops</body></html>")
    uri = functools.partial(s3_uri, s3_bucket)
    bad_value = bad_value or request("bad", uri("page.html"))
    settings = worker_settings(input_partitions=1, on_error="stop")
    kafka = settings.kafka
    input_topic, output_topic, dlq = kafka.input_topic, kafka.output_topic, kafka.dead_letter_topic
    group = kafka.group_id
    bootstrap = kafka_broker.bootstrap_servers
    worker = InProcessWorker(settings, embedder=embedder).start()
    try:
        # First some good records, all committed, so that the bad one is the lowest unfinished offset.
        before = produce_located(bootstrap, input_topic, [(f"a-{i}".encode(), request(f"a-{i}", uri("good.jpg")))
                                                          for i in range(4)])
        wait_until_committed(bootstrap, group, input_topic, timeout=60)
        after = produce_located(bootstrap, input_topic, [(b"bad", bad_value)] +
                                [(f"b-{i}".encode(), request(f"b-{i}", uri("good.jpg"))) for i in range(4)])
        assert after[b"bad"].offset == len(before) == 4
        assert isinstance(wait_for_error(worker), FatalError)
        with pytest.raises(FatalError, match="on_error is stop"):
            worker.stop()
    finally:
        if worker.error is None:
            worker.stop()

    assert committed_offsets(kafka_broker, group, input_topic) == {0: 4}, "stopped at the bad record, not past it"
    assert read_all(bootstrap, dlq) == [], "stop writes no dead letter"
    assert failed_counts(worker) == Counter({(stage, error): 1})
    outputs = Counter(m.key() for m in read_all(bootstrap, output_topic))
    assert all(outputs[f"a-{i}".encode()] == 1 for i in range(4))


def test_too_many_failures_in_a_row_stop_the_worker(
    kafka_broker: KafkaBroker,
    s3_client: Any,
    s3_bucket: str,
    worker_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=small_photos[0][1])
    uri = functools.partial(s3_uri, s3_bucket)
    settings = worker_settings(input_partitions=1, max_consecutive_failures=3)
    kafka = settings.kafka
    input_topic, dlq = kafka.input_topic, kafka.dead_letter_topic
    group = kafka.group_id
    bootstrap = kafka_broker.bootstrap_servers
    worker = InProcessWorker(settings, embedder=embedder).start()
    try:
        produce_located(bootstrap, input_topic, [(f"a-{i}".encode(), request(f"a-{i}", uri("good.jpg")))
                                                 for i in range(3)])
        wait_until_committed(bootstrap, group, input_topic, timeout=60)  # a success resets the streak
        bad = [(f"bad-{i}".encode(), b"{broken json " + str(i).encode()) for i in range(5)]
        after = produce_located(bootstrap, input_topic, [*bad, (b"b-0", request("b-0", uri("good.jpg")))])
        first_bad = after[b"bad-0"].offset
        assert first_bad == 3
        assert isinstance(wait_for_error(worker), FatalError)
        with pytest.raises(FatalError, match="4 records failed in a row"):
            worker.stop()
    finally:
        if worker.error is None:
            worker.stop()

    letters = read_all(bootstrap, dlq)
    assert [m.key() for m in letters] == [b"bad-0", b"bad-1", b"bad-2"], "three dead letters, then the stop"
    # The streak is not committed: a restart loop must not drain the topic into the dead-letter topic.
    assert committed_offsets(kafka_broker, group, input_topic) == {0: first_bad}
    assert failed_counts(worker) == Counter({("decode-message", "BadMessage"): 4})
    assert worker.counter("clip_worker_records_dead_lettered_total") == 3
