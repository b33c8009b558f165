"""s3proxy (a JVM) with in-memory storage, on a free port: the benchmark server that checks signatures.

s3proxy 2.7.0 with the ``transient`` jclouds provider serves ~2,000 GET/s at 0.5-0.75 ms of CPU each
(measured on a 2-core machine), against moto's 2.7-3.0 ms; unlike gofakes3 (harness/gofakes3.py,
~0.15 ms) it verifies SigV4 signatures, which bench/fetch_bench.py relies on. Tests keep using moto: it
is in-process and needs no Java. How the process is run: harness/s3_process.py.

The jar (org.gaul:s3proxy:2.7.0, classifier jar-with-dependencies, Java 17) comes from Maven Central
through ``mvn dependency:copy`` and is cached under .cache/s3proxy, as the broker's jars are
(harness/kafka_broker.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.s3_process import S3Process
from harness.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY

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


class S3Proxy(S3Process):
    """One s3proxy process on 127.0.0.1 with the ``transient`` (in-memory) provider."""

    name = "s3proxy"

    def command(self, port: int, folder: Path) -> list[str]:
        properties = folder / "s3proxy.conf"
        properties.write_text(_PROPERTIES.format(port=port, identity=ACCESS_KEY_ID, credential=SECRET_ACCESS_KEY))
        java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java"
        return [java, *JVM_FLAGS, "-jar", str(ensure_jar()), "--properties", str(properties)]
