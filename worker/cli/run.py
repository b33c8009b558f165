"""`clip-worker run` (or `clip-worker` alone): the streaming worker.

It consumes the input topic, embeds each referenced image and produces the embeddings, until SIGTERM
or SIGINT asks it to stop; everything it needs comes from CLIP_WORKER_* settings, so it takes no
options. Health is served before the model loads, since loading can take minutes and the probes must
see a live process meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import TYPE_CHECKING

from worker import __version__
from worker.config import Settings, require_stream_settings
from worker.errors import WorkerError
from worker.health import HealthServer
from worker.kafka.health import KafkaHealth
from worker.metrics import Metrics

if TYPE_CHECKING:
    from worker.stream.loop import Runtime

NAME = "run"
SUMMARY = "run the Kafka worker (the default)"
DESCRIPTION = """\
Run the streaming worker: consume the input topic, embed each image it references, produce the
embeddings to the output topic and failures to the dead-letter topic, until SIGTERM or SIGINT.

Every setting comes from CLIP_WORKER_* environment variables; the command takes no options.
Exit code 0 after a clean shutdown, 1 on a fatal error (model weights that could not be fetched
included), 2 on an invalid setting."""
EXAMPLE = "CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 clip-worker run"

log = logging.getLogger("worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: the worker is configured by its environment only, as in a container."""


def handle(settings: Settings, args: argparse.Namespace) -> int:
    return run(settings)


def run(settings: Settings) -> int:
    """Check what the stream needs, serve health (the model load can take minutes), then load, wire
    and run."""
    require_stream_settings(settings)
    from worker.engine import Embedder, frozen_heap, share_cores
    from worker.stream.build import build_runtime
    from worker.weights import fetch_weights, with_weights

    metrics = Metrics()
    kafka = KafkaHealth(bootstrap=settings.kafka.bootstrap_servers,
                        auth_failure_seconds=settings.kafka.auth_failure_seconds, metrics=metrics)
    runtime: Runtime | None = None
    health = None
    if settings.pipeline.metrics_port is not None:
        # Live while loading, then while the loop turns; ready once the model is loaded and the loop
        # runs, while a broker answers and its Kafka clients are not being replaced. Not "holds
        # partitions": pods beyond the partition count must not block a rollout.
        health = HealthServer(
            port=settings.pipeline.metrics_port,
            registry=metrics.registry,
            # A replacement of the Kafka clients holds the loop (bounded: init_transactions' attempts).
            last_loop_at=lambda: runtime.last_loop_at if runtime and not runtime.replacing else time.monotonic(),
            stalled_seconds=lambda: runtime.stalled_seconds() if runtime else 0.0,
            ready=lambda: (runtime is not None and not runtime.replacing and kafka.ready
                           and time.monotonic() - runtime.last_loop_at < 5.0),
            stall_seconds=settings.pipeline.liveness_stall_seconds,
        )
        health.start()
    try:
        embedder = Embedder.load(with_weights(settings, fetch_weights(settings)))
        share_cores(embedder.device, preprocess_workers=settings.model.preprocess_workers)
        runtime = build_runtime(settings, embedder=embedder, metrics=metrics, kafka_health=kafka)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: runtime.request_stop() if runtime else None)
        log.info("clip-embedding-worker %s consuming %s", __version__, settings.kafka.input_topic)
        with frozen_heap():
            try:
                runtime.run()
            except WorkerError as exc:  # e.g. init_transactions timed out while the brokers refused the login
                explained = kafka.explain(exc)
                if explained is exc:
                    raise
                raise explained from exc
    finally:
        if health is not None:
            health.stop()
    log.info("stopped cleanly")
    return 0
