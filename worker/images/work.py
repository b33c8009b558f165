"""What travels down the image path: one input, where it came from, and what became of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from worker.formats.messages import ImageRequest
from worker.formats.positions import Position
from worker.formats.records import OutRecord, PolledRecord

if TYPE_CHECKING:  # the engine brings torch, which replay does not need
    from worker.engine import PreparedImage
    from worker.engine.gpu_decode import JpegHeader


@dataclass(slots=True, eq=False, weakref_slot=True)
class Work:
    """One input. Its position travels with it (formats/positions.py), so that any stage may finish it
    in any order: in the stream, finishing it moves its partition's watermark. `polled` is the Kafka
    record itself in the stream, and None in batch mode.

    Weakly referenceable: the in-flight byte budget (budget.py) counts every Work still alive,
    stale work of a revoked partition included, without any stage having to report it."""

    position: Position
    polled: PolledRecord | None = None
    request: ImageRequest | None = None
    fetch_attempts: int = 0
    reserved: int = 0  # bytes held for a fetch whose size is not known yet
    data: bytes | None = None
    jpeg: JpegHeader | None = None  # read by the fetch thread: the device thread decodes it (model.decode)
    sha256: str | None = None  # hex digest of the fetched bytes, taken on the fetch thread
    prepared: PreparedImage | None = None
    width: int | None = None  # the image's own size, kept once the prepared tensor is dropped
    height: int | None = None
    ready_at: float = 0.0  # monotonic time it entered the batcher
    batch_wait: float = 0.0  # seconds it waited there (observed on the device thread)
    embedding: np.ndarray | None = None
    output: OutRecord | None = None  # the output record, built on the device thread (the driver's encode)
    output_error: Exception | None = None  # or why it could not be built
    sent_at: float = 0.0  # monotonic time its output was handed to the producer

    @property
    def nbytes(self) -> int:
        """Memory this record holds now: its fetch reservation, fetched bytes and prepared tensor."""
        held = self.reserved + (len(self.data) if self.data is not None else 0)
        prepared = self.prepared
        return held + (prepared.nbytes if prepared is not None else 0)
