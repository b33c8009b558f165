import json

import pytest

from worker.errors import BadMessage
from worker.formats.messages import ImageRequest, S3Uri, decode_request, encode_request_avro, encode_request_json

REQUEST = ImageRequest(id="img-1", uri=S3Uri("photos", "2026/a b/c.jpg"), metadata={"source": "cam-3"})


@pytest.mark.parametrize("encode", [encode_request_json, encode_request_avro])
def test_both_encodings_round_trip(encode) -> None:  # type: ignore[no-untyped-def]
    assert decode_request(encode(REQUEST)) == REQUEST


def test_metadata_is_optional_and_extra_fields_are_ignored() -> None:
    value = json.dumps({"id": "x", "uri": "s3://bucket/k.png", "caption": "ignored"}).encode()
    assert decode_request(value) == ImageRequest(id="x", uri=S3Uri("bucket", "k.png"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be an object"),
        (b'{"uri": "s3://b/k"}', "'id'"),
        (b'{"id": "a"}', "'uri'"),
        (b'{"id": "a", "uri": "https://example.com/x.jpg"}', "s3://bucket/key"),
        (b'{"id": "a", "uri": "s3://bucket/"}', "s3://bucket/key"),
        (b'{"id": "a", "uri": "s3://b/k", "metadata": {"n": 1}}', "metadata"),
        (b"\x00\x00\x00\x00\x07abc", "no schema registry"),
        (b"\x02\xff\xff", "malformed Avro"),
    ],
)
def test_bad_messages_say_why(value: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=reason) as caught:
        decode_request(value)
    assert caught.value.stage == "decode-message"


def test_forced_json_format_rejects_avro() -> None:
    with pytest.raises(BadMessage, match="malformed JSON"):
        decode_request(encode_request_avro(REQUEST), input_format="json")


@pytest.mark.parametrize("image_id", ["{abcd", "[abcde", "{" + "a" * 15, " \n{ab"])
def test_plain_avro_that_starts_with_whitespace_is_not_taken_for_json(image_id: str) -> None:
    # An id of 5, 6 or 16 bytes makes the Avro value's first byte "\n", "\f" or " ".
    request = ImageRequest(id=image_id, uri=S3Uri("photos", "a.jpg"))
    value = encode_request_avro(request)
    assert value[:1].isspace()
    assert decode_request(value) == request


def test_json_after_whitespace_is_json_and_its_errors_say_so() -> None:
    assert decode_request(b"\n  " + encode_request_json(REQUEST)) == REQUEST
    with pytest.raises(BadMessage, match="malformed JSON"):
        decode_request(b"\n  {not json")


@pytest.mark.parametrize("metadata", [[], "", 0, ["k", "v"]])
def test_metadata_that_is_not_an_object_is_refused_even_when_empty(metadata: object) -> None:
    value = json.dumps({"id": "x", "uri": "s3://bucket/k.png", "metadata": metadata}).encode()
    with pytest.raises(BadMessage, match="metadata"):
        decode_request(value)


def test_null_metadata_is_no_metadata() -> None:
    value = json.dumps({"id": "x", "uri": "s3://bucket/k.png", "metadata": None}).encode()
    assert decode_request(value).metadata == {}


def test_a_bad_uri_is_quoted_in_the_reason_cut_short() -> None:
    value = json.dumps({"id": "x", "uri": "https://" + "a" * 100_000}).encode()
    with pytest.raises(BadMessage, match=r"s3://bucket/key, got 'https://a+\.\.\.\[99808 more characters\]'"):
        decode_request(value)
