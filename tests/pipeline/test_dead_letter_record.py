"""Building a dead-letter record never raises and never exceeds the producer's limit, whatever the
original record held: arbitrary keys, values, header lists and error messages (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.encoding import Source
from worker.errors import BadMessage
from worker.pipeline.deadletter import dead_letter_record
from worker.pipeline.work import Work

MAX_BYTES = 20_000

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
header_values = st.one_of(st.none(), st.binary(max_size=2_000), any_text)
headers = st.lists(st.tuples(any_text, header_values), max_size=50)


def work(key: bytes | None, value: bytes | None, header_list: list[tuple[str, str | bytes | None]]) -> Work:
    return Work(source=Source("in", 3, 42), generation=1, key=key, value=value, headers=header_list,
                timestamp_ms=1_700_000_000_000)


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40_000)),
    value=st.one_of(st.none(), st.binary(max_size=60_000)),
    header_list=headers,
    message=any_text,
    minimal=st.booleans(),
)
def test_any_record_gets_a_dead_letter_that_fits_and_encodes(
    key: bytes | None, value: bytes | None, header_list: list[tuple[str, str | bytes | None]], message: str,
    minimal: bool,
) -> None:
    record = dead_letter_record(work(key, value, header_list), BadMessage(message), stage="decode-message",
                                topic="dlq", max_bytes=MAX_BYTES, minimal=minimal)
    assert record.nbytes <= MAX_BYTES
    for name, header_value in record.headers:
        name.encode("utf-8")  # every header can be produced
        assert header_value is None or isinstance(header_value, bytes)
    added = dict(record.headers)
    assert added["dlt.original.offset"] == b"42" and added["dlt.exception.class"] == b"BadMessage"
    if value is not None and record.value != value:
        assert added["dlt.value.truncated"] == b"true"
        assert added["dlt.original.value.size"] == str(len(value)).encode()


def test_a_record_that_fits_is_copied_whole() -> None:
    original = work(b"key", b"value", [("trace", b"abc"), ("empty", None)])
    record = dead_letter_record(original, BadMessage("bad"), stage="decode-message", topic="dlq", max_bytes=MAX_BYTES)
    assert (record.key, record.value, record.timestamp_ms) == (b"key", b"value", 1_700_000_000_000)
    assert record.headers[:2] == [("trace", b"abc"), ("empty", None)]
    assert "dlt.value.truncated" not in dict(record.headers)


def test_a_lone_surrogate_in_the_reason_is_escaped_not_raised() -> None:
    record = dead_letter_record(work(None, b"v", []), BadMessage("id \ud800 is bad"), stage="decode-message",
                                topic="dlq", max_bytes=MAX_BYTES)
    assert dict(record.headers)["dlt.exception.message"] == b"id \\ud800 is bad"


def test_a_minimal_record_keeps_the_coordinates_and_drops_the_value() -> None:
    record = dead_letter_record(work(b"k", b"x" * 100, [("h", b"v")]), BadMessage("bad"), stage="fetch",
                                topic="dlq", max_bytes=MAX_BYTES, minimal=True)
    headers = dict(record.headers)
    assert record.value == b"" and "h" not in headers
    assert headers["dlt.original.value.size"] == b"100" and headers["dlt.original.partition"] == b"3"
