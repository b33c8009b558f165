"""The stages between a decoded request and the batcher, built one way for the stream, batch mode and
the benchmarks: fetch and preprocess on threads of this process, or both in decoder processes.

    threads:    fetch_threads (s3.fetch_workers) ─▶ preprocess_threads (model.preprocess_workers)
    processes:  decoder_stage (model.preprocess_workers processes, s3.fetch_workers threads among them)
"""

from __future__ import annotations

import os

from worker.config import Settings
from worker.engine import Embedder
from worker.metrics import Metrics
from worker.pipeline.decoder_stage import DecoderStage
from worker.pipeline.decoders import DecoderSpec, last_success
from worker.pipeline.memory import InFlightBytes
from worker.pipeline.slots import SharedSlots, SlotLayout
from worker.pipeline.stages import (
    FETCH_DEADLINE_GRACE_SECONDS,
    FailureSink,
    Stage,
    ThreadStage,
    fetch_step,
    preprocess_step,
)
from worker.pipeline.wake import Wake
from worker.pipeline.work import Work
from worker.source import S3Source


def fetch_threads(
    settings: Settings, source: S3Source, *, next_step: Stage[Work], failures: FailureSink, metrics: Metrics,
    budget: InFlightBytes, wake: Wake,
) -> ThreadStage:
    """S3 reads on s3.fetch_workers threads, each starting only while the byte budget has room."""
    timeout = settings.pipeline.record_timeout_seconds
    return ThreadStage(
        name="fetch", workers=settings.s3.fetch_workers, step=fetch_step(source, metrics, timeout=timeout),
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
