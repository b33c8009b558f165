"""The worker's log: text or JSON lines, the level, a record's context, and librdkafka's own lines."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer

from worker.config import KafkaSettings, LogSettings, PipelineSettings, load_settings
from worker.errors import ConfigError
from worker.formats.positions import KafkaPosition
from worker.kafka.config import consumer_config
from worker.logs import LIBRDKAFKA_LOGGER, configure_logging, record_context

log = logging.getLogger("worker.test")
Configure = Callable[..., io.StringIO]


@pytest.fixture
def configured() -> Iterator[Configure]:
    """configured(level=..., format=...) sets up the worker's logging into a StringIO; undone after the test."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def configure(**settings: str) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(LogSettings(**settings), stream=stream)
        return stream

    yield configure
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_the_records_context(configured: Configure) -> None:
    stream = configured(format="json")
    log.warning("fetch failed: %s", "SlowDown", extra=record_context(KafkaPosition("images", 2, 41), "img-7"))
    line = json.loads(stream.getvalue())
    assert {k: line[k] for k in ("level", "logger", "message")} == {
        "level": "WARNING", "logger": "worker.test", "message": "fetch failed: SlowDown"}
    assert (line["topic"], line["partition"], line["offset"], line["id"]) == ("images", 2, 41, "img-7")
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_a_json_line_without_a_record_has_no_record_fields_and_an_exception_is_a_field(
    configured: Configure,
) -> None:
    stream = configured(format="json")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("embedding failed")
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines() if text.startswith("{")]
    assert line["message"] == "embedding failed" and line["level"] == "ERROR"
    assert "ValueError: boom" in line["exception"] and "Traceback" in line["exception"]
    assert not {"topic", "partition", "offset", "id"} & line.keys()


def test_the_level_setting_drops_less_severe_lines(configured: Configure) -> None:
    stream = configured(level="warning", format="text")  # lower case is accepted
    log.info("not shown")
    log.warning("shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("WARNING worker.test: shown")


def test_a_text_line_ends_with_the_records_coordinates_and_id(configured: Configure) -> None:
    stream = configured()
    log.info("dead-lettered", extra=record_context(KafkaPosition("images", 0, 7), "a b"))
    expected = "INFO worker.test: dead-lettered [topic=images partition=0 offset=7 id=a b]"
    assert stream.getvalue().rstrip("\n").endswith(expected)


@contextlib.contextmanager
def pytest_capture_off(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """pytest's own capture of the root logger's records, off: a record holding lone surrogates would
    otherwise reach the test report, which a parallel run (pytest-xdist) cannot send to its controller."""
    root = logging.getLogger()
    captures = [h for h in root.handlers if isinstance(h, type(caplog.handler))]
    for handler in captures:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in captures:
            root.addHandler(handler)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_input_text_that_utf8_cannot_hold_still_makes_a_writable_line(
    configured: Configure, log_format: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream = configured(format=log_format)
    with pytest_capture_off(caplog):
        log.warning("bad id %s", "x\ud800y", extra=record_context(KafkaPosition("images", 0, 1), "\udcff" * 5000))
    text = stream.getvalue()
    message = json.loads(text)["message"] if log_format == "json" else text
    message.encode("utf-8")  # raises if a lone surrogate got through
    assert "x\\ud800y" in message, "escaped, not dropped"
    assert len(text) < 5000, "the id is capped"


def test_an_unknown_log_format_is_refused_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIP_WORKER_LOG__FORMAT", "xml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert caught.value.setting == "CLIP_WORKER_LOG__FORMAT"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_librdkafkas_own_lines_arrive_through_logging_at_their_mapped_level(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{closed_port()}")
    consumer = Consumer(consumer_config(kafka, PipelineSettings()))  # debug off: only real events log
    try:
        consumer.subscribe(["images"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not caplog.records:
            consumer.poll(0.2)  # librdkafka's lines are handed over while the client is polled
    finally:
        consumer.close()
    refused = [r for r in caplog.records if r.name == LIBRDKAFKA_LOGGER and "Connection refused" in r.getMessage()]
    assert refused, [r.getMessage() for r in caplog.records]
    assert {r.levelno for r in refused} == {logging.ERROR}, "librdkafka's level 3 (LOG_ERR) is ERROR"
    assert "Connection refused" not in capfd.readouterr().err, "nothing printed past logging"
