"""Input messages: bytes from Kafka in, an ImageRequest out, or a BadMessage saying why not.

Three encodings are accepted (schemas/image-reference.schema.json and schemas/image-reference.avsc):
JSON, plain schemaless Avro with the schema of image-reference.avsc, and Avro in the Confluent wire
format (byte 0 = 0x00, then a 4-byte schema id), read through a Schema Registry. ``auto`` tells them
apart by the first byte: JSON starts with ``{`` (or ``[``, to say it is not an object), Confluent frames with 0x00.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fastavro

from worker.errors import BadMessage
from worker.schemas import load_schema

InputFormat = Literal["json", "avro", "auto"]
_S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>.+)", re.DOTALL)
_INPUT_AVRO = fastavro.parse_schema(load_schema("image-reference.avsc"))

# Reads a Confluent-framed Avro value through a Schema Registry; None where no registry is set.
ConfluentDecoder = Callable[[bytes], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ImageRequest:
    id: str
    uri: S3Uri
    metadata: dict[str, str] = field(default_factory=dict)


def parse_s3_uri(text: str) -> S3Uri:
    match = _S3_URI.fullmatch(text)
    if match is None:
        raise BadMessage(f"uri must look like s3://bucket/key, got {text[:200]!r}")
    return S3Uri(bucket=match["bucket"], key=match["key"])


def decode_request(
    value: bytes | None, *, input_format: InputFormat = "auto", confluent: ConfluentDecoder | None = None
) -> ImageRequest:
    """Decode one input message value; raise BadMessage with a reason if it is not a valid request."""
    if not value:
        raise BadMessage("empty message value")
    if input_format == "json" or (input_format == "auto" and value.lstrip()[:1] in (b"{", b"[")):
        return _request_from_fields(_json_fields(value))
    if value[:1] == b"\x00" and len(value) > 5:
        if confluent is None:
            raise BadMessage("Confluent-framed Avro value, but no schema registry is configured")
        try:
            return _request_from_fields(confluent(value))
        except BadMessage:
            raise
        except Exception as exc:  # the registry client raises several unrelated types
            raise BadMessage(f"Confluent Avro value could not be read: {exc}") from exc
    return _request_from_fields(_avro_fields(value))


def _json_fields(value: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"malformed JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise BadMessage(f"JSON message must be an object, got {type(fields).__name__}")
    return fields


def _avro_fields(value: bytes) -> dict[str, Any]:
    buffer = io.BytesIO(value)
    try:
        fields = fastavro.schemaless_reader(buffer, _INPUT_AVRO, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
        raise BadMessage(f"malformed Avro ImageReference: {exc!r}") from None
    if buffer.tell() != len(value) or not isinstance(fields, dict):
        raise BadMessage("malformed Avro ImageReference: trailing bytes")
    return fields


def _request_from_fields(fields: dict[str, Any]) -> ImageRequest:
    image_id = fields.get("id")
    uri = fields.get("uri")
    if not isinstance(image_id, str) or not image_id:
        raise BadMessage("missing or empty field 'id'")
    if not isinstance(uri, str):
        raise BadMessage("missing field 'uri'")
    metadata = fields.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadMessage("field 'metadata' must be an object of strings")
    return ImageRequest(id=image_id, uri=parse_s3_uri(uri), metadata={str(k): v for k, v in metadata.items()})


def encode_request_json(request: ImageRequest) -> bytes:
    """The JSON form of a request, as upstream producers (and the demo) write it."""
    return json.dumps({"id": request.id, "uri": str(request.uri), "metadata": request.metadata}).encode()


def encode_request_avro(request: ImageRequest) -> bytes:
    """The plain Avro form of a request (schemas/image-reference.avsc)."""
    buffer = io.BytesIO()
    record = {"id": request.id, "uri": str(request.uri), "metadata": request.metadata}
    fastavro.schemaless_writer(buffer, _INPUT_AVRO, record)
    return buffer.getvalue()
