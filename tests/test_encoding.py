"""The output schema evolves compatibly both ways (Avro schema resolution, with fastavro): consumers
still on the previous schema read new records, and new consumers read old records, with null for the
fields added since (sha256, width, height)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import numpy as np

from worker.formats.encoding import EmbeddingEncoder, embedding_schema
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition

FIELD = "image_clip_emb_vit_b_32"
# schemas/image-embedding.avsc before sha256, width and height were added (its docs left out).
PREVIOUS = json.loads("""{
  "type": "record", "name": "ImageEmbedding", "namespace": "clip_embedding_worker",
  "fields": [
    {"name": "id", "type": "string"},
    {"name": "source_uri", "type": "string"},
    {"name": "image_clip_emb_vit_b_32", "type": {"type": "array", "items": "float"}},
    {"name": "model_name", "type": "string"},
    {"name": "pretrained", "type": "string"},
    {"name": "dim", "type": "int"},
    {"name": "normalized", "type": "boolean"},
    {"name": "metadata", "type": {"type": "map", "values": "string"}, "default": {}},
    {"name": "input_topic", "type": "string"},
    {"name": "input_partition", "type": "int"},
    {"name": "input_offset", "type": "long"},
    {"name": "embedded_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
  ]
}""")
ADDED = {"sha256", "width", "height"}
ENCODER = EmbeddingEncoder(field_name=FIELD, model_name="ViT-B-32", pretrained="openai", normalized=True)
REQUEST = ImageRequest(id="img-1", uri=S3Uri("photos", "a.jpg"), metadata={"cam": "7"})
VECTOR = np.array([0.6, 0.8], dtype=np.float32)


def read(value: bytes, *, writer: dict[str, Any], reader: dict[str, Any]) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(value), fastavro.parse_schema(writer), fastavro.parse_schema(reader))
    assert isinstance(record, dict)
    return record


def test_a_record_written_with_the_new_schema_is_read_by_a_consumer_of_the_previous_one() -> None:
    value = ENCODER.encode(request=REQUEST, embedding=VECTOR, position=KafkaPosition("in", 2, 9), topic="out",
                           sha256="ab" * 32, width=640, height=480)
    old = read(value, writer=embedding_schema(FIELD), reader=PREVIOUS)
    new = read(value, writer=embedding_schema(FIELD), reader=embedding_schema(FIELD))
    assert set(old) == {field["name"] for field in PREVIOUS["fields"]}
    assert old == {name: new[name] for name in old}, "every field the old reader knows, as written"
    assert (new["sha256"], new["width"], new["height"]) == ("ab" * 32, 640, 480)


def test_a_record_written_with_the_previous_schema_reads_with_the_new_one_and_null_for_the_added_fields() -> None:
    record = ENCODER.record(request=REQUEST, embedding=VECTOR, position=KafkaPosition("in", 2, 9))
    old_record = {name: value for name, value in record.items() if name not in ADDED}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(PREVIOUS), old_record)
    new = read(buffer.getvalue(), writer=PREVIOUS, reader=embedding_schema(FIELD))
    assert {name: new[name] for name in ADDED} == dict.fromkeys(ADDED)
    assert new[FIELD] == [np.float32(0.6), np.float32(0.8)] and new["metadata"] == {"cam": "7"}
