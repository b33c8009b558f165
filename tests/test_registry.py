"""Confluent Schema Registry framing, through confluent-kafka's own in-memory registry client.

What is tested is our use of confluent-kafka's serializers: the wire format (magic byte, schema id,
Avro body), that what one side writes the other reads, and which registry failures are outages. The
worker against a real registry server is tests/test_schema_registry.py: Apicurio Registry's
Confluent-compatible API, since Confluent's own registry is not on Maven Central. These stay on
``mock://`` because that is confluent-kafka's own reading of the protocol, with no server between:
Apicurio answers as Confluent does where these tests look, but it is its own implementation (its
ids are content ids shared across subjects, its compatibility checker is not Avro's
SchemaCompatibility, and it has no Confluent data-contract rules or metadata), so a difference
between the two would show here as a test passing on one and failing on the other.
"""

import io
import json
import socket
import struct
import time

import fastavro
import numpy as np
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from worker.errors import RegistryUnavailable
from worker.formats import registry
from worker.formats.encoding import EmbeddingEncoder, embedding_schema
from worker.formats.messages import ImageRequest, S3Uri, decode_request
from worker.formats.positions import KafkaPosition
from worker.schemas import load_schema

REQUEST = ImageRequest(id="img-1", uri=S3Uri("photos", "a.jpg"), metadata={"k": "v"})


def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://registry"})


def test_outputs_are_confluent_framed_avro_with_the_registered_schema_id() -> None:
    client = mock_registry()
    schema = embedding_schema("image_clip_emb_vit_b_32")
    encoder = EmbeddingEncoder(
        field_name="image_clip_emb_vit_b_32", model_name="ViT-B-32", pretrained="openai", normalized=True,
        registry_serializer=registry.output_serializer(client, schema, auto_register=True),
    )
    vector = np.linspace(-1, 1, 512, dtype=np.float32)
    value = encoder.encode(request=REQUEST, embedding=vector, position=KafkaPosition("in", 2, 7), topic="embeddings")

    magic, schema_id = struct.unpack(">bI", value[:5])
    registered = client.get_latest_version("embeddings-value")
    assert (magic, schema_id) == (0, registered.schema_id)
    record = fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(schema), None)
    assert record["id"] == "img-1" and record["input_partition"] == 2 and record["input_offset"] == 7
    assert np.array_equal(np.asarray(record["image_clip_emb_vit_b_32"], dtype=np.float32), vector)


def test_confluent_framed_inputs_are_read_through_the_registry() -> None:
    client = mock_registry()
    serializer = AvroSerializer(client, json.dumps(load_schema("image-reference.avsc")))
    value = serializer(
        {"id": "img-1", "uri": "s3://photos/a.jpg", "metadata": {"k": "v"}},
        SerializationContext("images", MessageField.VALUE),
    )
    assert value[:1] == b"\x00"
    assert decode_request(value, confluent=registry.input_decoder(client, "images")) == REQUEST


def test_a_registry_that_cannot_be_reached_is_an_outage_not_the_records_fault() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = SchemaRegistryClient({"url": f"http://127.0.0.1:{port}", "max.retries": 0, "timeout": 2})
    framed = b"\x00\x00\x00\x00\x07\x02"  # schema id 7, which must be looked up
    with pytest.raises(RegistryUnavailable):
        decode_request(framed, confluent=registry.input_decoder(client, "images"))
    field = "image_clip_emb_vit_b_32"
    encoder = EmbeddingEncoder(
        field_name=field, model_name="ViT-B-32", pretrained="openai", normalized=True,
        registry_serializer=registry.output_serializer(client, embedding_schema(field), auto_register=True),
    )
    with pytest.raises(RegistryUnavailable):
        encoder.encode(request=REQUEST, embedding=np.ones(4, np.float32), position=KafkaPosition("images", 0, 1),
                       topic="out")


def test_an_unreachable_registry_is_an_outage_at_once_not_after_the_clients_own_retries() -> None:
    """The input decode asks the registry on the main loop: one refused request must end there (the
    worker's outage handling retries with its own backoff), not after the client's 1 + 2 + 4 s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    decode = registry.input_decoder(registry.registry_client(f"http://127.0.0.1:{port}"), "images")
    framed = b"\x00" + struct.pack(">I", 42) + b"\x02a"
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        decode(framed)
    assert time.monotonic() - started < 1.5
