"""Hostile input values: whatever the bytes, decode_request returns a request or raises BadMessage.

The example tests are the crash classes found before; the properties look for the next
ones: arbitrary bytes, JSON trees (deep, huge integers, lone surrogates), and valid Avro requests
truncated, extended or with bytes overwritten, each read as json, avro and auto. A request that comes
out must be writable (UTF-8 strings) and must survive a round trip through both encoders.
"""

import io
import json
import tracemalloc
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import BadMessage, RetryableError
from worker.formats.messages import (
    ImageRequest,
    InputFormat,
    S3Uri,
    decode_request,
    encode_request_avro,
    encode_request_json,
)
from worker.schemas import load_schema

FORMATS: tuple[InputFormat, ...] = ("json", "avro", "auto")
URI = "s3://bucket/k.jpg"
INPUT_SCHEMA = fastavro.parse_schema(load_schema("image-reference.avsc"))


def read_confluent_body(value: bytes) -> dict[str, Any]:
    """A stand-in for the registry client: reads the framed body as plain Avro, raising what fastavro raises."""
    fields: dict[str, Any] = fastavro.schemaless_reader(io.BytesIO(value[5:]), INPUT_SCHEMA, None)
    return fields


def assert_decodes_or_refuses(value: bytes, input_format: InputFormat) -> None:
    try:
        request = decode_request(value, input_format=input_format, confluent=read_confluent_body)
    except BadMessage as exc:
        str(exc).encode("utf-8")  # the reason goes into a header and a log line
        return
    for text in (request.id, str(request.uri), *request.metadata, *request.metadata.values()):
        text.encode("utf-8")
    assert decode_request(encode_request_json(request), input_format="json") == request
    assert decode_request(encode_request_avro(request), input_format="avro") == request
    for encode in (encode_request_json, encode_request_avro):
        assert decode_request(encode(request), input_format="auto") == request


