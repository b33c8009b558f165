"""Hostile messages on the real broker: no single record can stop the worker, or wedge a partition.

Each class below once raised out of the main loop, and since its offset was never committed the
restarted worker read the same message and died again. Now each is dead-lettered once, every good
record around it is embedded, and the committed offsets reach the end of the input.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import read_all, wait_until_committed
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY
from worker.config import Settings
from worker.engine import Embedder

MAX_MESSAGE_BYTES = 200_000  # the worker's producer limit in this test: outputs above it cannot be sent



def request(image_id: str, uri: str, **extra: object) -> bytes:
    return json.dumps({"id": image_id, "uri": uri} | extra).encode()


def hostile_records(uri: str) -> dict[str, tuple[bytes | None, list[tuple[str, bytes]], str]]:
    """key -> (value, headers, the exception class its dead letter must name)."""
    deep = b'{"id": "deep", "uri": "' + uri.encode() + b'", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return {
        "deep-nesting": (deep, [], "BadMessage"),
        "huge-int": (b'{"id": "huge-int", "uri": "' + uri.encode() + b'", "n": ' + b"9" * 5_000 + b"}", [],
                     "BadMessage"),
        "surrogate-id": (b'{"id": "x\\ud800", "uri": "' + uri.encode() + b'"}', [], "BadMessage"),
        "surrogate-uri": (b'{"id": "surrogate-uri", "uri": "s3://bucket/\\udfff.jpg"}', [], "BadMessage"),
        "surrogate-metadata": (request("surrogate-metadata", uri).replace(b"}", b', "metadata": {"\\ud800": "v"}}'),
                               [], "BadMessage"),
        "raw-bad-utf8": (b'{"id": "\xff\xfe", "uri": "' + uri.encode() + b'"}', [], "BadMessage"),
        "tombstone": (None, [], "BadMessage"),
        "empty-value": (b"", [], "BadMessage"),
        "avro-garbage": (b"\x02\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", [], "BadMessage"),
        "confluent-no-registry": (b"\x00\x00\x00\x00\x01\x02ab", [], "BadMessage"),
        "output-too-large": (request("output-too-large", uri, metadata={"blob": "x" * 250_000}), [],
                             "OutputTooLarge"),
        "header-flood": (b"{broken", [(f"h{i}", b"\xff" * 100) for i in range(2_000)], "BadMessage"),
    }


def produce_with_headers(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None, list[Any]]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000})
    for key, value, headers in records:
        producer.produce(topic, value, key, headers=headers)
    assert producer.flush(30) == 0


def test_hostile_messages_are_dead_lettered_once_and_the_worker_never_stops(
    kafka_broker: KafkaBroker,
    aws_credentials: Credentials,
    s3_client: Any,
    s3_bucket: str,
    make_settings: Callable[..., Settings],
    embedder: Embedder,
    small_photos: list[tuple[str, bytes]],
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="good.jpg", Body=small_photos[0][1])
    uri = f"s3://{s3_bucket}/good.jpg"
    hostile = hostile_records(uri)
    huge_key = b"k" * 100_000  # a good request under a key far over the dead-letter key budget
    goods = [(f"good-{i}".encode(), request(f"good-{i}", uri), []) for i in range(len(hostile) + 1)]
    bads = [(key.encode(), value, headers) for key, (value, headers, _) in hostile.items()]
    bads.append((huge_key, b"not json, and a huge key", []))
    records = [r for pair in zip(goods, bads, strict=True) for r in pair]

    settings = make_settings(
        s3_bucket, input_partitions=2, model=FAST_TINY,
        kafka={"consumer_config": {"auto.commit.interval.ms": "200"},
               "producer_config": {"message.max.bytes": str(MAX_MESSAGE_BYTES)}},
    )
    kafka = settings.kafka
    bootstrap = kafka_broker.bootstrap_servers
    produce_with_headers(bootstrap, kafka.input_topic, records)
    with InProcessWorker(settings, embedder=embedder) as worker:
        committed = wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=90)
        assert worker.error is None, "no input may stop the worker"
        worker.stop()

    assert sum(committed.values()) == len(records), "committed offsets reach the end of every partition"
    outputs = read_all(bootstrap, kafka.output_topic)
    assert Counter(m.key() for m in outputs) == Counter(key for key, _, _ in goods), "every good record, once"

    letters = read_all(bootstrap, kafka.dead_letter_topic)
    by_key = {(m.key() or b"")[:64]: m for m in letters}
    assert len(letters) == len(bads) == len(by_key), "every hostile record is dead-lettered exactly once"
    for key, (_value, _headers, error) in hostile.items():
        letter = by_key[key.encode()]
        headers = dict(letter.headers() or [])
        reason = headers["__connect.errors.exception.message"]
        assert headers["__connect.errors.exception.class.name"] == error.encode(), (key, reason)
        reason.decode("utf-8")  # always valid UTF-8, whatever the input held
    for letter in letters:
        size = len(letter.key() or b"") + len(letter.value() or b"") + sum(
            len(n) + len(v or b"") for n, v in letter.headers() or [])
        assert size <= MAX_MESSAGE_BYTES, "a dead-letter record always fits the producer's limit"

    too_large = dict(by_key[b"output-too-large"].headers() or [])
    assert too_large["clip_worker.value.truncated"] == b"true"
    assert int(too_large["clip_worker.original.value.size"]) == len(hostile["output-too-large"][0] or b"")
    flood = dict(by_key[b"header-flood"].headers() or [])
    assert int(flood["clip_worker.original.headers.dropped"]) > 0, "past the budget the original headers are dropped"
    assert by_key[b"header-flood"].value() == b"{broken", "the value itself still fits and is kept whole"
    cut_key = by_key[huge_key[:64]]
    assert int(dict(cut_key.headers() or [])["clip_worker.original.key.size"]) == len(huge_key)
    assert len(cut_key.key() or b"") < len(huge_key)
