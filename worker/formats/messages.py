"""Input messages: bytes from Kafka in, an ImageRequest out, or a BadMessage saying why not.

Three encodings are accepted (schemas/image-reference.schema.json and schemas/image-reference.avsc):
JSON, plain schemaless Avro with the schema of image-reference.avsc, and Avro in the Confluent wire
format (byte 0 = 0x00, then a 4-byte schema id), read through a Schema Registry. ``auto`` tells them
apart by the first byte: JSON starts with ``{`` (or ``[``, to say it is not an object), Confluent frames
with 0x00, and neither is ever the first byte of a plain Avro request (its id length, a zigzag varint).
JSON may start with whitespace, and so may plain Avro (an id of 5, 6 or 16 bytes): such a value that is
not valid JSON is read as plain Avro before it is called malformed.

Every input is hostile until decoded: whatever the bytes, ``decode_request`` returns a request or
raises BadMessage (deep nesting, giant integers, invalid Unicode, a registry client that
raises anything), and its message quotes input only through worker.text.safe_text. Only a
RetryableError from the registry client passes through: the registry is down, not the value bad.
Strings that are not valid Unicode (lone surrogates, which JSON's ``\\ud800`` escape can make) are
refused: they could never be written to an Avro string, a Kafka key or a header. fastavro reads from an
in-memory buffer, whose ``read(n)`` returns at most the bytes that are there, so a declared length of
2**62 costs nothing: the memory a decode takes is bounded by the value's size, and that by the
consumer's fetch limits.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import fastavro

from worker.errors import BadMessage, RetryableError
from worker.schemas import load_schema
from worker.text import safe_text

InputFormat = Literal["json", "avro", "auto"]
_BUCKET = r"(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])"
_S3_URI = re.compile(rf"s3://{_BUCKET}/(?P<key>.+)", re.DOTALL)
_S3_PREFIX = re.compile(rf"s3://{_BUCKET}(?:/(?P<key>.*))?", re.DOTALL)
_INPUT_AVRO = fastavro.parse_schema(load_schema("image-reference.avsc"))
_JSON_STARTS = (b"{", b"[")

# Reads a Confluent-framed Avro value through a Schema Registry; None where no registry is set.
ConfluentDecoder = Callable[[bytes], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class S3Uri:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def __reduce__(self) -> tuple[type[S3Uri], tuple[str, str]]:
        return S3Uri, (self.bucket, self.key)  # a decoder's task: pickled as a tuple, not field by field


@dataclass(frozen=True, slots=True)
class ImageRequest:
    id: str
    uri: S3Uri
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reference:
    """A request's fields, checked, before its uri is read as s3:// (a batch manifest's uri may be a path)."""

    id: str
    uri: str
    metadata: dict[str, str]


def parse_s3_uri(text: str) -> S3Uri:
    match = _S3_URI.fullmatch(text)
    if match is None:
        raise BadMessage(f"uri must look like s3://bucket/key, got {safe_text(text, limit=200)!r}")
    return S3Uri(bucket=match["bucket"], key=match["key"])


def parse_s3_prefix(text: str) -> S3Uri | None:
    """``s3://bucket`` or ``s3://bucket/prefix`` (a listing: the key is the prefix, maybe empty), else None."""
    match = _S3_PREFIX.fullmatch(text)
    return None if match is None else S3Uri(bucket=match["bucket"], key=match["key"] or "")


def decode_request(
    value: bytes | None, *, input_format: InputFormat = "auto", confluent: ConfluentDecoder | None = None
) -> ImageRequest:
    """Decode one input message value; raise BadMessage with a reason if it is not a valid request."""
    if not value:
        raise BadMessage("empty message value")
    if input_format == "json" or (input_format == "auto" and value[:1] in _JSON_STARTS):
        return _request_from_fields(_json_fields(value))
    if input_format == "auto" and value.lstrip()[:1] in _JSON_STARTS:
        return _json_or_plain_avro(value)
    if value[:1] == b"\x00" and len(value) > 5:
        return _request_from_fields(_confluent_fields(value, confluent))
    return _request_from_fields(_avro_fields(value))


def _json_or_plain_avro(value: bytes) -> ImageRequest:
    """Whitespace, then ``{`` or ``[``: JSON, unless it is not and plain Avro is (see the docstring)."""
    try:
        return _request_from_fields(_json_fields(value))
    except BadMessage as json_error:
        try:
            return _request_from_fields(_avro_fields(value))
        except BadMessage:
            raise json_error from None


def _json_fields(value: bytes) -> object:
    try:
        return json.loads(value)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and integers past the int-string limit.
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"malformed JSON: {safe_text(exc)}") from None


def _avro_fields(value: bytes) -> object:
    buffer = io.BytesIO(value)
    try:
        fields = fastavro.schemaless_reader(buffer, _INPUT_AVRO, None)
    except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
        raise BadMessage(f"malformed Avro ImageReference: {safe_text(repr(exc))}") from None
    if buffer.tell() != len(value):
        raise BadMessage("malformed Avro ImageReference: trailing bytes")
    return fields


def _confluent_fields(value: bytes, confluent: ConfluentDecoder | None) -> object:
    if confluent is None:
        raise BadMessage("Confluent-framed Avro value, but no schema registry is configured")
    try:
        return confluent(value)
    except RetryableError:
        raise  # the registry is down, not this value: an outage, never a dead letter
    except Exception as exc:  # the registry client raises several unrelated types, RecursionError included
        raise BadMessage(f"Confluent Avro value could not be read: {safe_text(exc)}") from exc


def decode_reference_json(value: bytes) -> Reference:
    """One JSON request's fields, checked as decode_request checks them, the uri left as text; or BadMessage."""
    return _reference(_json_fields(value))


def _request_from_fields(fields: object) -> ImageRequest:
    reference = _reference(fields)
    return ImageRequest(id=reference.id, uri=parse_s3_uri(reference.uri), metadata=reference.metadata)


def _reference(fields: object) -> Reference:
    if not isinstance(fields, dict):
        raise BadMessage(f"message must be an object, got {type(fields).__name__}")
    image_id = fields.get("id")
    uri = fields.get("uri")
    metadata = fields.get("metadata")
    if not isinstance(image_id, str) or not image_id:
        raise BadMessage("missing or empty field 'id'")
    if not isinstance(uri, str):
        raise BadMessage("missing field 'uri'")
    if metadata is None:  # absent, or JSON null
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(t, str) for t in (*metadata, *metadata.values())):
        raise BadMessage("field 'metadata' must be an object of strings")
    _require_utf8("id", image_id)
    _require_utf8("uri", uri)
    for text in (*metadata, *metadata.values()):
        _require_utf8("metadata", text)
    return Reference(id=image_id, uri=uri, metadata=dict(metadata))


def _require_utf8(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMessage(f"field {name!r} is not valid UTF-8 text") from None


def encode_request_json(request: ImageRequest) -> bytes:
    """The JSON form of a request, as upstream producers (and the demo) write it."""
    return json.dumps({"id": request.id, "uri": str(request.uri), "metadata": request.metadata}).encode()


def encode_request_avro(request: ImageRequest) -> bytes:
    """The plain Avro form of a request (schemas/image-reference.avsc)."""
    buffer = io.BytesIO()
    record = {"id": request.id, "uri": str(request.uri), "metadata": request.metadata}
    fastavro.schemaless_writer(buffer, _INPUT_AVRO, record)
    return buffer.getvalue()
