"""The plain Avro body, written in parts (the fields around the embedding by fastavro, the float array
from the vector's bytes), is byte for byte what fastavro writes for the whole record."""

from __future__ import annotations

import io
from unittest import mock

import fastavro
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from worker.formats.encoding import EmbeddingEncoder, avro_float_array, embedding_schema
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition

FIELD = "image_clip_emb_vit_l_14"
ENCODER = EmbeddingEncoder(field_name=FIELD, model_name="ViT-L-14", pretrained="openai", normalized=True)
WHOLE = fastavro.parse_schema(embedding_schema(FIELD))

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
vectors = st.integers(1, 1024).flatmap(lambda n: arrays(np.float32, n, elements=st.floats(width=32)))


def whole_record_bytes(**kwargs: object) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, WHOLE, ENCODER.record(**kwargs))  # type: ignore[arg-type]
    return buffer.getvalue()


@settings(max_examples=150, deadline=None)
@given(
    embedding=vectors, request_id=texts.filter(bool), key=texts.filter(bool), metadata=st.dictionaries(texts, texts),
    offset=st.integers(0, 2**63 - 1), partition=st.integers(0, 2**31 - 1), sha256=st.none() | texts,
    width=st.none() | st.integers(1, 2**31 - 1), height=st.none() | st.integers(1, 2**31 - 1),
)
def test_the_body_is_byte_for_byte_fastavros_whole_record(
    embedding: np.ndarray, request_id: str, key: str, metadata: dict[str, str], offset: int, partition: int,
    sha256: str | None, width: int | None, height: int | None,
) -> None:
    fields = {"request": ImageRequest(id=request_id, uri=S3Uri("bucket", key), metadata=metadata),
              "embedding": embedding, "position": KafkaPosition("images", partition, offset), "sha256": sha256,
              "width": width, "height": height}
    with mock.patch("worker.formats.encoding.time.time", return_value=1_764_460_800.123):
        assert ENCODER.encode(topic="out", **fields) == whole_record_bytes(**fields)  # type: ignore[arg-type]


def test_a_float_array_reads_back_as_the_vector_it_was() -> None:
    vector = np.array([0.0, -0.0, 1.5, -3.25e-39, 3.4e38, np.float32(0.1)], dtype=np.float32)
    schema = fastavro.parse_schema({"type": "array", "items": "float"})
    got = fastavro.schemaless_reader(io.BytesIO(avro_float_array(vector)), schema, None)
    assert np.array_equal(np.array(got, dtype=np.float32).view(np.uint32), vector.view(np.uint32))
    assert avro_float_array(np.zeros(0, np.float32)) == b"\x00"
    assert avro_float_array(np.zeros(64, np.float32))[:2] == b"\x80\x01"  # 64: zig-zag 128, two varint bytes
