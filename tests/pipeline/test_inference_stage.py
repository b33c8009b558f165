"""The device stage on its own: what it hands on, and what it lets go of on the device thread."""

import threading
import time

from tests.pipeline.conftest import Sink
from worker.encoding import Source
from worker.engine import Embedder
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
