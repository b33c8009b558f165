"""The fetch + decode stage alone: one decode worker against two, as threads and as processes, in one run.

The target is that two decode workers give >= 1.8x one. End to end on a 2-core box that cannot show
(cpu_bench.py: the broker, the S3 server and the model need cores too), so this measures the stage the
workers make up, as build.py wires it, and nothing else: records go in as decoded requests, each
comes out as a prepared image (shared-memory slot or tensor) and is dropped. Objects come from
`--s3`: gofakes3 by default (harness/gofakes3.py, ~150 µs of CPU per GET) or s3proxy (a JVM,
540-750 µs), the 16 corpus photos at 1024 px cycled. On two cores the server's CPU is taken from
the decoders: with s3proxy one decoder left the box ~1.7 cores busy, so two could not reach 1.8x
whatever the stage did. For each setting the stage runs over `--records` after a warm-up of a
tenth as many; img/s is wall time, CPU per image is the process tree's (decoder processes included;
the server, a child of this process too, is taken out and reported apart). Between turns the loop
waits as the worker's busy turn does (images/wake.busy_wait: on the stages' signals, 20 ms at most);
an earlier version polled every millisecond, ~5% of a core of its own. The settings take turns,
threads then processes, one worker then two, and the whole round repeats; figures are medians over
the rounds. The last column says how many cores 1.8x the one-worker rate would take at the two-worker
run's CPU per image: over the box's cores, no stage could show 1.8x here.

With `--source memory` the decode workers run alone, as threads (the default `preprocess_in`): each
record goes in as the fetch step leaves it (bytes and SHA-256 in hand, made before the clock starts),
and no S3 server or GET shares the box. That separates what the decode workers do when a second one
is added from what the box can spare beside them: with S3 on the same two cores, 1.8x needs more
than two cores whatever the workers do. Processes fetch inside the decoder, so they need `--source s3`.

    .venv/bin/python bench/decoder_bench.py --records 600 --rounds 3 [--s3 s3proxy] [--source memory]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.cpu_bench import S3_SERVERS
from bench.header import run_header
from harness.cpu_time import tree_cpu
from harness.models import TINY_MODEL_NAME, register_model_configs, tiny_model_settings, write_random_checkpoint
from harness.photos import photo_corpus
from harness.s3_server import fill_bucket
from worker.config import Settings
from worker.engine import Embedder
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition
from worker.images.budget import InFlightBytes
from worker.images.path import decoder_processes, fetch_threads, preprocess_threads
from worker.images.stages import keep_fetched
from worker.images.wake import Wake, busy_wait
from worker.images.work import Work
from worker.metrics import Metrics
from worker.s3.reader import S3Reader, make_s3_client


class Drop:
    """The stage's next step and failure sink: counts what finished, keeps nothing."""

    def __init__(self) -> None:
        self.done = 0
        self.failed: list[str] = []

    def submit(self, item: Work) -> None:
        self.done += 1

    def fail(self, work: Work, error: Exception, *, stage: str) -> None:
        self.failed.append(f"{stage}: {error!r}")


def stages_for(mode: str, workers: int, settings: Settings, embedder: Embedder, sink: Drop, wake: Wake) -> list[Any]:
    """The stage(s) the worker wires for `mode` (images/path.py), ending in `sink`, signalling `wake`;
    "memory": the preprocess threads alone."""
    budget, metrics = InFlightBytes(limit=settings.pipeline.max_in_flight_bytes), Metrics()
    sized = settings.model_copy(update={"model": settings.model.model_copy(update={"preprocess_workers": workers})})
    if mode == "memory":
        return [preprocess_threads(sized, embedder, next_step=sink, failures=sink, metrics=metrics)]
    if mode == "processes":
        return [decoder_processes(sized, embedder, next_step=sink, failures=sink, metrics=metrics, budget=budget,
                              wake=wake)]
    preprocess = preprocess_threads(sized, embedder, next_step=sink, failures=sink, metrics=metrics)
    source = S3Reader(client=make_s3_client(settings.s3), settings=settings.s3)
    fetch = fetch_threads(settings, source, next_step=preprocess, failures=sink, metrics=metrics, budget=budget,
                          wake=wake)
    return [fetch, preprocess]


def records(photos: list[tuple[str, bytes]], count: int, *, fetched: bool) -> list[Work]:
    """`count` decoded requests for the photos in turn; with `fetched`, as the fetch step leaves them."""
    works = []
    for i in range(count):
        key, data = photos[i % len(photos)]
        work = Work(position=KafkaPosition("bench", 0, i))
        work.request = ImageRequest(id=f"r{i}", uri=S3Uri("bench", key))
        if fetched:
            keep_fetched(work, data, None)
        works.append(work)
    return works


