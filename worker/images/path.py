"""The image path, built once for both drivers: fetch -> (device route) -> preprocess -> batcher -> device.

Fetch and preprocess run on threads of this process, or both in decoder processes
(model.preprocess_in); while the device decodes JPEGs (model.decode), baseline JPEGs skip the
preprocess threads (device/route.py). A driver hands records in with `submit`, turns the path with
`poll`, and stops it with `close`; where the records go once embedded (`next_step`) and what a
failure means (`failures`) are the driver's. The data-path diagram is in docs/architecture.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import Settings
from worker.engine import Embedder
from worker.engine.gpu_decode import ReadHeader
from worker.images.batching import Batcher
from worker.images.budget import InFlightBytes
from worker.images.device.route import after_fetch, device_route, open_journal
from worker.images.inference import InferenceStage
from worker.images.local import local_fetch_step
from worker.images.processes.decoders import DecoderSpec, last_success
from worker.images.processes.slots import SharedSlots, SlotLayout
from worker.images.processes.stage import DecoderProcesses
from worker.images.stages import (
    FETCH_DEADLINE_GRACE_SECONDS,
    FailureSink,
    Sink,
    Stage,
    ThreadStage,
    fetch_step,
    preprocess_step,
)
from worker.images.wake import Wake
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.reader import S3Reader


@dataclass(frozen=True, slots=True)
class ImagePath:
    """The built path. `fetch` takes decoded requests (Work.request: an S3 object to read); `read`, when
    the path was built to read local files, takes the rest. `upstream` are the stages before the
    batcher, in data-path order."""

    fetch: ThreadStage | DecoderProcesses
    read: ThreadStage | None
    upstream: tuple[Stage[Work], ...]
    batcher: Batcher
    inference: InferenceStage

    @property
    def stages(self) -> tuple[Stage[Any], ...]:
        """Every stage in data-path order: each is polled and closed in this order."""
        return (*self.upstream, self.batcher, self.inference)

    def submit(self, work: Work) -> None:
        """A record with a request is read from S3; one without, from its local file."""
        if work.request is not None:
            self.fetch.submit(work)
        else:
            assert self.read is not None, "a local input needs a path built with local_file"
            self.read.submit(work)

    def poll(self) -> None:
        for stage in self.stages:
            stage.poll()

    def close(self, deadline: float) -> None:
        """Stop every stage, waiting for running work no later than `deadline` (monotonic)."""
        for stage in self.stages:
            stage.close(deadline)

    def flush(self) -> None:
        """No more input is coming: the last partial batch goes without waiting for its deadline."""
        self.batcher.flush()

    def seconds_to_deadline(self) -> float | None:
        """How long until the next partial batch is due; None when none is queued."""
        return self.batcher.seconds_to_deadline()


def build_image_path(
    settings: Settings, embedder: Embedder, *, s3: S3Reader, next_step: Sink[Work], failures: FailureSink,
    metrics: Metrics, wake: Wake, budget: InFlightBytes, encode: Callable[[Work], None] | None = None,
    local_file: Callable[[Work], Path] | None = None,
) -> ImagePath:
    """The path from fetch to the device, ending in `next_step`; every stage's failures go to `failures`.
    `encode` runs on the device thread for each embedded record (InferenceStage); with `local_file`
    (which file a record without a request names) the path also reads local files."""
    journal = open_journal(settings, embedder)
    inference = InferenceStage(
        embed=embedder.embed, next_step=next_step, failures=failures, metrics=metrics,
        timeout=settings.pipeline.record_timeout_seconds, encode=encode, wake=wake,
        prepare_batch=embedder.prepare_batch, journal=journal,
    )
    batcher = Batcher(batch_size=embedder.batch_size, max_wait=settings.pipeline.max_batch_wait_ms / 1000,
                      next_step=inference)
    route = device_route(embedder)
    in_processes = settings.model.preprocess_in == "processes"
    preprocess: ThreadStage | None = None
    fetched: Sink[Work] = batcher  # decoder processes hand prepared images to the batcher
    if not in_processes or local_file is not None:  # something is fetched on threads: preprocess threads
        preprocess = preprocess_threads(settings, embedder, next_step=batcher, failures=failures, metrics=metrics)
        fetched = after_fetch(journal, preprocess=preprocess, batcher=batcher, metrics=metrics)
    fetch: ThreadStage | DecoderProcesses
    if in_processes:
        fetch = decoder_processes(settings, embedder, next_step=batcher, failures=failures, metrics=metrics,
                                  budget=budget, wake=wake)
    else:
        fetch = fetch_threads(settings, s3, next_step=fetched, failures=failures, metrics=metrics, budget=budget,
                              wake=wake, route=route)
    read = None
    if local_file is not None:
        read = read_threads(settings, local_file, next_step=fetched, failures=failures, budget=budget, wake=wake,
                            route=route)
    upstream = tuple(stage for stage in (fetch, read, preprocess) if stage is not None)
    return ImagePath(fetch=fetch, read=read, upstream=upstream, batcher=batcher, inference=inference)


def fetch_threads(
    settings: Settings, source: S3Reader, *, next_step: Sink[Work], failures: FailureSink, metrics: Metrics,
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


def read_threads(
    settings: Settings, local_file: Callable[[Work], Path], *, next_step: Sink[Work], failures: FailureSink,
    budget: InFlightBytes, wake: Wake, route: ReadHeader | None,
) -> ThreadStage:
    """Local file reads (local.py) on s3.fetch_workers threads, admitted as the S3 fetches are: the same
    byte limit and reservation, so the byte budget means the same."""
    max_bytes = settings.s3.max_object_bytes
    return ThreadStage(
        name="read", workers=settings.s3.fetch_workers,
        step=local_fetch_step(local_file, max_bytes=max_bytes, read_header=route), next_step=next_step,
        failures=failures, timeout=settings.pipeline.record_timeout_seconds + FETCH_DEADLINE_GRACE_SECONDS,
        budget=budget, reserve_bytes=max_bytes, wake=wake,
    )


def preprocess_threads(
    settings: Settings, embedder: Embedder, *, next_step: Sink[Work], failures: FailureSink, metrics: Metrics,
) -> ThreadStage:
    """Decode and preprocess on model.preprocess_workers threads. Every record comes from a fetch, whose
    reservation put it in the byte budget's count already (budget.py): nothing to track here."""
    return ThreadStage(
        name="preprocess", workers=settings.model.preprocess_workers, step=preprocess_step(embedder.prepare),
        next_step=next_step, failures=failures, timeout=settings.pipeline.record_timeout_seconds,
        seconds=metrics.preprocess_seconds,
    )


def decoder_processes(
    settings: Settings, embedder: Embedder, *, next_step: Sink[Work], failures: FailureSink, metrics: Metrics,
    budget: InFlightBytes, wake: Wake,
) -> DecoderProcesses:
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
    return DecoderProcesses(
        processes=processes, spec=spec, slots=slots, next_step=next_step, failures=failures, metrics=metrics,
        timeout=2 * timeout + FETCH_DEADLINE_GRACE_SECONDS, budget=budget, reserve_bytes=settings.s3.max_object_bytes,
        wake=wake,
    )
