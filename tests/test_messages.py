import json

import pytest

from worker.errors import BadMessage
from worker.messages import ImageRequest, S3Uri, decode_request, encode_request_avro, encode_request_json

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
