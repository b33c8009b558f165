"""The worker against a real Schema Registry (Apicurio's Confluent-compatible API, harness/schema_registry.py)
over the real broker: Confluent-framed output a registry-aware consumer decodes, Confluent-framed input
read through the registry, the output schema's evolution under the registry's compatibility rule, a
registry outage mid-stream, and `clip-worker check`.

tests/test_registry.py keeps its tests on confluent-kafka's in-memory ``mock://`` registry: the wire
format and the error translation without any server.
"""

from __future__ import annotations

import copy
import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce, produce_requests, read_all, wait_until_committed, written_count
from harness.models import tiny_model_settings
from harness.s3_server import S3Server
from harness.schema_registry import SchemaRegistry
from harness.workers import InProcessWorker
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY, requests_for
from worker.checks import CheckResult, run_checks
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import ConfigError
from worker.formats.encoding import embedding_schema
from worker.metrics import Metrics
from worker.schemas import load_schema
from worker.stream.build import build_runtime

MakeSettings = Callable[..., Settings]
# The fields added to the output schema with defaults since its first release.
ADDED_WITH_DEFAULTS = ("sha256", "width", "height")


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint: Path) -> Embedder:
    return Embedder.load(tiny_model_settings(tiny_checkpoint, **FAST_TINY))


@pytest.fixture
def make_settings(
    kafka_broker: KafkaBroker, s3_server: S3Server, schema_registry: SchemaRegistry, tiny_checkpoint: Path,
    topic_factory: Callable[..., str], aws_credentials: Credentials, tmp_path: Path,
) -> MakeSettings:
    """make_settings(bucket, pipeline=...): fresh topics and group, the tiny model, S3, and the registry's URL."""

    def make(bucket: str, *, pipeline: dict[str, Any] | None = None) -> Settings:
        input_topic = topic_factory(partitions=2)
        return Settings(
            model=tiny_model_settings(tiny_checkpoint, decode_journal_dir=tmp_path / "journal", **FAST_TINY),
            kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "group_id": f"group-{input_topic}",
                   "input_topic": input_topic, "output_topic": topic_factory(partitions=2),
                   "dead_letter_topic": topic_factory()},
            s3={"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "allowed_sources": (bucket,)},
            pipeline={"metrics_port": None, "schema_registry_url": schema_registry.url} | (pipeline or {}),
        )

    return make


@pytest.fixture
def registry(schema_registry: SchemaRegistry) -> Iterator[SchemaRegistryClient]:
    """A client of the session's registry for the test's own registrations and reads."""
    with SchemaRegistryClient({"url": schema_registry.url, "timeout": 10}) as client:
        yield client


def register(client: SchemaRegistryClient, subject: str, schema: dict[str, Any]) -> int:
    schema_id: int = client.register_schema(subject, Schema(json.dumps(schema), "AVRO"))
    return schema_id


def schema_id_of(value: bytes) -> int:
    magic, schema_id = struct.unpack(">bI", value[:5])
    assert magic == 0, "Confluent framing"
    return int(schema_id)


def decoded_outputs(client: SchemaRegistryClient, messages: list[Message], topic: str) -> dict[str, dict[str, Any]]:
    """Every output value through confluent-kafka's AvroDeserializer, as a downstream consumer reads it."""
    deserializer = AvroDeserializer(client)
    context = SerializationContext(topic, MessageField.VALUE)
    return {m.key().decode(): deserializer(m.value(), context) for m in messages}  # type: ignore[union-attr]