def run(stages: list[Any], wake: Wake, sink: Drop, works: list[Work]) -> tuple[float, float]:
    """Push the records through; (seconds, CPU seconds of this process tree)."""
    pid = os.getpid()
    began, cpu = time.perf_counter(), tree_cpu(pid)
    target = sink.done + len(sink.failed) + len(works)
    for work in works:
        stages[0].submit(work)
    works.clear()  # the byte budget holds a fetch's bytes until its record is let go (budget.py)
    while sink.done + len(sink.failed) < target:
        for stage in stages:
            stage.poll()
        wake.wait(busy_wait(None, held=False))  # as the worker's busy turn waits: on the stages' signals
    assert not sink.failed, sink.failed[:3]
    return time.perf_counter() - began, tree_cpu(pid) - cpu


def server_cpu_now(server: Any) -> float:
    """CPU seconds the S3 server's process tree has used so far; 0 without a server (`--source memory`)."""
    return tree_cpu(server.pid) if server is not None and server.pid else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--s3", choices=tuple(S3_SERVERS), default="gofakes3", help="the S3 server")
    parser.add_argument("--source", choices=("s3", "memory"), default="s3",
                        help="memory: the decode threads alone, fed the fetched bytes (no S3 server running)")
    args = parser.parse_args(argv)
    register_model_configs()
    photos = photo_corpus(long_sides=(1024,))
    load_start = os.getloadavg()[0]
    rates: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    modes = ("memory",) if args.source == "memory" else ("threads", "processes")
    server = S3_SERVERS[args.s3]() if args.source == "s3" else None
    with tempfile.TemporaryDirectory() as tmp, server or contextlib.nullcontext():
        if server is not None:
            os.environ.update(server.env())  # decoder processes read S3 with the environment's credentials
            fill_bucket(server, "bench", photos)
        checkpoint = write_random_checkpoint(TINY_MODEL_NAME, Path(tmp) / "tiny.pt", seed=0)
        model = tiny_model_settings(checkpoint, preprocess_mode="fast")
        endpoint = {"endpoint_url": server.endpoint_url} if server is not None else {}
        settings = Settings(model=model, s3={"allowed_sources": ("bench",), **endpoint})
        embedder = Embedder.load(model)
        fetched = args.source == "memory"
        for _ in range(args.rounds):
            for mode in modes:
                for workers in (1, 2):
                    sink, wake = Drop(), Wake()
                    stages = stages_for(mode, workers, settings, embedder, sink, wake)
                    # warm-up: connections, first decodes
                    run(stages, wake, sink, records(photos, max(1, args.records // 10), fetched=fetched))
                    measured = records(photos, args.records, fetched=fetched)
                    server_before = server_cpu_now(server)
                    seconds, cpu = run(stages, wake, sink, measured)
                    server_cpu = server_cpu_now(server) - server_before
                    cpu -= server_cpu  # the server is this process's child: its CPU is not the stage's
                    for stage in stages:
                        stage.close(time.monotonic() + 10)
                    wake.close()
                    rates.setdefault((mode, workers), []).append(
                        (args.records / seconds, cpu / args.records, server_cpu / args.records))
                    print(f"# {mode} x{workers}: {args.records / seconds:.0f} img/s", file=sys.stderr, flush=True)
    median = {key: tuple(statistics.median(v[i] for v in values) for i in range(3)) for key, values in rates.items()}
    print("\n".join(run_header("decoder_bench.py", (load_start, os.getloadavg()[0]))))
    served = args.s3 if server is not None else "no"
    print(f"| preprocess in | workers | img/s | stage CPU ms/img | S3 server ({served}) CPU ms/img | two / one "
          "| cores 1.8x would need |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    labels = {"memory": "threads, the bytes in memory"}
    for (mode, workers), (rate, cpu, server_cpu) in median.items():
        one = median[(mode, 1)][0]
        scaling, needed = (f"{rate / one:.2f}x", f"{1.8 * one * (cpu + server_cpu):.2f}") if workers == 2 else ("", "")
        print(f"| {labels.get(mode, mode)} | {workers} | {rate:.1f} | {cpu * 1e3:.2f} | {server_cpu * 1e3:.2f} "
              f"| {scaling} | {needed} |")
    print(f"\nCores 1.8x would need: 1.8 times the one-worker rate at the two-worker CPU per image (stage and "
          f"server); this box has {os.cpu_count()}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
