"""Building a dead-letter record never raises and never exceeds the producer's limit, whatever the
original record held: arbitrary keys, values, header lists and error messages (Hypothesis). Its
headers are Kafka Connect's, so Connect's dead-letter tooling reads them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker import __version__
from worker.errors import BadMessage, UnexpectedError
from worker.formats.positions import KafkaPosition
from worker.formats.records import PolledRecord
from worker.images.work import Work
from worker.stream.deadletter import dead_letter_record
from worker.stream.produce import OutRecord

MAX_BYTES = 20_000
STACKTRACE = "__connect.errors.exception.stacktrace"

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
header_values = st.one_of(st.none(), st.binary(max_size=2_000), any_text)
headers = st.lists(st.tuples(any_text, header_values), max_size=50)


def work(key: bytes | None, value: bytes | None, header_list: list[tuple[str, str | bytes | None]]) -> Work:
    return Work(position=KafkaPosition("in", 3, 42),
                polled=PolledRecord(generation=1, key=key, value=value, headers=header_list,
                                    timestamp_ms=1_700_000_000_000))


def letter(original: Work, error: Exception, *, stage: str = "decode-message", minimal: bool = False) -> OutRecord:
    return dead_letter_record(original, error, stage=stage, topic="dlq", max_bytes=MAX_BYTES,
                              worker_id="clip-worker-pod-0", minimal=minimal)


def unexpected(message: str, *, depth: int = 0) -> UnexpectedError:
    """What failures.py makes of an exception no boundary knows, raised `depth` calls deep."""

    def fail(level: int) -> None:
        if level > 0:
            fail(level - 1)
        raise ValueError(message)

    try:
        fail(depth)
    except ValueError as exc:
        return UnexpectedError(exc, stage="preprocess")
    raise AssertionError("fail() always raises")


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40_000)),
    value=st.one_of(st.none(), st.binary(max_size=60_000)),
    header_list=headers,
    message=any_text,
    is_bug=st.booleans(),
    minimal=st.booleans(),
)
def test_any_record_gets_a_dead_letter_that_fits_and_encodes(
    key: bytes | None, value: bytes | None, header_list: list[tuple[str, str | bytes | None]], message: str,
    is_bug: bool, minimal: bool,
) -> None:
    error = unexpected(message) if is_bug else BadMessage(message)
    record = letter(work(key, value, header_list), error, minimal=minimal)
    assert record.nbytes <= MAX_BYTES
    for name, header_value in record.headers:
        name.encode("utf-8")  # every header can be produced
        assert header_value is None or isinstance(header_value, bytes)
    added = dict(record.headers)
    assert added["__connect.errors.offset"] == b"42"
    assert added["__connect.errors.exception.class.name"] == type(error).__name__.encode()
    assert (STACKTRACE in added) == is_bug, "a stack trace for a bug, and only then"
    if value is not None and record.value != value:
        assert added["clip_worker.value.truncated"] == b"true"
        assert added["clip_worker.original.value.size"] == str(len(value)).encode()


def test_a_record_that_fits_is_copied_whole_with_connects_headers_after_its_own() -> None:
    original = work(b"key", b"value", [("trace", b"abc"), ("empty", None)])
    record = letter(original, BadMessage("bad"))
    assert (record.key, record.value, record.timestamp_ms) == (b"key", b"value", 1_700_000_000_000)
    assert record.headers[:2] == [("trace", b"abc"), ("empty", None)]
    assert dict(record.headers[2:]) == {
        "__connect.errors.topic": b"in",
        "__connect.errors.partition": b"3",
        "__connect.errors.offset": b"42",
        "__connect.errors.stage": b"decode-message",
        "__connect.errors.exception.class.name": b"BadMessage",
        "__connect.errors.exception.message": b"bad",
        "clip_worker.original.timestamp": b"1700000000000",
        "clip_worker.fetch.attempts": b"0",
        "clip_worker.worker.id": b"clip-worker-pod-0",
        "clip_worker.worker.version": __version__.encode(),
    }


def test_a_lone_surrogate_in_the_reason_is_escaped_not_raised() -> None:
    record = letter(work(None, b"v", []), BadMessage("id \ud800 is bad"))
    assert dict(record.headers)["__connect.errors.exception.message"] == b"id \\ud800 is bad"


def test_a_minimal_record_keeps_the_coordinates_and_drops_the_value() -> None:
    record = letter(work(b"k", b"x" * 100, [("h", b"v")]), BadMessage("bad"), stage="fetch", minimal=True)
    headers = dict(record.headers)
    assert record.value == b"" and "h" not in headers
    assert headers["clip_worker.original.value.size"] == b"100" and headers["__connect.errors.partition"] == b"3"


def test_an_unexpected_error_carries_the_last_frames_where_it_was_raised_and_no_more() -> None:
    trace = dict(letter(work(b"k", b"v", []), unexpected("boom", depth=40)).headers)[STACKTRACE].decode()
    assert trace.startswith("Traceback (most recent call last):")
    assert trace.rstrip().endswith("ValueError: boom")
    assert "in fail" in trace, "the frames where it was raised"
    assert "in unexpected" not in trace, "not the outermost of the 42 frames"


def test_an_unexpected_errors_stack_trace_is_cut_to_a_bounded_length() -> None:
    trace = dict(letter(work(b"k", b"v", []), unexpected("x" * 100_000)).headers)[STACKTRACE]
    assert 4000 <= len(trace) < 4100 and trace.endswith(b"more characters]")
