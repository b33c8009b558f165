"""The decoder processes (preprocess_in=processes) against the real S3 server: the same pixels as the
thread path, errors that keep their class and stage across the process boundary, and the two things
only processes can survive - a decoder killed by an image, and a decoder stuck on one.

Each test drives a DecoderProcesses directly, with real forkserver children, real shared memory and the
moto server over sockets; `target` wraps the real decoder main (decoders.serve) to crash or hang on
chosen keys, the way a codec bug would.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from harness.s3_server import S3Server
from tests.conftest import Credentials
from tests.pipeline.conftest import Sink
from worker.config import LogSettings, S3Settings
from worker.engine import Embedder
from worker.errors import DecoderCrashed, FatalError, RecordTimeout, SourceNotFound, UnexpectedError
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition
from worker.images.budget import InFlightBytes
from worker.images.processes import decoders
from worker.images.processes.decoders import DecoderSpec
from worker.images.processes.slots import SharedSlots, SlotLayout
from worker.images.processes.stage import DecoderProcesses
from worker.images.work import Work
from worker.metrics import Metrics

MiB = 1024 * 1024


def work_for(bucket: str, key: str, number: int) -> Work:
    work = Work(position=KafkaPosition("in", 0, number))
    work.request = ImageRequest(id=key, uri=S3Uri(bucket, key))
    return work


def serve_with_faults(spec: DecoderSpec, conn: Connection, decoding: Any) -> None:
    """The real decoder main, except that decoding a key starting "crash" segfaults, and one starting
    "hang" never returns (a codec stuck in a loop)."""
    real = decoders._Decoder.decode

    def decode(self: Any, task: decoders.Task, fetched: Any) -> Any:
        if task.uri.key.startswith("crash"):
            ctypes.string_at(0)  # a real segfault, on this thread, as a codec bug would
        if task.uri.key.startswith("hang"):
            time.sleep(3600)
        return real(self, task, fetched)

    decoders._Decoder.decode = decode  # type: ignore[method-assign]  # only in this child process
    decoders.serve(spec, conn, decoding)


def starts_slowly(spec: DecoderSpec, conn: Connection, decoding: Any) -> None:
    """The real decoder main after 3 s, as a decoder starting on a busy machine."""
    time.sleep(3)
    decoders.serve(spec, conn, decoding)


def dies_at_start(spec: DecoderSpec, conn: Connection, decoding: Any) -> None:
    os._exit(3)


@pytest.fixture
def make_stage(
    s3_server: S3Server, aws_credentials: Credentials, embedder: Embedder
) -> Iterator[Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]]]:
    stages: list[DecoderProcesses] = []

    def make(
        bucket: str, *, processes: int = 2, threads: int = 2, timeout: float = 30.0, slots: int = 8,
        target: Callable[[DecoderSpec, Connection, Any], None] = decoders.serve,
    ) -> tuple[DecoderProcesses, SharedSlots, Sink]:
        s3 = S3Settings(endpoint_url=s3_server.endpoint_url, region="us-east-1", allowed_sources=(bucket,),
                        max_attempts=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
        preprocessor = embedder.preprocessor
        shape, dtype = preprocessor.output_shape()
        shared = SharedSlots(SlotLayout(count=slots, shape=shape, dtype=dtype))
        spec = DecoderSpec(
            s3=s3, cfg=preprocessor.cfg, mode=preprocessor.mode, max_pixels=preprocessor.max_pixels,
            exif_orientation=False, slots=shared.name, layout=shared.layout, threads=threads, fetch_timeout=timeout,
            log=LogSettings(), served=decoders.last_success(), environ=dict(os.environ),
        )
        sink = Sink()
        stage = DecoderProcesses(processes=processes, spec=spec, slots=shared, next_step=sink, failures=sink,
                             metrics=Metrics(), timeout=timeout, budget=InFlightBytes(limit=256 * MiB),
                             reserve_bytes=MiB, target=target)
        stages.append(stage)
        return stage, shared, sink

    yield make
    for stage in stages:
        stage.close(time.monotonic() + 5)



def fault_then_photos(s3_client: Any, bucket: str, photo: tuple[str, bytes], fault_key: str) -> str:
    """Store the photo under its name and under `fault_key` (which serve_with_faults acts on)."""
    name, data = photo
    for key in (name, fault_key):
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
    return name


def submit_fault_then_photos(stage: DecoderProcesses, bucket: str, fault_key: str, name: str, *, photos: int) -> None:
    """The faulty record at offset 0, then `photos` good ones at offsets 1.."""
    stage.submit(work_for(bucket, fault_key, 0))
    for i in range(1, photos + 1):
        stage.submit(work_for(bucket, name, i))


def run_until(stage: DecoderProcesses, sink: Sink, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while sink.finished < expected:
        assert time.monotonic() < deadline, f"{sink.finished} of {expected} finished"
        stage.poll()
        time.sleep(0.005)


def test_decoder_processes_give_the_pixels_and_digest_the_thread_path_gives(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_client: Any, s3_bucket: str,
    small_photos: list[tuple[str, bytes]], embedder: Embedder,
) -> None:
    import hashlib

    for name, data in small_photos:
        s3_client.put_object(Bucket=s3_bucket, Key=name, Body=data)
    stage, slots, sink = make_stage(s3_bucket, slots=4)  # fewer slots than records: they must come back
    records = [work_for(s3_bucket, name, i) for i, (name, _) in enumerate(small_photos * 3)]
    for work in records:
        stage.submit(work)
    expected = {name: data for name, data in small_photos}
    deadline = time.monotonic() + 60
    while len(sink.done) < len(records):
        assert not sink.failed, sink.failed
        assert time.monotonic() < deadline
        stage.poll()
        for work in sink.done:  # checked and dropped as they come, freeing their slots
            if work.prepared is not None:
                assert work.request is not None
                data = expected[work.request.uri.key]
                assert (work.prepared.pixels == embedder.prepare(data).pixels).all()
                assert work.sha256 == hashlib.sha256(data).hexdigest() and work.reserved == 0
                work.prepared = None
        time.sleep(0.005)
    assert slots.free() == slots.layout.count


def test_errors_keep_their_class_stage_and_attempts_across_the_process_boundary(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_client: Any, s3_bucket: str,
) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="page.html", Body=b"<!DOCTYPE html><html></html>")
    stage, slots, sink = make_stage(s3_bucket)
    stage.submit(work_for(s3_bucket, "missing.jpg", 0))
    stage.submit(work_for(s3_bucket, "page.html", 1))
    run_until(stage, sink, 2)
    failed = {w.request.uri.key: (e, stage_name, w.fetch_attempts) for w, e, stage_name in sink.failed if w.request}
    error, where, attempts = failed["missing.jpg"]
    assert isinstance(error, SourceNotFound) and where == "fetch" and attempts == 1
    error, where, attempts = failed["page.html"]
    assert type(error).__name__ == "NotAnImage" and error.stage == "decode-image" and "HTML" in str(error)
    assert slots.free() == slots.layout.count


def test_a_record_that_kills_two_decoders_fails_as_decoder_crashed_and_the_rest_are_finished(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_client: Any, s3_bucket: str,
    small_photos: list[tuple[str, bytes]],
) -> None:
    name = fault_then_photos(s3_client, s3_bucket, small_photos[0], "crash.jpg")
    stage, _slots, sink = make_stage(s3_bucket, target=serve_with_faults, slots=16)
    submit_fault_then_photos(stage, s3_bucket, "crash.jpg", name, photos=8)
    run_until(stage, sink, 9)
    assert [(type(e), w.position.offset, s) for w, e, s in sink.failed] == [(DecoderCrashed, 0, "preprocess")]
    assert "died 2 times" in str(sink.failed[0][1])
    assert sorted(w.position.offset for w in sink.done) == list(range(1, 9))
    stage.submit(work_for(s3_bucket, name, 9))  # the replacements work
    run_until(stage, sink, 10)
    assert len(sink.done) == 9


def test_a_record_stuck_in_a_decoder_times_out_and_its_decoder_is_replaced(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_client: Any, s3_bucket: str,
    small_photos: list[tuple[str, bytes]],
) -> None:
    name = fault_then_photos(s3_client, s3_bucket, small_photos[0], "hang.jpg")
    stage, _slots, sink = make_stage(s3_bucket, processes=1, threads=2, timeout=2.0, target=serve_with_faults)
    submit_fault_then_photos(stage, s3_bucket, "hang.jpg", name, photos=4)
    started = time.monotonic()
    run_until(stage, sink, 5)
    assert [(type(e), w.position.offset) for w, e, _ in sink.failed] == [(RecordTimeout, 0)]
    assert time.monotonic() - started < 15
    assert sorted(w.position.offset for w in sink.done) == [1, 2, 3, 4]


def test_a_decoder_slow_to_start_does_not_count_against_the_deadlines_of_the_records_waiting_for_it(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_client: Any, s3_bucket: str,
    small_photos: list[tuple[str, bytes]],
) -> None:
    name, data = small_photos[0]
    s3_client.put_object(Bucket=s3_bucket, Key=name, Body=data)
    stage, _slots, sink = make_stage(s3_bucket, processes=1, timeout=2.0, target=starts_slowly)
    for offset in range(4):
        stage.submit(work_for(s3_bucket, name, offset))
    run_until(stage, sink, 4)
    assert sink.failed == [] and sorted(w.position.offset for w in sink.done) == [0, 1, 2, 3]


def test_decoders_that_keep_dying_before_finishing_anything_stop_the_worker(
    make_stage: Callable[..., tuple[DecoderProcesses, SharedSlots, Sink]], s3_bucket: str,
) -> None:
    stage, _slots, _sink = make_stage(s3_bucket, processes=1, target=dies_at_start)
    deadline = time.monotonic() + 30
    with pytest.raises(FatalError, match="decoder processes died in a row"):
        while time.monotonic() < deadline:
            stage.poll()
            time.sleep(0.01)


def test_record_timeouts_and_unexpected_errors_survive_pickling_with_their_stage_and_trace() -> None:
    timeout = RecordTimeout("slow", stage="fetch")
    timeout.attempts = 3  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(timeout))
    assert (type(copy), str(copy), copy.stage, copy.attempts) == (RecordTimeout, "slow", "fetch", 3)
    try:
        {}["missing"]
    except KeyError as exc:
        unexpected = UnexpectedError(exc, stage="preprocess")
    copied = pickle.loads(pickle.dumps(unexpected))
    assert (str(copied), copied.stage) == ("KeyError: 'missing'", "preprocess")
    assert "KeyError" in copied.trace() and copied.trace() == unexpected.trace()
