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
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Producer

from bench.gpu_parts.common import Context

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def s3_server(ctx: Context, log: Path) -> Iterator[tuple[str, str]]:
    """(endpoint URL, which server) of an S3 endpoint holding the bucket BUCKET."""
    binary = ctx.wheels / "bin" / "gofakes3"
    if not binary.is_file():
        from harness.s3_server import S3Server  # moto: a dev dependency, not on the GPU machine

        with S3Server() as moto:
            client = moto.client()
            client.create_bucket(Bucket=BUCKET)
            client.close()
            yield moto.endpoint_url, "moto (no gofakes3 binary)"
        return
    port = free_port()
    with log.open("ab") as out:
        server = subprocess.Popen([str(binary), "-backend", "memory", "-host", f"127.0.0.1:{port}",
                                   "-initialbucket", BUCKET, "-quiet"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"gofakes3 did not listen on {port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", "gofakes3"
    finally:
        server.terminate()
        server.wait(10)


def upload(endpoint: str, corpus: list[tuple[str, bytes]]) -> None:
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                            aws_access_key_id="bench", aws_secret_access_key="bench")
    for name, data in corpus:
        client.put_object(Bucket=BUCKET, Key=name, Body=data)
    client.close()


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
