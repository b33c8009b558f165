"""A fast S3-compatible server for benchmarks: s3proxy (a JVM) with in-memory storage, on a free port.

Why not moto (harness/s3_server.py): moto spends 2.7-3.0 ms of CPU per 180 KB GET and tops out near
350 GET/s, so on a small box a benchmark of the worker would mostly measure moto. s3proxy 2.7.0 with
the ``transient`` jclouds provider serves ~2,000 GET/s at ~0.5 ms of CPU each (measured on the 2-core dev
box). Tests keep using moto: it is in-process and needs no Java.

The jar (org.gaul:s3proxy:2.7.0, classifier jar-with-dependencies, Java 17) comes from Maven Central
through ``mvn dependency:copy`` and is cached under .cache/s3proxy, as the broker's jars are
(harness/kafka_broker.py). Newer boto3 sends CRC checksums with uploads and asks for them on GETs
(``x-amz-checksum-mode``); s3proxy answers both with NotImplemented. So ``client()`` and the worker's
environment (``env()``) use checksums only where an operation requires them, which none here does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from botocore.config import Config

from harness.kafka_broker import _free_port
from harness.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, endpoint_client, endpoint_env

ARTIFACT = "org.gaul:s3proxy:2.7.0:jar:jar-with-dependencies"
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "s3proxy"
JAR = CACHE_DIR / "s3proxy-2.7.0-jar-with-dependencies.jar"
# Small heap and the serial GC for a small shared box; full JIT, because a benchmark measures the steady state.
JVM_FLAGS = ("-Xmx512m", "-XX:+UseSerialGC")
_PROPERTIES = """\
s3proxy.endpoint=http://127.0.0.1:{port}
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity={identity}
s3proxy.credential={credential}
jclouds.provider=transient
jclouds.identity={identity}
jclouds.credential={credential}
"""


def ensure_jar() -> Path:
    """The s3proxy jar, downloaded from Maven Central with mvn the first time (atomically)."""
    if JAR.is_file():
        return JAR
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="jar-tmp-", dir=CACHE_DIR))
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}", f"-DoutputDirectory={tmp}"]
    try:
        # cwd=tmp: no pom.xml there, so mvn runs the goal without a project
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (tmp / JAR.name).is_file():
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        os.replace(tmp / JAR.name, JAR)
        return JAR
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class S3Proxy:
    """One s3proxy process on 127.0.0.1, in-memory buckets; use as a context manager."""

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._port = 0

    @property
    def endpoint_url(self) -> str:
        if self._process is None:
            raise RuntimeError("s3proxy is not running")
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("s3proxy is already running")
        jar = ensure_jar()
        self._dir = Path(tempfile.mkdtemp(prefix="s3proxy-"))
        self._port = _free_port()
        properties = self._dir / "s3proxy.conf"
        properties.write_text(_PROPERTIES.format(port=self._port, identity=ACCESS_KEY_ID, credential=SECRET_ACCESS_KEY))
        java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java"
        cmd = [java, *JVM_FLAGS, "-jar", str(jar), "--properties", str(properties)]
        if shutil.which("setpriv"):  # dies with the Python process that started it, as the broker does
            cmd = ["setpriv", "--pdeathsig", "KILL", *cmd]
        with (self._dir / "s3proxy.log").open("ab") as log:
            self._process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        """Any HTTP answer (an anonymous GET / gets 403) means the endpoint is serving."""
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
        tail = "\n".join((self._dir / "s3proxy.log").read_text(errors="replace").splitlines()[-40:])
        problem = "was not ready in time" if self._process.poll() is None else f"exited with {self._process.returncode}"
        raise RuntimeError(f"s3proxy {problem}:\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            process.kill()  # no-op when it has exited
            process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> S3Proxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client for uploads to this endpoint (checksums only where required). ``.close()`` it."""
        config = Config(request_checksum_calculation="when_required", response_checksum_validation="when_required")
        return endpoint_client(self.endpoint_url, config=config)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (the worker): this endpoint, its credentials, checksums only where required."""
        return endpoint_env(self.endpoint_url) | {
            "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
        }
