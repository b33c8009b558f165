"""Stand-ins for what the GPU machine lacks, and the samplers of the end-to-end part (end_to_end.py).

- Kafka: librdkafka's mock cluster. A producer created with `test.mock.num.brokers=1` starts one mock
  broker on a TCP port of 127.0.0.1 inside this process; the address comes from that producer's
  metadata, and any other client (another process too) connects to it as to a broker.
- S3: gofakes3 (one static Go binary, built by fetch_gpu_wheels.sh into the carried bin/), in-memory
  backend; moto's server from the dev dependencies where the binary is missing.
- GPU busy % from nvidia-smi -lms (process-tree, main-thread and machine CPU: cpu_bench's /proc readers).
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Iterator

from confluent_kafka import Producer

from bench.gpu_parts.common import Context
from harness.gofakes3 import GoFakeS3
from harness.s3_server import S3Server, fill_bucket

BUCKET = "bench"
LOG = logging.getLogger("bench.librdkafka")


@contextlib.contextmanager
def mock_kafka() -> Iterator[str]:
    """librdkafka's mock cluster, held by a producer of this process; yields its bootstrap address."""
    holder = Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "unused:9092", "logger": LOG})
    brokers = holder.list_topics(timeout=10).brokers.values()
    yield ",".join(f"{b.host}:{b.port}" for b in brokers)
    holder.flush(5)
    del holder


@contextlib.contextmanager
def s3_server(ctx: Context) -> Iterator[tuple[str, str]]:
    """(endpoint URL, which server) of an S3 endpoint holding the bucket BUCKET with the corpus in it."""
    binary = ctx.wheels / "bin" / "gofakes3"
    server: GoFakeS3 | S3Server
    if binary.is_file():
        server, which = GoFakeS3(binary=binary, startup_timeout=15), "gofakes3"
    else:
        server, which = S3Server(), "moto (no gofakes3 binary)"  # moto: a dev dependency, not on the GPU machine
    with server as running:
        fill_bucket(running, BUCKET, ctx.corpus)
        yield running.endpoint_url, which


class GpuSampler:
    """nvidia-smi's GPU busy % every 250 ms, timestamped, on a thread (None where there is no nvidia-smi)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        try:
            self.process: subprocess.Popen[str] | None = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "250"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self.process = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append((time.monotonic(), float(line.split(",")[0])))

    def mean(self, start: float, end: float) -> float | None:
        values = [v for t, v in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 1) if values else None

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