def varint(n: int) -> bytes:
    """Avro's zigzag varint of n."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def request_with(fields_json: str) -> bytes:
    """A JSON request whose fields are overridden by ``fields_json`` (escapes such as \\ud800 decoded)."""
    return json.dumps({"id": "a", "uri": URI} | json.loads(fields_json)).encode()


# Each measured crash class, as it arrived.


def test_json_nested_past_the_recursion_limit_is_a_bad_message() -> None:
    with pytest.raises(BadMessage, match="malformed JSON"):
        decode_request(b'{"id": "a", "uri": "s3://bucket/k", "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_an_integer_past_the_int_string_limit_is_a_bad_message() -> None:
    with pytest.raises(BadMessage, match="malformed JSON"):
        decode_request(b'{"id": ' + b"9" * 5000 + b', "uri": "s3://bucket/k"}', input_format="json")


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (request_with(r'{"id": "img-\ud800"}'), "id"),
        (request_with(r'{"uri": "s3://bucket/\udfff.jpg"}'), "uri"),
        (request_with(r'{"uri": "\ud800"}'), "uri"),
        (request_with(r'{"metadata": {"\udc00": "v"}}'), "metadata"),
        (request_with(r'{"metadata": {"k": "\ud83d"}}'), "metadata"),
        (b'{"id": "\xed\xa0\x80", "uri": "s3://bucket/k"}', "id"),  # the surrogate UTF-8-encoded
    ],
)
def test_text_that_is_not_valid_unicode_is_a_bad_message(value: bytes, field: str) -> None:
    with pytest.raises(BadMessage, match=f"field '{field}' is not valid UTF-8 text"):
        decode_request(value)


@pytest.mark.parametrize(
    "error", [RecursionError("deep"), KeyError("k"), ValueError("\ud800" * 100_000), MemoryError()]
)
def test_a_confluent_decoder_that_raises_anything_gives_an_encodable_bad_message(error: Exception) -> None:
    def decoder(value: bytes) -> dict[str, Any]:
        raise error

    with pytest.raises(BadMessage, match="Confluent Avro value could not be read") as caught:
        decode_request(b"\x00\x00\x00\x00\x01body", confluent=decoder)
    assert len(str(caught.value).encode("utf-8")) < 10_000


def test_a_confluent_decoder_that_says_the_registry_is_down_is_not_a_bad_message() -> None:
    class RegistryDown(RetryableError):
        pass

    def decoder(value: bytes) -> dict[str, Any]:
        raise RegistryDown("no answer")

    with pytest.raises(RegistryDown):
        decode_request(b"\x00\x00\x00\x00\x01body", confluent=decoder)


@pytest.mark.parametrize(
    "returned", [{"id": "a", "uri": URI, "metadata": {1: "v"}}, ["id", "a"], {"id": "a", "uri": URI, "metadata": []}]
)
def test_a_confluent_record_of_the_wrong_shape_is_a_bad_message(returned: Any) -> None:
    with pytest.raises(BadMessage, match=r"metadata|must be an object"):
        decode_request(b"\x00\x00\x00\x00\x01body", confluent=lambda value: returned)


@pytest.mark.parametrize(
    "value",
    [
        varint(2**62) + b"abc",  # the id's length
        varint(1) + b"a" + varint(len(URI)) + URI.encode() + varint(2**62) + b"\x02k",  # the map's block count
        varint(1) + b"a" + varint(len(URI)) + URI.encode() + varint(-(2**62)) + varint(2**62) + b"\x02k",
        b"\xff" * 20 + b"\x01",  # a varint longer than 64 bits
    ],
)
def test_a_declared_avro_length_of_2_to_the_62_is_a_bad_message_and_allocates_nothing(value: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(BadMessage, match="malformed Avro"):
            decode_request(value, input_format="avro")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_duplicate_json_keys_are_accepted_and_the_last_one_wins() -> None:
    value = b'{"id": "first", "uri": "s3://bucket/k", "id": "last"}'
    assert decode_request(value) == ImageRequest(id="last", uri=S3Uri("bucket", "k"))


# The properties.

FUZZ = settings(max_examples=200, deadline=None)
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20)  # lone surrogates included
valid_text = st.text(max_size=20)  # hypothesis leaves out surrogates by default
scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3))
uris = st.builds("s3://{}/{}".format, st.sampled_from(["bucket", "b.c-d", "B", "x"]), any_text) | any_text
request_like = st.fixed_dictionaries(
    {"id": any_text | trees, "uri": uris | trees},
    optional={"metadata": st.dictionaries(any_text, any_text, max_size=3) | trees},
)
# Nesting on both sides of the recursion limit, integers past the int-string limit, lone surrogates.
hostile_fragments = (
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.integers(2, 3000).map(lambda n: b'{"k": ' * n + b'"v"' + b"}" * n)  # n=1 is valid metadata
    | st.integers(4301, 10_000).map(lambda n: b"9" * n)
    | st.sampled_from([b'"\\ud800"', b'"\\udfff tail"', b'"\xed\xa0\x80"', b"1e999999", b"NaN"])
)
requests = st.builds(
    ImageRequest,
    id=valid_text.filter(bool),
    uri=st.builds(S3Uri, st.sampled_from(["bucket", "b.c-d"]), valid_text.filter(bool)),
    metadata=st.dictionaries(valid_text, valid_text, max_size=3),
)


def json_bytes(tree: object, ascii_only: bool) -> bytes:
    # Without ensure_ascii a lone surrogate is written raw: "surrogatepass" makes the bytes json.loads reads.
    return json.dumps(tree, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@FUZZ
@given(st.binary(max_size=200) | st.builds(bytes.__add__, st.sampled_from([b"{", b" [", b"\n", b"\x00"]), st.binary()))
def test_arbitrary_bytes_decode_or_are_bad_messages(value: bytes) -> None:
    for input_format in FORMATS:
        assert_decodes_or_refuses(value, input_format)


@FUZZ
@given(request_like | trees, st.booleans())
def test_arbitrary_json_trees_decode_or_are_bad_messages(tree: object, ascii_only: bool) -> None:
    for input_format in FORMATS:
        assert_decodes_or_refuses(json_bytes(tree, ascii_only), input_format)


@FUZZ
@given(st.sampled_from(["id", "uri", "metadata"]), hostile_fragments)
def test_hostile_json_in_any_field_is_a_bad_message(name: str, fragment: bytes) -> None:
    value = json.dumps({"id": "a", "uri": URI, name: "HERE"}).encode().replace(b'"HERE"', fragment)
    for input_format in FORMATS:
        with pytest.raises(BadMessage):
            decode_request(value, input_format=input_format)


@FUZZ
@given(requests, st.data())
def test_mutated_avro_requests_decode_or_are_bad_messages(request: ImageRequest, data: st.DataObject) -> None:
    value = encode_request_avro(request)
    assert_decodes_or_refuses(value, "auto")
    cut = data.draw(st.integers(0, len(value)))
    mutated = data.draw(
        st.sampled_from(
            [
                value[:cut],
                value + data.draw(st.binary(min_size=1, max_size=10)),
                value[:cut] + data.draw(st.binary(min_size=1, max_size=10)) + value[cut + 1 :],
                value[:cut] + varint(data.draw(st.integers(-(2**63), 2**63 - 1))) + value[cut:],
                b"\x00\x00\x00\x00\x01" + value[:cut],
            ]
        )
    )
    for input_format in FORMATS:
        assert_decodes_or_refuses(mutated, input_format)


@FUZZ
@given(requests, st.sampled_from([b"", b" ", b"\n\t "]))
def test_every_valid_request_round_trips_in_every_format(request: ImageRequest, padding: bytes) -> None:
    assert decode_request(padding + encode_request_json(request), input_format="auto") == request
    assert decode_request(encode_request_avro(request), input_format="auto") == request
