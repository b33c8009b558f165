"""gofakes3 with its in-memory backend, on a free port: the benchmark server that costs the box least.

On a 2-core machine it serves 4,300 GET/s of the 1024-px corpus photos at ~150 µs of CPU each, against
s3proxy's ~2,000 GET/s at 540-750 µs (both serving the worker's own GETs from two threads:
bench/fetch_bench.py, BENCHMARKS.md). Where a benchmark shares two cores between the
worker and its servers, every millisecond the server spends is one the worker cannot, so the benchmarks
of the worker's CPU use this one. It does not check signatures: bench/fetch_bench.py, which must see a
wrongly signed GET fail, keeps s3proxy (harness/s3proxy.py).

The binary is built from its Go module (v1.2.0, pinned) with ``go install`` the first time and cached
under .cache/bin, as helm is (Makefile); bench/fetch_gpu_wheels.sh copies the same build for the GPU
machine, which has no Go. How the process is run: harness/s3_process.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.s3_process import S3Process

MODULE = "github.com/johannesboyne/gofakes3/cmd/gofakes3@v1.2.0"
BINARY = Path(__file__).resolve().parent.parent / ".cache" / "bin" / "gofakes3"


def ensure_binary() -> Path:
    """The gofakes3 binary, built with Go the first time: static (no cgo), so it runs on the GPU machine too."""
    if BINARY.is_file():
        return BINARY
    env = os.environ | {"GOBIN": str(BINARY.parent), "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
    cmd = ["go", "install", "-trimpath", "-ldflags=-s -w", MODULE]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not BINARY.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return BINARY


class GoFakeS3(S3Process):
    """One gofakes3 process on 127.0.0.1 (`binary`: a prebuilt one, else ensure_binary()'s)."""

    name = "gofakes3"

    def __init__(self, *, binary: Path | None = None, startup_timeout: float = 60.0) -> None:
        super().__init__(startup_timeout=startup_timeout)
        self._binary = binary

    def command(self, port: int, folder: Path) -> list[str]:
        binary = self._binary or ensure_binary()
        return [str(binary), "-backend", "memory", "-host", f"127.0.0.1:{port}", "-quiet"]
