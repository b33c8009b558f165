"""The device stage on its own: what it hands on, and what it lets go of on the device thread."""

import io
import threading
import time

import numpy as np
from PIL import Image

from tests.pipeline.conftest import Sink
from worker.encoding import Source
from worker.engine import Embedder
from worker.errors import TruncatedImage
from worker.metrics import Metrics
from worker.pipeline.inference import InferenceStage
from worker.pipeline.wake import Wake
from worker.pipeline.work import Work


def test_embedded_records_reach_the_next_step_without_their_pixels_released_off_the_main_thread(
    embedder: Embedder, small_photos: list[tuple[str, bytes]],
) -> None:
    released_on: list[str] = []

    class Noted(Work):
        """Notes which thread lets go of its prepared image."""

        def __setattr__(self, name: str, value: object) -> None:
            if name == "prepared" and value is None:
                released_on.append(threading.current_thread().name)
            super().__setattr__(name, value)

    batch = []
    for n, (_, data) in enumerate(small_photos[:4]):
        work = Noted(source=Source("t", 0, n), generation=0, key=None, value=None, headers=[], timestamp_ms=None)
        work.prepared = embedder.prepare(data)
        batch.append(work)
    released_on.clear()  # the constructor's own None
    sink = Sink()
    wake = Wake()
    stage = InferenceStage(embed=embedder.embed, next_step=sink, failures=sink, metrics=Metrics(), timeout=60,
                           wake=wake)
    stage.submit(batch)
    began = time.monotonic()
    wake.wait(30)  # the finished batch ends the wait
    assert time.monotonic() - began < 20
    stage.poll()
    stage.close(time.monotonic() + 5)
    wake.close()
    assert (len(sink.done), sink.failed) == (len(batch), [])
    assert all(work.prepared is None and work.embedding is not None for work in sink.done)
    assert released_on and threading.main_thread().name not in released_on, released_on


def test_records_that_come_as_bytes_are_decoded_on_the_device_thread_and_one_no_decoder_reads_fails_alone(
    embedder: Embedder, small_photos: list[tuple[str, bytes]],
) -> None:
    gpu = Embedder(settings=embedder.settings.model_copy(update={"decode": "gpu"}), tower=embedder.tower)
    photos = [data for _, data in small_photos[:3]]
    batch = [Work(source=Source("t", 0, n), generation=0, key=None, value=None, headers=[], timestamp_ms=None)
             for n in range(4)]
    batch[0].prepared = embedder.prepare(photos[0])  # from the preprocess threads
    for work, data, whole in zip(batch[1:], (photos[1], photos[2][:-300], photos[2]), (1, 2, 2), strict=True):
        work.data, work.jpeg = data, gpu.device_header(photos[whole])  # routed past them as bytes
    sink, metrics, wake = Sink(), Metrics(), Wake()
    stage = InferenceStage(embed=gpu.embed, next_step=sink, failures=sink, metrics=metrics, timeout=60, wake=wake,
                           prepare_batch=gpu.prepare_batch)
    stage.submit(batch)
    wake.wait(30)
    stage.poll()
    stage.close(time.monotonic() + 5)
    wake.close()
    assert sink.done == [batch[0], batch[1], batch[3]]
    [(failed, error, stage_name)] = sink.failed
    assert failed is batch[2] and isinstance(error, TruncatedImage) and stage_name == "preprocess"
    assert all(work.data is None and work.prepared is None for work in batch)
    for work, data in ((batch[1], photos[1]), (batch[3], photos[2])):
        assert (work.width, work.height) == Image.open(io.BytesIO(data)).size
        [cpu] = embedder.embed([embedder.prepare(data)])
        assert isinstance(cpu, np.ndarray) and work.embedding is not None
        assert float(np.dot(cpu, work.embedding)) >= 0.99  # unit vectors: the device path's is fast mode's
    sample = metrics.registry.get_sample_value
    assert (sample("clip_worker_device_decoded_total"), sample("clip_worker_device_decode_refused_total")) == (2, 1)
