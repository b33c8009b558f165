"""The one channel a stop travels by: whatever stage meets a fatal condition reports it to the
pipeline's Stop (worker/stream/stop.py), nothing raises out of a stage, and the loop alone stops."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Credentials
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import FatalError, OutputRejected
from worker.formats.positions import KafkaPosition
from worker.formats.records import OutRecord, PolledRecord
from worker.images.work import Work
from worker.metrics import Metrics
from worker.stream.build import build_runtime
from worker.stream.produce import OnDone, OnRefused


class RefusingEmitter:
    """The broker's answer to every dead letter: refused, for a reason a smaller record cannot fix."""

    def __init__(self) -> None:
        self.refused: list[Work] = []

    def emit(self, work: Work, record: OutRecord | None, *, on_done: OnDone, on_refused: OnRefused) -> None:
        self.refused.append(work)
        on_refused(work, OutputRejected("dead-letter topic says no"))

    def forget(self, tp: object = None) -> None:
        return None


@pytest.mark.parametrize(
    ("on_error", "reason", "letters"),
    [
        pytest.param("dead-letter", "dead-letter record for .* was refused", 1, id="refused-dead-letter"),
        pytest.param("stop", "on_error is stop", 0, id="stop-policy"),
    ],
)
def test_the_loop_stops_on_a_fatal_reported_by_the_dead_letters_without_an_exception_escaping_a_stages_poll(
    on_error: str, reason: str, letters: int,
    aws_credentials: Credentials, photo_bucket: tuple[str, list[str]], make_settings: Callable[..., Settings],
    tiny_checkpoint: Path,
) -> None:
    settings = make_settings(photo_bucket[0], input_partitions=1, model={"preprocess_in": "threads"},
                             pipeline={"on_error": on_error})
    runtime = build_runtime(settings, embedder=Embedder.load(settings.model), metrics=Metrics())
    pipeline = runtime._pipeline
    emitter = RefusingEmitter()
    pipeline.dead_letters._emitter = emitter
    preprocess = pipeline.images[-1]
    escaped: list[BaseException] = []
    poll = preprocess.poll

    def watched_poll() -> None:
        try:
            poll()
        except BaseException as exc:
            escaped.append(exc)
            raise

    preprocess.poll = watched_poll  # type: ignore[method-assign]
    not_an_image = Work(
        position=KafkaPosition(settings.kafka.input_topic, 0, 0),
        polled=PolledRecord(generation=0, key=b"k", value=b"{}", headers=[], timestamp_ms=None),
        data=b"<html>not an image</html>",
    )
    preprocess.submit(not_an_image)
    guard = threading.Timer(60, runtime.request_stop)  # were the stop lost, run() would return instead
    guard.start()
    try:
        with pytest.raises(FatalError, match=reason):
            runtime.run()
    finally:
        guard.cancel()

    assert len(emitter.refused) == letters
    assert escaped == [], "the fatal condition was reported, not raised through the stage's poll"
    assert pipeline.stop.reason is not None
