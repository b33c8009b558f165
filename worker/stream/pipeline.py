"""What build_runtime hands the loop besides the Kafka clients: the data path, in order, and the
components the loop drives on its turns.

The loop submits each polled record to `decode`, polls the `images` stages, the batcher and the
device thread every turn, retries what `outages` parked, lets `dead_letters` know when nothing is in
flight, waits on `wake` while busy, and raises what was reported to `stop`. At shutdown it closes
the stages, the only parts that hold threads or processes.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.images.batching import Batcher
from worker.images.inference import InferenceStage
from worker.images.stages import Stage
from worker.images.wake import Wake
from worker.images.work import Work
from worker.stream.deadletter import DeadLetters
from worker.stream.decode import MessageDecoder
from worker.stream.outage import OutageGate
from worker.stream.stop import Stop


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The stages in data-path order (build.py draws the diagram), where failures go, and the stop they report."""

    decode: MessageDecoder
    images: tuple[Stage[Work], ...]  # fetch and preprocess threads, or the decoder processes doing both
    batcher: Batcher
    inference: InferenceStage
    dead_letters: DeadLetters
    outages: OutageGate
    wake: Wake  # what a busy turn waits on: the device, fetch threads falling idle, decoder results
    stop: Stop  # what any stage reports a fatal condition to; only the loop raises it
