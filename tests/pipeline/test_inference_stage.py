"""The device stage on its own: what it hands on, and what it lets go of on the device thread."""

import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tests.pipeline.conftest import Sink
from worker.engine import Embedder, PreparedBatch, PreparedImage
from worker.engine.gpu_decode import JpegHeader
from worker.errors import DeviceFailed, TruncatedImage
from worker.formats.positions import KafkaPosition
from worker.images.device.journal import DeviceJournal
from worker.images.inference import InferenceStage
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics


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
        work = Noted(position=KafkaPosition("t", 0, n))
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
    embedder: Embedder, small_photos: list[tuple[str, bytes]], tmp_path: Path,
) -> None:
    gpu = Embedder(settings=embedder.settings.model_copy(update={"decode": "gpu"}), tower=embedder.tower)
    photos = [data for _, data in small_photos[:3]]
    batch = [Work(position=KafkaPosition("t", 0, n))
             for n in range(4)]
    batch[0].prepared = embedder.prepare(photos[0])  # from the preprocess threads
    for work, data, whole in zip(batch[1:], (photos[1], photos[2][:-300], photos[2]), (1, 2, 2), strict=True):
        work.data, work.jpeg = data, gpu.device_header(photos[whole])  # routed past them as bytes
    sink, metrics, wake = Sink(), Metrics(), Wake()
    journal = DeviceJournal.open(tmp_path)
    held_while_decoding: list[bytes] = []

    def prepare_batch(blobs: Sequence[bytes], headers: Sequence[JpegHeader | None]) -> PreparedBatch:
        held_while_decoding.append(journal.path.read_bytes())
        return gpu.prepare_batch(blobs, headers)

    stage = InferenceStage(embed=gpu.embed, next_step=sink, failures=sink, metrics=metrics, timeout=60, wake=wake,
                           prepare_batch=prepare_batch, journal=journal)
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
    assert held_while_decoding == [b'["t",0,1]\n["t",0,2]\n["t",0,3]\n']  # the records that came as bytes
    assert journal.path.read_bytes() == b""  # released once the batch was done


def test_a_batch_that_fails_on_the_device_stays_in_the_journal_for_the_next_worker(
    embedder: Embedder, small_photos: list[tuple[str, bytes]], tmp_path: Path,
) -> None:
    gpu = Embedder(settings=embedder.settings.model_copy(update={"decode": "gpu"}), tower=embedder.tower)
    batch = [Work(position=KafkaPosition("t", 3, n))
             for n in range(2)]
    for work, (_, data) in zip(batch, small_photos, strict=False):
        work.data, work.jpeg = data, gpu.device_header(data)

    def embed(images: Sequence[PreparedImage]) -> list[np.ndarray]:
        raise DeviceFailed("an illegal memory access was encountered")

    sink, wake = Sink(), Wake()
    stage = InferenceStage(embed=embed, next_step=sink, failures=sink, metrics=Metrics(), timeout=60, wake=wake,
                           prepare_batch=gpu.prepare_batch, journal=DeviceJournal.open(tmp_path))
    stage.submit(batch)
    wake.wait(30)
    stage.poll()
    stage.close(time.monotonic() + 5)
    wake.close()
    [(_, error, _)] = sink.failed  # the worker stops on it
    assert isinstance(error, DeviceFailed)
    assert DeviceJournal.open(tmp_path).suspects == {KafkaPosition("t", 3, 0), KafkaPosition("t", 3, 1)}
