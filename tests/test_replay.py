"""`clip-worker replay` on the real broker and S3: records dead-lettered because their object was
missing are replayed once it is there, exactly as they were (key, value, headers, timestamp), and
embedded; the filters choose what is replayed, and a dry run counts without producing anything.
Restoring reads what anyone may have written to the dead-letter topic, so it never raises
(Hypothesis), and gives back the very record a dead letter was made from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import read_all, wait_until_committed, written_count
from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from harness.workers import InProcessWorker, settings_env
from tests.conftest import Credentials
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import SourceNotFound
from worker.formats.positions import KafkaPosition
from worker.formats.records import PolledRecord
from worker.images.work import Work
from worker.stream.deadletter import dead_letter_record
from worker.stream.replay import ReplayOptions, instant, replay, restore

DEAD_LETTER_PREFIXES = ("__connect.errors.", "clip_worker.")
CUT_HEADERS = ("clip_worker.value.truncated", "clip_worker.original.key.size", "clip_worker.original.headers.dropped")
MODEL: dict[str, Any] = {"preprocess_mode": "fast", "inference_batch_size": 8, "preprocess_workers": 2}

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
header_names = st.one_of(any_text, st.sampled_from([
    "__connect.errors.stage", "__connect.errors.exception.class.name", "clip_worker.original.timestamp", *CUT_HEADERS,
]))
header_values = st.one_of(st.none(), st.binary(max_size=64), any_text, st.integers().map(lambda n: str(n).encode()))


# -- restore -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=20),
       timestamp=st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70)))
def test_restore_never_raises_and_keeps_exactly_the_headers_that_are_not_the_dead_letters(
    headers: list[tuple[str, str | bytes | None]], timestamp: int | None
) -> None:
    letter = restore(b"k", b"v", headers, timestamp)
    assert letter.headers == [(n, v) for n, v in headers if not n.startswith(DEAD_LETTER_PREFIXES)]
    assert letter.complete == (not any(n in CUT_HEADERS for n, _ in headers)), "a cut original is never replayed"
    assert letter.timestamp_ms is None or letter.timestamp_ms == timestamp or 0 <= letter.timestamp_ms < 2**63
    assert isinstance(letter.stage, str) and isinstance(letter.exception, str)


plain_names = st.text(alphabet=st.characters(codec="utf-8"), max_size=30).filter(
    lambda n: not n.startswith(DEAD_LETTER_PREFIXES))


@settings(max_examples=200, deadline=None)
@given(key=st.one_of(st.none(), st.binary(max_size=100)), value=st.one_of(st.none(), st.binary(max_size=1000)),
       headers=st.lists(st.tuples(plain_names, st.one_of(st.none(), st.binary(max_size=100))), max_size=10),
       timestamp=st.one_of(st.none(), st.integers(min_value=1, max_value=2**62)))
def test_a_dead_letter_restores_to_the_record_it_was_made_from(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]], timestamp: int | None
) -> None:
    original = Work(position=KafkaPosition("in", 1, 7),
                polled=PolledRecord(generation=1, key=key, value=value, headers=headers, timestamp_ms=timestamp))
    record = dead_letter_record(original, SourceNotFound("gone"), stage="fetch", topic="dlq", max_bytes=100_000,
                                worker_id="clip-worker-0")
    letter = restore(record.key, record.value, record.headers, record.timestamp_ms)
    assert (letter.key, letter.value, letter.headers, letter.timestamp_ms) == (key, value, headers, timestamp)
    assert (letter.stage, letter.exception, letter.complete) == ("fetch", "SourceNotFound", True)


def test_an_iso_time_without_a_zone_is_utc_and_one_with_a_zone_is_converted() -> None:
    expected = int(datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp() * 1000)
    assert instant("2026-01-02T03:04:05.678") == instant("2026-01-02T03:04:05.678Z") == expected
    assert instant("2026-01-02T05:04:05.678+02:00") == expected
    with pytest.raises(argparse.ArgumentTypeError, match="not an ISO 8601 time"):
        instant("yesterday")


# -- on the broker -------------------------------------------------------------------------------


def produce_at(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> None:
    """Produce (key, value, timestamp) records, each with a trace header named after its key."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value, timestamp in records:
        producer.produce(topic, value, key, headers=[("traceparent", b"00-" + key)], timestamp=timestamp)
    assert producer.flush(30) == 0


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def test_records_dead_lettered_for_a_missing_object_are_replayed_once_it_exists_and_then_embedded(
    kafka_broker: KafkaBroker, s3_server: S3Server, s3_client: Any, s3_bucket: str,
    topic_factory: Callable[..., str], tiny_checkpoint: Path, small_photos: list[tuple[str, bytes]],
    aws_credentials: Credentials,  # in the environment, for the decoder processes' own clients
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    input_topic = topic_factory(partitions=2)
    worker_settings = Settings(
        model=tiny_model_settings(tiny_checkpoint, **MODEL),
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{input_topic}", "input_topic": input_topic,
               "output_topic": topic_factory(), "dead_letter_topic": topic_factory(partitions=2),
               "consumer_config": {"auto.commit.interval.ms": "200"}},
        s3={"endpoint_url": s3_server.endpoint_url, "allowed_sources": (s3_bucket,)},
        pipeline={"metrics_port": None},
    )
    kafka = worker_settings.kafka
    base = int(time.time() * 1000) - 3_600_000
    missing = [(f"m-{i}".encode(), json.dumps({"id": f"m-{i}", "uri": f"s3://{s3_bucket}/m-{i}.jpg"}).encode(),
                base + 1000 * i) for i in range(3)]
    produce_at(bootstrap, input_topic, [*missing, (b"bad", b"{not json", base + 3000)])
    embedder = Embedder.load(worker_settings.model)
    with InProcessWorker(worker_settings, embedder=embedder, s3_client=s3_client) as worker:
        wait_until_committed(bootstrap, kafka.group_id, input_topic, timeout=60)
        worker.stop()
    assert len(read_all(bootstrap, kafka.dead_letter_topic)) == 4

    for i in range(3):  # the cause is fixed
        s3_client.put_object(Bucket=s3_bucket, Key=f"m-{i}.jpg", Body=small_photos[i][1])

    # A dry run through the command line counts by stage and class, and produces nothing.
    env = {"PATH": "/usr/bin:/bin"} | settings_env(worker_settings)
    done = subprocess.run([sys.executable, "-m", "worker", "replay", "--stage", "fetch", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["fetch", "SourceNotFound", "3"] and len(lines) == 4, done.stdout
    assert f"dry run: 3 would be replayed to {input_topic}; nothing produced" in done.stdout
    assert written_count(bootstrap, input_topic) == 4, "a dry run produces nothing"

    # Filters: the exception class, and the original's time, since inclusive and until exclusive.
    def counted(**filters: Any) -> Counter[tuple[str, str]]:
        return replay(kafka, ReplayOptions(dry_run=True, **filters)).matched

    assert counted(exceptions=frozenset({"BadMessage"})) == Counter({("decode-message", "BadMessage"): 1})
    assert counted(stages=frozenset({"embed"})) == Counter()
    fetch, not_found = frozenset({"fetch"}), ("fetch", "SourceNotFound")
    assert counted(stages=fetch, since_ms=instant(iso(base + 1000))) == Counter({not_found: 2})
    assert counted(stages=fetch, since_ms=base + 1000, until_ms=base + 2000) == Counter({not_found: 1})

    report = replay(kafka, ReplayOptions(stages=fetch))
    assert (report.read, report.produced, report.failed, report.incomplete) == (4, 3, 0, 0)
    copies: dict[bytes, list[tuple[bytes, list[Any], int]]] = {}
    for message in read_all(bootstrap, input_topic):
        copies.setdefault(message.key(), []).append((message.value(), message.headers(), message.timestamp()[1]))
    for key, value, timestamp in missing:
        assert copies[key] == [(value, [("traceparent", b"00-" + key)], timestamp)] * 2, "replayed as it was"
    assert len(copies[b"bad"]) == 1, "the stage filter left the bad message alone"

    with InProcessWorker(worker_settings, embedder=embedder, s3_client=s3_client) as worker:
        wait_until_committed(bootstrap, kafka.group_id, input_topic, timeout=60)
        worker.stop()
    assert Counter(m.key() for m in read_all(bootstrap, kafka.output_topic)) == Counter(k for k, _, _ in missing)
    assert len(read_all(bootstrap, kafka.dead_letter_topic)) == 4, "nothing failed again"
