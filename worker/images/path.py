"""The stages between a decoded request and the batcher, built one way for the stream, batch mode and
the benchmarks: fetch and preprocess on threads of this process, or both in decoder processes.

    threads:    fetch_threads (s3.fetch_workers) ─▶ preprocess_threads (model.preprocess_workers)
    processes:  decoder_stage (model.preprocess_workers processes, s3.fetch_workers threads among them)
    threads, decoding on the device (model.decode):
                fetch_threads ─▶ DecodeRouter ─┬─ baseline JPEGs, as bytes ─▶ the batcher (the device thread decodes)
                                               └─ the rest, and the journal's suspects ─▶ preprocess_threads
"""

from __future__ import annotations

import logging
import os

from worker.config import Settings, env_var
from worker.engine import Embedder
from worker.engine.gpu_decode import ReadHeader
from worker.errors import ConfigError
from worker.images.budget import InFlightBytes
from worker.images.device.journal import DeviceJournal
from worker.images.processes.decoders import DecoderSpec, last_success
from worker.images.processes.slots import SharedSlots, SlotLayout
from worker.images.processes.stage import DecoderStage
from worker.images.stages import (
    FETCH_DEADLINE_GRACE_SECONDS,
    FailureSink,
    Stage,
    ThreadStage,
    fetch_step,
    preprocess_step,
)
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.source import S3Source

logger = logging.getLogger(__name__)


class DecodeRouter:
    """Where a fetched record goes while the device decodes JPEGs: one whose bytes the fetch thread found
    to be a baseline JPEG (Work.jpeg) straight to the batcher, as bytes, any other to the preprocess
    threads. Inline on the main thread: the header was read on the fetch thread, this is one branch.
    A record the device journal lists was on the device when a worker stopped: the CPU decodes it."""

    name = "route"

    def __init__(self, *, device: Stage[Work], cpu: Stage[Work], journal: DeviceJournal, metrics: Metrics) -> None:
        self._device = device
        self._cpu = cpu
        self._journal = journal
        self._suspects = metrics.device_decode_suspects

    def submit(self, item: Work) -> None:
        if item.jpeg is None:
            self._cpu.submit(item)
        elif self._journal.is_suspect(item.position):
            logger.warning("%s[%d]@%d was on the device when a worker stopped: decoding it on the CPU",
                           *item.position.coordinates())
            self._suspects.inc()
            self._cpu.submit(item)
        else:
            self._device.submit(item)

    def poll(self) -> None:
        return None

    def close(self, deadline: float) -> None:
        return None


def device_journal(settings: Settings, embedder: Embedder) -> DeviceJournal | None:
    """The device thread's journal (device_journal.py) while the device decodes JPEGs, else None."""
    if not embedder.decodes_on_device:
        return None
    try:
        return DeviceJournal.open(settings.model.decode_journal_dir)
    except OSError as exc:
        setting = env_var("model", "decode_journal_dir")
        raise ConfigError(setting, f"the device journal cannot be kept there: {exc}") from exc


def after_fetch(
    journal: DeviceJournal | None, *, preprocess: ThreadStage, batcher: Stage[Work], metrics: Metrics
) -> Stage[Work]:
    """Where fetched records go: the preprocess threads, or a DecodeRouter while the device decodes JPEGs
    (which is when there is a journal)."""
    if journal is None:
        return preprocess
    return DecodeRouter(device=batcher, cpu=preprocess, journal=journal, metrics=metrics)


def device_route(embedder: Embedder) -> ReadHeader | None:
    """For the fetch steps, while the device decodes: the header of a JPEG that goes to it (else None)."""
    return embedder.device_header if embedder.decodes_on_device else None


def fetch_threads(
    settings: Settings, source: S3Source, *, next_step: Stage[Work], failures: FailureSink, metrics: Metrics,
    budget: InFlightBytes, wake: Wake, route: ReadHeader | None = None,
) -> ThreadStage:
    """S3 reads on s3.fetch_workers threads, each starting only while the byte budget has room; with
    `route` (device_route), each fetch also says whether the device decodes its image."""
    timeout = settings.pipeline.record_timeout_seconds
    return ThreadStage(
        name="fetch", workers=settings.s3.fetch_workers,
        step=fetch_step(source, metrics, timeout=timeout, read_header=route),
        next_step=next_step, failures=failures, timeout=timeout + FETCH_DEADLINE_GRACE_SECONDS,
        seconds=metrics.fetch_seconds, budget=budget, reserve_bytes=settings.s3.max_object_bytes, wake=wake,
    )


def preprocess_threads(
    settings: Settings, embedder: Embedder, *, next_step: Stage[Work], failures: FailureSink, metrics: Metrics,
) -> ThreadStage:
    """Decode and preprocess on model.preprocess_workers threads. Every record comes from a fetch, whose
    reservation put it in the byte budget's count already (memory.py): nothing to track here."""
    return ThreadStage(
        name="preprocess", workers=settings.model.preprocess_workers, step=preprocess_step(embedder.prepare),
        next_step=next_step, failures=failures, timeout=settings.pipeline.record_timeout_seconds,
        seconds=metrics.preprocess_seconds,
    )


def decoder_stage(
    settings: Settings, embedder: Embedder, *, next_step: Stage[Work], failures: FailureSink, metrics: Metrics,
    budget: InFlightBytes, wake: Wake,
) -> DecoderStage:
    """Fetch + decode + preprocess on model.preprocess_workers processes, s3.fetch_workers threads among them."""
    model, timeout = settings.model, settings.pipeline.record_timeout_seconds
    processes = model.preprocess_workers
    threads = -(-settings.s3.fetch_workers // processes)
    preprocessor = embedder.preprocessor
    # Slots for a full batcher, both batches at the device and every decoder thread's record.
    shape, dtype = preprocessor.output_shape()
    layout = SlotLayout(count=embedder.batch_size * 3 + processes * threads, shape=shape, dtype=dtype)
    slots = SharedSlots(layout)
    spec = DecoderSpec(
        s3=settings.s3, cfg=preprocessor.cfg, mode=preprocessor.mode, max_pixels=preprocessor.max_pixels,
        exif_orientation=preprocessor.exif_orientation, slots=slots.name, layout=layout, threads=threads,
        fetch_timeout=timeout, log=settings.log, served=last_success(), environ=dict(os.environ),
    )
    return DecoderStage(
        processes=processes, spec=spec, slots=slots, next_step=next_step, failures=failures, metrics=metrics,
        timeout=2 * timeout + FETCH_DEADLINE_GRACE_SECONDS, budget=budget, reserve_bytes=settings.s3.max_object_bytes,
        wake=wake,
    )
