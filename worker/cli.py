"""`clip-worker` / `python -m worker`: run the streaming worker, or embed local files once.

    clip-worker                      run the Kafka worker (settings from CLIP_WORKER_* env vars)
    clip-worker check                check the settings, Kafka, S3, the registry and the model; print a table
    clip-worker embed SOURCE...      embed files, folders, manifests or s3:// prefixes (worker/batch/commands.py)
    clip-worker enqueue SOURCE...    produce an s3:// prefix or a manifest into the input topic
    clip-worker replay [--stage S] [--exception CLASS] [--since T] [--until T] [--to TOPIC] [--dry-run]
                                     dead letters back to the input, once their cause is fixed (worker/stream/replay.py)

Exit codes: 0 after a clean shutdown (or all checks passed), 1 on a fatal error (or a failed
check), 2 on an invalid setting.

torch, torchvision and open_clip (~3 s of imports) are imported by the commands that load the model,
not here: --version, an invalid setting, replay and enqueue answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from worker import __version__
from worker.batch import commands as batch_commands
from worker.config import Settings, load_settings
from worker.errors import ClientWedged, ConfigError, FatalError
from worker.health import HealthServer
from worker.logs import configure_logging
from worker.metrics import Metrics
from worker.stream import replay

if TYPE_CHECKING:
    from worker.stream.loop import Runtime

log = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clip-worker", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "check", "embed", "enqueue", "replay"])
    parser.add_argument("sources", nargs="*", help="embed, enqueue: files, folders, manifests, s3:// prefixes")
    batch_commands.add_arguments(parser)
    replay.add_arguments(parser)  # its --dry-run is the one above
    parser.add_argument("--version", action="version", version=__version__)
    args = parser.parse_intermixed_args(argv)  # options may come between the sources
    try:
        settings = load_settings()
        configure_logging(settings.log)
        if args.command == "run":
            return _run(settings)
        if args.command == "check":
            return _check(settings)
        if args.command == "replay":
            return replay.replay_command(settings.kafka, replay.ReplayOptions.from_args(args))
        if args.command == "enqueue":
            return batch_commands.enqueue_command(settings, args)
        return batch_commands.embed_command(settings, args)
    except ConfigError as exc:
        print(f"clip-worker: {exc}", file=sys.stderr)
        return 2
    except ClientWedged as exc:  # the error it was stopping for, if any, is its context
        log.error("stopping: %s%s", exc, f" (while stopping for: {exc.__context__})" if exc.__context__ else "")
        logging.shutdown()
        os._exit(1)  # a wedged librdkafka client can hang its own destructor at interpreter exit
    except FatalError as exc:
        log.error("stopping: %s", exc)
        return 1
    except Exception:  # through the log, so that a JSON log stays JSON
        log.critical("stopping on an unexpected error", exc_info=True)
        return 1


def _run(settings: Settings) -> int:
    """Serve health first (the model load can take minutes), then load, wire and run."""
    from worker.engine import Embedder, frozen_heap, share_cores
    from worker.stream.build import build_runtime

    metrics = Metrics()
    runtime: Runtime | None = None
    health = None
    if settings.pipeline.metrics_port is not None:
        # Live while loading, then while the loop turns; ready once the model is loaded and the loop
        # runs. Not "holds partitions": pods beyond the partition count must not block a rollout.
        health = HealthServer(
            port=settings.pipeline.metrics_port,
            registry=metrics.registry,
            last_loop_at=lambda: runtime.last_loop_at if runtime else time.monotonic(),
            stalled_seconds=lambda: runtime.stalled_seconds() if runtime else 0.0,
            ready=lambda: runtime is not None and time.monotonic() - runtime.last_loop_at < 5.0,
            stall_seconds=settings.pipeline.liveness_stall_seconds,
        )
        health.start()
    try:
        embedder = Embedder.load(settings.model)
        share_cores(embedder.device, preprocess_workers=settings.model.preprocess_workers)
        runtime = build_runtime(settings, embedder=embedder, metrics=metrics)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: runtime.request_stop() if runtime else None)
        log.info("clip-embedding-worker %s consuming %s", __version__, settings.kafka.input_topic)
        with frozen_heap():
            runtime.run()
    finally:
        if health is not None:
            health.stop()
    log.info("stopped cleanly")
    return 0


def _check(settings: Settings) -> int:
    """The table of what answered; the exit code and stderr name what did not."""
    from worker.checks import check_model, format_table, run_checks

    results = [*run_checks(settings), check_model(settings.model)]
    print(format_table(results), flush=True)
    failed = [result.name for result in results if not result.ok]
    if failed:
        print(f"clip-worker check: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0

