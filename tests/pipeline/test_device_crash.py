"""A JPEG that crashes the device's decoder costs one restart, not a crash loop (the device journal).

`python -m worker` runs as its own process, as a pod does, against the real broker and S3, decoding
JPEGs on the device (decode=gpu; on the CPU-only tiny model, the same code path). A stand-in for
nvJPEG's crash (harness/nvjpeg_crash) kills the process with SIGSEGV when the decoder is handed the
hostile JPEG, as nvJPEG's header parser did. The restarted worker must decode that record's batch on
the CPU: the hostile JPEG is one that Pillow reads, so every record, it included, gets its embedding.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.kafka_broker import KafkaBroker
from harness.kafka_io import produce_requests, read_all, wait_until_committed
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.pipeline.conftest import FAST_TINY, ids_of, requests_for
from worker.config import Settings
from worker.formats.messages import ImageRequest, S3Uri

MARK = "crash-the-device-decoder"
CRASHER = Path(__file__).resolve().parents[2] / "harness" / "nvjpeg_crash"


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: a baseline JPEG that every decoder reads as before."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_a_jpeg_that_crashes_the_device_decoder_is_decoded_on_the_cpu_after_the_restart(
    kafka_broker: KafkaBroker,
    s3_server: S3Server,
    s3_client: Any,
    photo_bucket: tuple[str, list[str]],
    small_photos: list[tuple[str, bytes]],
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    bucket, keys = photo_bucket
    s3_client.put_object(Bucket=bucket, Key="hostile.jpg", Body=_with_comment(small_photos[0][1], MARK))
    settings = make_settings(
        bucket, input_partitions=2, model=FAST_TINY | {"decode": "gpu"},
        kafka={"group_instance_id": "worker-0",  # the restart takes over at once, as a StatefulSet's pod does
               "consumer_config": {"auto.commit.interval.ms": "200", "session.timeout.ms": "6000"}},
        pipeline={"max_batch_wait_ms": 20},
    )
    requests = requests_for(bucket, keys, 30)
    requests.insert(11, ImageRequest(id="hostile", uri=S3Uri(bucket, "hostile.jpg")))
    produce_requests(kafka_broker.bootstrap_servers, settings.kafka.input_topic, requests)
    python_path = os.pathsep.join(filter(None, (str(CRASHER), os.environ.get("PYTHONPATH"))))
    env = settings_env(settings) | s3_server.env() | {
        "PYTHONPATH": python_path, "CLIP_TEST_DECODER_CRASH_MARK": MARK,
    }

    crashed = WorkerProcess(env, log_path=tmp_path / "crashed.log").start()
    try:
        assert crashed.process is not None
        assert crashed.process.wait(timeout=90) == -signal.SIGSEGV, crashed.log_tail()
    finally:
        crashed.close()
    assert "JPEG decode on the device" in crashed.log_path.read_text()

    restarted = WorkerProcess(env, log_path=tmp_path / "restarted.log").start()
    try:
        deadline = time.monotonic() + 90
        while True:  # until everything is committed, or the restart dies on the same JPEG
            assert restarted.process is not None and restarted.process.poll() is None, restarted.log_tail()
            try:
                wait_until_committed(kafka_broker.bootstrap_servers, settings.kafka.group_id,
                                     settings.kafka.input_topic, timeout=0.5)
                break
            except TimeoutError:
                assert time.monotonic() < deadline, restarted.log_tail()
        assert restarted.terminate(timeout=60) == 0, restarted.log_tail()
    finally:
        restarted.close()

    log = restarted.log_path.read_text()
    assert "was on the device when a worker stopped: decoding it on the CPU" in log, restarted.log_tail()
    outputs = read_all(kafka_broker.bootstrap_servers, settings.kafka.output_topic)
    assert set(ids_of(outputs)) == {request.id for request in requests}, "every record, the hostile one too"
    assert read_all(kafka_broker.bootstrap_servers, settings.kafka.dead_letter_topic) == []
