"""A real Schema Registry for tests and demos: Apicurio Registry with its Confluent-compatible API.

Why Apicurio: Confluent's own registry is not on Maven Central; Apicurio's server is, as one Quarkus
application (``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``, ~150 MB), and it serves the
Confluent Schema Registry REST API under ``/apis/ccompat/v7``, which confluent-kafka's client speaks.
Why not Docker: as for the broker (harness/kafka_broker.py), it is not available everywhere we test.
``ensure_registry()`` fetches the archive with Maven and unpacks it into .cache/apicurio/<version>
(``make`` does it at install, so tests run offline afterwards).

Choices worth knowing:
- It needs Java 21 or later: ``find_java()`` takes $JAVA_HOME or the newest JDK under /usr/lib/jvm that
  is recent enough, and says what it found when none is.
- The store is H2 in a file of the registry's temp dir, not H2 in memory: ``stop()`` + ``start()``
  keep the port and the schemas with their ids, as a real registry's restart does. With an in-memory
  store the ids registered before a restart would name nothing afterwards, so records framed before
  it would fail for the harness's reason, not the worker's.
- Quarkus's management interface (health, metrics) cannot be switched off at run time; it listens on a
  free port of 127.0.0.1 too, not on 0.0.0.0:9000, where two registries (or anything else) would clash.
- JVM start-up is tuned for a small machine as the broker's is: C1 only, serial GC; and, on Java 25 or
  later, an AOT cache (JEP 483/514: classes loaded and linked ahead of time) that ``train_aot_cache()``
  writes at install next to the unpacked registry, one per JDK build. A JDK it was not made by is
  ignored by the JVM (it starts as without it); delete .cache/apicurio/<version>/*.aot to remake them.
- The JVM is a child as in harness/children.py: it dies with the Python process that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from harness.children import LoggedServer, end, free_port, spawn

APICURIO_VERSION = "3.3.3"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "apicurio"
MIN_JAVA = 21
AOT_MIN_JAVA = 25
JVM_FLAGS = ("-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
CONFLUENT_API = "/apis/ccompat/v7"
_JVM_DIRS = Path("/usr/lib/jvm")


def ensure_registry() -> Path:
    """Return the unpacked registry (the folder of quarkus-run.jar), fetching it with Maven first if needed.

    The folder is renamed into place only once complete, so its presence means a whole unpacked archive."""
    home = CACHE_DIR / APICURIO_VERSION
    if (home / "quarkus-run.jar").is_file():
        return home
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="download-", dir=CACHE_DIR))
    cmd = ["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={_ARTIFACT}", f"-DoutputDirectory={tmp}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        archives = list(tmp.glob("*.tar.gz"))
        if done.returncode != 0 or len(archives) != 1:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        unpacked = tmp / "app"
        with tarfile.open(archives[0]) as archive:
            archive.extractall(unpacked, filter="data")
        if not (unpacked / "quarkus-run.jar").is_file():
            raise RuntimeError(f"{archives[0].name} has no quarkus-run.jar at its top level")
        if (home / "quarkus-run.jar").is_file():
            return home  # another process won the race
        shutil.rmtree(home, ignore_errors=True)  # a folder without quarkus-run.jar is not one we made
        unpacked.rename(home)
        return home
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _release(home: Path, key: str) -> str | None:
    """A value of the ``release`` file of the JDK or JRE at `home`; None if it is none."""
    try:
        release = (home / "release").read_text(errors="replace")
    except OSError:
        return None
    found = re.search(rf'^{key}="([^"]*)"', release, re.MULTILINE)
    return found.group(1) if found is not None and (home / "bin" / "java").is_file() else None


def _java_major(home: Path) -> int | None:
    """The feature version of the JDK or JRE at `home` (17, 25), from its ``release`` file."""
    found = re.match(r"(?:1\.)?(\d+)", _release(home, "JAVA_VERSION") or "")
    return int(found.group(1)) if found else None


def _aot_cache(java: Path) -> Path | None:
    """Where the AOT cache made by this ``java`` lives; None before Java 25 (no one-step AOT cache)."""
    home = java.parent.parent
    build = _release(home, "JAVA_RUNTIME_VERSION")
    if (_java_major(home) or 0) < AOT_MIN_JAVA or not build:
        return None
    return CACHE_DIR / APICURIO_VERSION / f"registry-java-{re.sub(r'[^A-Za-z0-9.+-]', '_', build)}.aot"


def train_aot_cache() -> Path | None:
    """Make the AOT cache for the JDK that runs the registry, if it has none (and can have one): run a
    registry through the calls tests make, and stop it; the JVM writes the cache as it exits (~10-20 s)."""
    java = find_java(java_home=os.environ.get("JAVA_HOME") or None)
    cache = _aot_cache(java)
    if cache is None or cache.is_file():
        return cache
    pending = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    registry = SchemaRegistry(aot_output=pending)
    try:
        registry.start()
        _exercise(registry.url)
        registry.stop(timeout=180.0)
        if registry.stopped_cleanly and pending.is_file() and pending.stat().st_size > 0:
            os.replace(pending, cache)
    finally:
        registry.close()
        pending.unlink(missing_ok=True)
    return cache if cache.is_file() else None


def _exercise(url: str) -> None:
    """Register a schema twice (the second breaking it), check compatibility, read it back by id and subject."""
    def call(method: str, path: str, body: object | None = None) -> None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    record = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"}]}
    changed = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    call("POST", "/subjects/warmup-value/versions", {"schema": json.dumps(record)})
    call("PUT", "/config/warmup-value", {"compatibility": "BACKWARD"})
    call("POST", "/compatibility/subjects/warmup-value/versions/latest", {"schema": json.dumps(changed)})
    call("POST", "/subjects/warmup-value/versions", {"schema": json.dumps(changed)})
    call("POST", "/subjects/warmup-value", {"schema": json.dumps(record)})
    call("GET", "/schemas/ids/1")
    call("GET", "/schemas/ids/99999")
    call("GET", "/subjects/warmup-value/versions")
    call("GET", "/subjects")


def find_java(minimum: int = MIN_JAVA, *, java_home: str | None = None, jvm_dirs: Path = _JVM_DIRS) -> Path:
    """The ``java`` of $JAVA_HOME when it is at least `minimum`, else of the newest such JDK in /usr/lib/jvm."""
    seen: list[str] = []
    if java_home:
        major = _java_major(Path(java_home))
        if major is not None and major >= minimum:
            return Path(java_home) / "bin" / "java"
        seen.append(f"JAVA_HOME={java_home} ({'no JDK' if major is None else f'Java {major}'})")
    candidates: list[tuple[int, Path]] = []
    for home in sorted(jvm_dirs.glob("*")) if jvm_dirs.is_dir() else []:
        major = _java_major(home)
        if major is not None:
            candidates.append((major, home))
            seen.append(f"{home} (Java {major})")
    usable = [(major, home) for major, home in candidates if major >= minimum]
    if not usable:
        raise RuntimeError(f"Apicurio Registry {APICURIO_VERSION} needs Java {minimum} or later; found "
                           f"{', '.join(seen) or f'no JDK in {jvm_dirs}'}. Install one (e.g. Temurin 25) "
                           "under /usr/lib/jvm, or point JAVA_HOME at it.")
    return max(usable, key=lambda c: (c[0], str(c[1])))[1] / "bin" / "java"


class SchemaRegistry(LoggedServer):
    """One registry process with a fresh store; ``stop`` + ``start`` keep its port and its schemas."""

    label = "schema registry"

    def __init__(self, *, keep_logs: bool = False, startup_timeout: float = 120.0,
                 aot_output: Path | None = None) -> None:
        self.keep_logs = keep_logs
        self._aot_output = aot_output  # train_aot_cache(): write an AOT cache here on exit
        self.stopped_cleanly = False  # the last stop ended the JVM by SIGTERM, before its deadline
        self._startup_timeout = startup_timeout
        self._log_dir: Path | None = None
        self._port = 0
        self._management_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.start_seconds: list[float] = []  # how long each start took, for the curious

    @property
    def log_dir(self) -> Path:
        """Temp dir with the store (store/) and the JVM's output (registry.log)."""
        if self._log_dir is None:
            raise RuntimeError("schema registry was never started")
        return self._log_dir

    @property
    def url(self) -> str:
        """The Confluent-compatible API: what ``schema_registry_url`` and SchemaRegistryClient take."""
        return f"http://127.0.0.1:{self._port}{CONFLUENT_API}"

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        home = ensure_registry()
        java = find_java(java_home=os.environ.get("JAVA_HOME") or None)
        cache = _aot_cache(java)
        if self._aot_output is not None:
            aot = [f"-XX:AOTCacheOutput={self._aot_output}"]
        else:
            aot = [f"-XX:AOTCache={cache}"] if cache is not None and cache.is_file() else []
        return [
            str(java), *JVM_FLAGS, *aot,
            "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self._port}",
            "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={self._management_port}",
            f"-Dapicurio.datasource.url=jdbc:h2:file:{self.log_dir / 'store' / 'registry'}",
            "-jar", str(home / "quarkus-run.jar"),
        ]

    def start(self) -> None:
        """Start the registry (on the port of its first start) and wait until its API answers."""
        if self._process is not None:
            raise RuntimeError("schema registry is already running")
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="schema-registry-"))
            self._port, self._management_port = free_port(), free_port()
        started = time.monotonic()
        self._process = spawn(self._command(), self.log_dir / "registry.log")
        try:
            self._wait_until_serving()
        except BaseException:
            self._end(None)
            raise
        self.start_seconds.append(time.monotonic() - started)

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while self.is_running and time.monotonic() < deadline:
            # Refused, reset, or a 5xx (an HTTPError) while it starts.
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/subjects", timeout=2) as answer:
                if answer.status == 200:
                    return
            time.sleep(0.1)
        assert self._process is not None
        problem = "was not ready in time" if self.is_running else f"exited with {self._process.returncode}"
        log = self.log_dir / "registry.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.is_file() else ""
        raise RuntimeError(f"schema registry {problem}; logs kept in {self.log_dir}\n{tail}")

    def stop(self, *, timeout: float = 30.0) -> None:
        """Shut down cleanly (SIGTERM; SIGKILL after ``timeout``) and reap; the port and store are kept."""
        self._end(timeout)

    def kill(self) -> None:
        """SIGKILL the registry and reap it; ``start()`` brings it back."""
        self._end(None)

    def _end(self, timeout: float | None) -> None:
        if self._process is None:
            return
        self.stopped_cleanly = end(self._process, timeout)
        self._process = None


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a throwaway Apicurio Schema Registry until Ctrl-C.")
    parser.add_argument("--keep-logs", action="store_true", help="keep the store and log dir on exit")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with SchemaRegistry(keep_logs=args.keep_logs) as registry:
        print(f"schema_registry_url={registry.url}  (logs: {registry.log_dir}; Ctrl-C stops)", flush=True)
        try:
            while registry.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return
        raise RuntimeError(f"the registry exited unexpectedly; see {registry.log_dir / 'registry.log'}")


if __name__ == "__main__":
    main()
