"""An S3-compatible server in its own process, on a free port of 127.0.0.1: what the benchmarks' servers share.

The benchmarks need an S3 endpoint that costs the box little CPU per GET, so that what they measure is
the worker (moto, harness/s3_server.py, spends 2.7-3.0 ms per GET). Two such servers are here, each a
subclass that says only how to start it: s3proxy, a JVM (harness/s3proxy.py: it verifies SigV4, which
bench/fetch_bench.py relies on) and gofakes3, one Go binary (harness/gofakes3.py: ~150 µs of CPU per
GET against s3proxy's 540-750, the cheapest on a 2-core box). Both hold their buckets in memory, die
with the Python process that started them where ``setpriv`` exists (as the broker does), and take the
test credentials of harness/s3_server.py.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from botocore.config import Config

from harness.children import end, free_port, spawn
from harness.s3_server import endpoint_client, endpoint_env


class S3Process:
    """One server process, started by ``command()``; use as a context manager."""

    name = "S3 server"

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port = 0

    def command(self, port: int, folder: Path) -> list[str]:
        """The command line that serves S3 on 127.0.0.1:`port` (`folder`: a scratch folder it may use)."""
        raise NotImplementedError

    @property
    def endpoint_url(self) -> str:
        if self._process is None:
            raise RuntimeError(f"{self.name} is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self._port = free_port()
        self._process = spawn(self.command(self._port, self._dir), self._dir / "server.log")
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        """Any HTTP answer (an anonymous GET / gets 403 or a bucket list) means the endpoint is serving."""
        deadline = time.monotonic() + self._startup_timeout
        assert self._process is not None
        while self._process.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=1) as response:
                    response.read()
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        assert self._dir is not None
        tail = "\n".join((self._dir / "server.log").read_text(errors="replace").splitlines()[-40:])
        problem = "was not ready in time" if self._process.poll() is None else f"exited with {self._process.returncode}"
        raise RuntimeError(f"{self.name} {problem}:\n{tail}")

    def stop(self) -> None:
        if self._process is not None:
            end(self._process, 10)
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client for uploads to this endpoint (checksums only where required). ``.close()`` it.

        Newer boto3 sends CRC checksums with uploads and asks for them on GETs (``x-amz-checksum-mode``);
        s3proxy answers both with NotImplemented, so neither is used where no operation requires it.
        """
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
        return endpoint_client(self.endpoint_url, config=config)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (the worker): this endpoint, its credentials, checksums only where required."""
        return endpoint_env(self.endpoint_url) | {
            "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
        }
