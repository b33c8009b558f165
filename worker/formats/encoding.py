"""Output records: one Avro ImageEmbedding per image (schemas/image-embedding.avsc).

The schema file names the embedding field for ViT-B-32; the field is renamed to the configured
model's field name here, once, at startup. Two framings:
- ``avro``: schemaless Avro body; the headers name the schema and give its CRC-64-AVRO fingerprint,
  so a reader can pick the right schema (the field name differs per model).
- ``confluent``: the Confluent wire format through a Schema Registry (0x00, schema id, body).

The plain body is written in three parts, because an Avro record is its fields' encodings one after
the other: fastavro writes the fields before the embedding and those after it (two records cut from
the schema), and the float array between them is the vector's little-endian bytes as they lie,
framed as one Avro block (count, items, 0). Byte for byte what fastavro writes for the whole record
(tests), at a fraction of its cost: fastavro's writer converts each float through Python, on the
device thread, under the GIL (bench/encode_bench.py; BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import fingerprint, to_parsing_canonical_form

from worker.errors import EncodeError, RegistryUnavailable
from worker.formats.messages import ImageRequest
from worker.formats.positions import Position
from worker.formats.records import Headers
from worker.schemas import load_schema
from worker.text import safe_text

_TEMPLATE_FIELD = "image_clip_emb_vit_b_32"
# Serialises a record dict through a Schema Registry (Confluent framing) for a topic.
RegistrySerializer = Callable[[dict[str, Any], str], bytes]



def embedding_schema(field_name: str) -> dict[str, Any]:
    """schemas/image-embedding.avsc with the embedding field renamed to `field_name`."""
    schema: dict[str, Any] = copy.deepcopy(load_schema("image-embedding.avsc"))
    for avro_field in schema["fields"]:
        if avro_field["name"] == _TEMPLATE_FIELD:
            avro_field["name"] = field_name
    return schema


class EmbeddingEncoder:
    """Turns (request, embedding, position) into the output value and its headers."""

    def __init__(
        self,
        *,
        field_name: str,
        model_name: str,
        pretrained: str,
        normalized: bool,
        registry_serializer: RegistrySerializer | None = None,
    ) -> None:
        self.schema = embedding_schema(field_name)
        self._parsed = fastavro.parse_schema(self.schema)
        self._before, self._after = _around(self.schema, field_name)
        self._field_name = field_name
        self._model_name = model_name
        self._pretrained = pretrained
        self._normalized = normalized
        self._registry_serializer = registry_serializer
        canonical = to_parsing_canonical_form(self._parsed)
        self.headers: Headers = [
            ("content-type", b"application/avro"),
            ("avro.schema.name", b"clip_embedding_worker.ImageEmbedding"),
            ("avro.schema.fingerprint", fingerprint(canonical, "CRC-64-AVRO").encode()),
            ("embedding.field", field_name.encode()),
        ]

    def record(
        self, *, request: ImageRequest, embedding: np.ndarray, position: Position, sha256: str | None = None,
        width: int | None = None, height: int | None = None,
    ) -> dict[str, Any]:
        """The output record; sha256, width and height are null where the caller does not know them."""
        return {
            **self._fields(request=request, position=position, dim=int(embedding.shape[0]), sha256=sha256, width=width,
                           height=height),
            self._field_name: embedding.astype(np.float32, copy=False).tolist(),
        }

    def _fields(
        self, *, request: ImageRequest, position: Position, dim: int, sha256: str | None, width: int | None,
        height: int | None,
    ) -> dict[str, Any]:
        """Every field of the record but the embedding."""
        input_topic, input_partition, input_offset = position.coordinates()
        return {
            "id": request.id,
            "source_uri": str(request.uri),
            "model_name": self._model_name,
            "pretrained": self._pretrained,
            "dim": dim,
            "normalized": self._normalized,
            "metadata": request.metadata,
            "input_topic": input_topic,
            "input_partition": input_partition,
            "input_offset": input_offset,
            "embedded_at": int(time.time() * 1000),
            "sha256": sha256,
            "width": width,
            "height": height,
        }

    def encode(
        self, *, request: ImageRequest, embedding: np.ndarray, position: Position, topic: str,
        sha256: str | None = None, width: int | None = None, height: int | None = None,
    ) -> bytes:
        try:
            if self._registry_serializer is not None:
                record = self.record(request=request, embedding=embedding, position=position, sha256=sha256,
                                     width=width, height=height)
                return self._registry_serializer(record, topic)
            fields = self._fields(request=request, position=position, dim=int(embedding.shape[0]), sha256=sha256,
                                  width=width, height=height)
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, self._before, fields)
            buffer.write(avro_float_array(embedding))
            fastavro.schemaless_writer(buffer, self._after, fields)
            return buffer.getvalue()
        except RegistryUnavailable:
            raise  # an outage, not this record's fault
        except Exception as exc:  # fastavro and the registry client raise many unrelated types
            raise EncodeError(f"output record could not be encoded: {safe_text(repr(exc))}") from exc

    def decode(self, value: bytes) -> dict[str, Any]:
        """Read back a plain Avro value written by encode() (tests, the demo, consumers in Python)."""
        record = fastavro.schemaless_reader(io.BytesIO(value), self._parsed, None)
        assert isinstance(record, dict), "the schema is a record"
        return record


def avro_float_array(vector: np.ndarray) -> bytes:
    """An Avro array of float: one block of len(vector) little-endian float32s, then the 0 that ends it."""
    items = np.ascontiguousarray(vector, dtype="<f4")
    if items.ndim != 1:
        raise ValueError(f"an embedding is one vector, not shape {items.shape}")
    return _avro_long(len(items)) + items.tobytes() + b"\x00" if len(items) else b"\x00"


def _avro_long(value: int) -> bytes:
    """Avro's long: zig-zag, then base-128 varint, low group first."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _around(schema: dict[str, Any], field_name: str) -> tuple[Any, Any]:
    """Two records cut from `schema`: the fields before `field_name`, and those after it, parsed."""
    fields = schema["fields"]
    at = next(i for i, avro_field in enumerate(fields) if avro_field["name"] == field_name)

    def cut(part: str, kept: list[dict[str, Any]]) -> Any:
        return fastavro.parse_schema({"type": "record", "name": schema["name"] + part, "fields": kept},
                                     named_schemas={})

    return cut("Before", fields[:at]), cut("After", fields[at + 1:])