def framed_requests(client: SchemaRegistryClient, schema: dict[str, Any], topic: str,
                    records: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) of each request, serialised by confluent-kafka's AvroSerializer with a schema registered
    beforehand (auto-registration off)."""
    serializer = AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": False,
                                                                  "subject.name.strategy": topic_subject_name_strategy})
    context = SerializationContext(topic, MessageField.VALUE)
    return [(record["id"].encode(), serializer(record, context)) for record in records]


def dead_letter_headers(letter: Message) -> dict[str, str]:
    return {name: value.decode() for name, value in letter.headers() or [] if name.startswith("__connect.errors.")}


def previous_output_schema(field_name: str) -> dict[str, Any]:
    """The output schema as it was before the fields added with defaults."""
    schema = copy.deepcopy(embedding_schema(field_name))
    schema["fields"] = [field for field in schema["fields"] if field["name"] not in ADDED_WITH_DEFAULTS]
    return schema


def test_confluent_output_with_the_schema_registered_up_front_is_decoded_by_a_registry_consumer(
    kafka_broker: KafkaBroker, photo_bucket: tuple[str, list[str]], make_settings: MakeSettings,
    embedder: Embedder, registry: SchemaRegistryClient,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(bucket, pipeline={"output_format": "confluent", "schema_registry_auto_register": False})
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    subject = f"{kafka.output_topic}-value"
    registered = register(registry, subject, embedding_schema(embedder.field_name))
    requests = requests_for(bucket, keys, 12)
    produce_requests(bootstrap, kafka.input_topic, requests)
    with InProcessWorker(settings, embedder=embedder) as worker:
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        worker.stop()

    messages = read_all(bootstrap, kafka.output_topic, expect=len(requests))
    assert {schema_id_of(m.value()) for m in messages} == {registered}  # type: ignore[arg-type]
    records = decoded_outputs(registry, messages, kafka.output_topic)
    assert set(records) == {r.id for r in requests}, "every record decodes through the registry"
    for request in requests:
        record = records[request.id]
        assert record["source_uri"] == str(request.uri) and len(record[embedder.field_name]) == embedder.dim
        assert record["width"] and record["height"] and len(record["sha256"]) == 64
    assert registry.get_versions(subject) == [1], "the worker registered nothing of its own"
    assert read_all(bootstrap, kafka.dead_letter_topic) == []


def test_confluent_framed_input_is_read_through_the_registry_and_an_unknown_schema_id_is_a_dead_letter_saying_so(
    kafka_broker: KafkaBroker, photo_bucket: tuple[str, list[str]], make_settings: MakeSettings,
    embedder: Embedder, registry: SchemaRegistryClient,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(bucket)
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    schema = load_schema("image-reference.avsc")
    register(registry, f"{kafka.input_topic}-value", schema)
    requests = requests_for(bucket, keys, 10)
    good = framed_requests(registry, schema, kafka.input_topic,
                           [{"id": r.id, "uri": str(r.uri), "metadata": {"n": r.id}} for r in requests])
    unknown_id = 2**31 - 1
    produce(bootstrap, kafka.input_topic, [*good[:5], (b"unknown-id", good[0][1][:1] + struct.pack(">I", unknown_id)
                                                        + good[0][1][5:]), *good[5:]])
    with InProcessWorker(settings, embedder=embedder) as worker:
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        worker.stop()

    outputs = read_all(bootstrap, kafka.output_topic)
    assert Counter(m.key().decode() for m in outputs) == Counter(r.id for r in requests)  # type: ignore[union-attr]
    letters = read_all(bootstrap, kafka.dead_letter_topic)
    assert [m.key() for m in letters] == [b"unknown-id"]
    headers = dead_letter_headers(letters[0])
    assert headers["__connect.errors.stage"] == "decode-message"
    assert headers["__connect.errors.exception.class.name"] == "BadMessage"
    reason = headers["__connect.errors.exception.message"]
    assert f"Schema {unknown_id} not found" in reason, reason


def test_the_current_output_schema_passes_the_backward_check_against_the_previous_one(
    registry: SchemaRegistryClient, request: pytest.FixtureRequest,
) -> None:
    subject = f"evolution-{request.node.name[:40]}-{time.monotonic_ns()}-value"
    previous, current = previous_output_schema("image_clip_emb_vit_b_32"), embedding_schema("image_clip_emb_vit_b_32")
    assert len(current["fields"]) == len(previous["fields"]) + len(ADDED_WITH_DEFAULTS)
    first = register(registry, subject, previous)
    registry.set_compatibility(subject, "BACKWARD")

    assert registry.test_compatibility(subject, Schema(json.dumps(current), "AVRO")) is True
    assert register(registry, subject, current) != first
    assert registry.get_versions(subject) == [1, 2]


def _type_changed(schema: dict[str, Any]) -> None:
    next(f for f in schema["fields"] if f["name"] == "dim")["type"] = "string"


def _required_field_added(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "model_revision", "type": "string"})  # no default: old records lack it


# A removed field is no example: under BACKWARD the new schema reads old records and skips the field.
@pytest.mark.parametrize("change", [_type_changed, _required_field_added], ids=["type-changed", "required-added"])
def test_a_breaking_change_to_the_output_schema_is_refused(
    registry: SchemaRegistryClient, request: pytest.FixtureRequest, change: Callable[[dict[str, Any]], None],
) -> None:
    subject = f"breaking-{request.node.callspec.id}-{time.monotonic_ns()}-value"
    register(registry, subject, embedding_schema("image_clip_emb_vit_b_32"))
    registry.set_compatibility(subject, "BACKWARD")
    broken = embedding_schema("image_clip_emb_vit_b_32")
    change(broken)

    assert registry.test_compatibility(subject, Schema(json.dumps(broken), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        register(registry, subject, broken)
    assert refused.value.http_status_code == 409
    assert registry.get_versions(subject) == [1]


def test_a_registry_stopped_mid_stream_parks_records_as_an_outage_and_the_worker_resumes_when_it_is_back(
    kafka_broker: KafkaBroker, photo_bucket: tuple[str, list[str]], make_settings: MakeSettings,
    embedder: Embedder, registry: SchemaRegistryClient, schema_registry: SchemaRegistry,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings(bucket, pipeline={"output_format": "confluent", "outage_retry_initial_seconds": 0.5,
                                               "outage_retry_max_seconds": 2})
    kafka, bootstrap = settings.kafka, kafka_broker.bootstrap_servers
    register(registry, f"{kafka.output_topic}-value", embedding_schema(embedder.field_name))
    # Two versions of the input schema: the records before the outage use the first, those during it the
    # second, whose id the worker has not looked up yet, so that it must ask the stopped registry.
    v1 = load_schema("image-reference.avsc")
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "source", "type": ["null", "string"], "default": None})
    register(registry, f"{kafka.input_topic}-value", v1)
    register(registry, f"{kafka.input_topic}-value", v2)
    requests = requests_for(bucket, keys, 24)
    before = framed_requests(registry, v1, kafka.input_topic, [{"id": r.id, "uri": str(r.uri)} for r in requests[:8]])
    during = framed_requests(registry, v2, kafka.input_topic,
                             [{"id": r.id, "uri": str(r.uri), "source": "test"} for r in requests[8:]])
    assert {schema_id_of(v) for _, v in before}.isdisjoint(schema_id_of(v) for _, v in during)

    with InProcessWorker(settings, embedder=embedder) as worker:
        produce(bootstrap, kafka.input_topic, before)
        wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=60)
        schema_registry.stop()
        try:
            produce(bootstrap, kafka.input_topic, during)
            deadline = time.monotonic() + 30
            while worker.counter("clip_worker_outage", cause="schema-registry") != 1 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert worker.counter("clip_worker_outage", cause="schema-registry") == 1, "the outage is declared"
            time.sleep(2)  # a retry round or more against the stopped registry
            assert written_count(bootstrap, kafka.dead_letter_topic) == 0
            assert written_count(bootstrap, kafka.output_topic) == len(before)
        finally:
            schema_registry.start()
        committed = wait_until_committed(bootstrap, kafka.group_id, kafka.input_topic, timeout=90)
        assert worker.error is None
        worker.stop()

    assert sum(committed.values()) == len(requests)
    assert read_all(bootstrap, kafka.dead_letter_topic) == [], "an outage is not the records' fault"
    outputs = read_all(bootstrap, kafka.output_topic)
    assert set(decoded_outputs(registry, outputs, kafka.output_topic)) == {r.id for r in requests}, "nothing lost"
    assert worker.counter("clip_worker_outage", cause="schema-registry") == 0, "the outage is over"
    assert worker.counter("clip_worker_outage_retries_total") > 0


def test_clip_worker_check_reports_the_registry_ok_and_a_stopped_registry_as_failed(
    s3_bucket: str, make_settings: MakeSettings, registry: SchemaRegistryClient, schema_registry: SchemaRegistry,
) -> None:
    settings = make_settings(s3_bucket)
    register(registry, f"{settings.kafka.output_topic}-value", embedding_schema("image_clip_emb_vit_b_32"))
    subjects = len(registry.get_subjects())
    results = {r.name: r for r in run_checks(settings, timeout=3)}
    assert results["schema registry"] == CheckResult("schema registry", True, f"{subjects} subject(s)")
    assert [name for name, r in results.items() if not r.ok] == []

    schema_registry.stop()
    try:
        started = time.monotonic()
        stopped = {r.name: r for r in run_checks(settings, timeout=3)}["schema registry"]
        assert time.monotonic() - started < 20
    finally:
        schema_registry.start()
    assert not stopped.ok and "refused" in stopped.detail.lower(), stopped.detail


def test_confluent_output_with_the_schema_not_registered_and_auto_register_off_refuses_to_start(
    photo_bucket: tuple[str, list[str]], make_settings: MakeSettings, embedder: Embedder,
    registry: SchemaRegistryClient,
) -> None:
    """Otherwise every record's encode would fail alike and go to the dead letters."""
    settings = make_settings(photo_bucket[0], pipeline={"output_format": "confluent",
                                                        "schema_registry_auto_register": False})
    with pytest.raises(ConfigError) as refused:
        build_runtime(settings, embedder=embedder, metrics=Metrics())
    assert refused.value.setting == "CLIP_WORKER_PIPELINE__SCHEMA_REGISTRY_AUTO_REGISTER"
    assert f"{settings.kafka.output_topic}-value" in str(refused.value) and "register it first" in str(refused.value)
    with pytest.raises(SchemaRegistryError):
        registry.get_versions(f"{settings.kafka.output_topic}-value")  # the worker registered nothing
