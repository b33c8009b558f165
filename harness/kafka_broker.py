"""A real single-node Apache Kafka 4.x broker (KRaft, broker+controller in one JVM) for tests and demos.

Why a real broker: rebalances, offset commits, transactions and broker restarts are what the worker has
to get right, and no mock reproduces them. Why not Docker: it is not available everywhere we run tests.
The broker jars come from Maven Central (harness/pom.xml) and are cached under .cache/kafka/libs.

Choices worth knowing:
- auto.create.topics.enable=false: tests create their topics (with a deliberate partition count), and
  a worker that writes to a wrong topic fails loudly. Override any setting with ``properties=``.
- Every replication factor and min.insync.replicas is 1 (a single node), so transactions work; the
  internal topics have 4 partitions, not 50 (a quicker first ``init_transactions``).
- broker.session.timeout.ms=3000: after a SIGKILL the restarted controller refuses the broker's new
  registration until the dead incarnation's session expires (9 s by default).
- JVM start-up is tuned for a small machine: C1 only, serial GC, and an AppCDS class archive that the
  first cleanly stopped broker writes into the jar cache (later starts map it instead of loading classes;
  after a JDK upgrade it is ignored: delete .cache/kafka/libs/broker.jsa).
- ``proxy_port=``: clients that bootstrap through a proxy on that port (harness/tcp_proxy.py) are told
  to make every later connection through it too; ``bootstrap_servers`` stays direct.
- ``security=`` (harness/kafka_security.py): two more client listeners, SASL_SSL (SCRAM-SHA-512, the
  users created when the storage is formatted) and SSL, with the given keystore; their addresses are
  ``listener_bootstrap("SASL_SSL")`` and ``listener_bootstrap("SSL")``. The broker's own traffic, the
  controller, ``admin()`` and ``create_topic`` stay on PLAINTEXT (``bootstrap_servers``).
- Where util-linux ``setpriv`` exists the JVM gets PDEATHSIG=KILL (harness/children.py, as the benchmarks'
  S3 servers): if the Python process that started it dies (even by SIGKILL), the broker dies too instead
  of lingering. Start brokers from a long-lived thread.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # the documented path

from harness.children import LoggedServer, end, free_port, spawn
from harness.kafka_security import SCRAM_MECHANISM, BrokerTls

POM = Path(__file__).with_name("pom.xml")
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "kafka"
LIBS_DIR = CACHE_DIR / "libs"
_STAMP = ".pom-sha256"  # the jar cache is valid for the pom.xml with this digest
_CDS_ARCHIVE = "broker.jsa"  # lives in LIBS_DIR so that it is thrown away together with the jars
JVM_FLAGS = ("-Xmx512m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
{quorum}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
"""
# With ``proxy_port``: a second client listener, PROXIED, whose advertised address is a proxy's port
# (harness/tcp_proxy.py), so that a client bootstrapping through the proxy makes every later
# connection through it too. PLAINTEXT stays direct: the broker's own traffic, ``admin()`` and
# ``create_topic`` never pass through the proxy's faults.

# With ``security``: the listeners above plus SASL_SSL and SSL, and what those two need. No authorizer:
# an authenticated client may do anything, as a PLAINTEXT one may.
_SECURED_PROPERTIES = """\
sasl.enabled.mechanisms={mechanism}
listener.name.sasl_ssl.{mechanism_lower}.sasl.jaas.config=\\
  org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={password}
ssl.key.password={password}
ssl.client.auth=none
"""
_LOG4J2_PROPERTIES = (  # everything the broker logs goes to broker.log in its temp dir
    "appender.f.type=File\nappender.f.name=F\nappender.f.fileName={log}\nappender.f.layout.type=PatternLayout\n"
    "appender.f.layout.pattern=[%d] %p %m (%c)%n\nrootLogger.level=INFO\nrootLogger.appenderRef.f.ref=F\n")

_CLIENT_LOG = logging.getLogger("harness.librdkafka")


def ensure_jars() -> Path:
    """Return the directory of broker jars, downloading them with Maven first if needed (atomically)."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stamp = LIBS_DIR / _STAMP
    if stamp.is_file() and stamp.read_text() == digest:
        return LIBS_DIR
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="libs-tmp-", dir=CACHE_DIR))
    cmd = ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={tmp}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (tmp / _STAMP).write_text(digest)
        if stamp.is_file() and stamp.read_text() == digest:
            return LIBS_DIR  # another process won the race
        if LIBS_DIR.exists():  # jars for an older pom.xml
            stale = CACHE_DIR / f"stale-{tmp.name}"
            LIBS_DIR.rename(stale)
            shutil.rmtree(stale)
        tmp.rename(LIBS_DIR)
        return LIBS_DIR
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Membership:
    """A node of a multi-node cluster (harness/kafka_cluster.py): its id, its ports (chosen by the
    cluster, since every node names every controller) and the static controller quorum."""

    node_id: int
    port: int
    controller_port: int
    voters: str  # controller.quorum.voters: "1@127.0.0.1:p1,2@127.0.0.1:p2,..."
    cluster_id: str


class KafkaBroker(LoggedServer):
    """One broker process with a fresh data dir; ``stop``/``kill`` + ``start`` keep its ports and data.
    Alone (the default) it is its own single-voter quorum; with ``membership`` it is one node of a cluster."""

    label = "Kafka broker"

    def __init__(self, *, properties: Mapping[str, str] | None = None, keep_logs: bool = False,
                 startup_timeout: float = 60.0, proxy_port: int | None = None,
                 security: BrokerTls | None = None, membership: Membership | None = None) -> None:
        self.keep_logs = keep_logs
        self.membership = membership
        self._properties = dict(properties or {})
        self._startup_timeout = startup_timeout
        self._log_dir: Path | None = None
        self._port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._cds_pending: Path | None = None  # class archive this JVM writes when it exits
        self._admin: AdminClient | None = None
        self._proxy_port = proxy_port  # advertise this port for the PROXIED listener (see _prepare)
        self._proxied_port = 0
        self._security = security
        self._secured_ports: dict[str, int] = {}  # listener name (SASL_SSL, SSL) -> port

    @property
    def log_dir(self) -> Path:
        """Temp dir with server.properties, data/, broker.log (log4j) and jvm.log (stdout/stderr)."""
        if self._log_dir is None:
            raise RuntimeError("broker was never started")
        return self._log_dir

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self._port}"

    @property
    def proxied_listener(self) -> tuple[str, int]:
        """Where a proxy in front of this broker forwards to: the listener that advertises the proxy."""
        if not self._proxied_port:
            raise RuntimeError("this broker has no proxied listener, or was never started")
        return ("127.0.0.1", self._proxied_port)

    def listener_bootstrap(self, listener: str) -> str:
        """The address of a secured listener, "SASL_SSL" or "SSL" (a broker started with ``security=``)."""
        if listener not in self._secured_ports:
            raise RuntimeError(f"this broker has no {listener} listener, or was never started")
        return f"127.0.0.1:{self._secured_ports[listener]}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def admin(self) -> AdminClient:
        if self._admin is None:
            # Its log goes through logging: printed only when polled, so never after the broker stops.
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "logger": _CLIENT_LOG})
        return self._admin

    def _java(self, main: str, *args: str, extra_flags: tuple[str, ...] = ()) -> list[str]:
        libs = ensure_jars()
        cds = libs / _CDS_ARCHIVE
        java = str(Path(os.environ["JAVA_HOME"]) / "bin" / "java") if "JAVA_HOME" in os.environ else "java"
        return [java, *JVM_FLAGS, *([f"-XX:SharedArchiveFile={cds}"] if cds.is_file() else []), *extra_flags,
                f"-Dlog4j2.configurationFile={self.log_dir / 'log4j2.properties'}",
                "-cp", os.pathsep.join(sorted(str(p) for p in libs.glob("*.jar"))), main, *args]

    def _prepare(self) -> None:
        """First start only: pick ports, write the configs and format the storage."""
        self._log_dir = Path(tempfile.mkdtemp(prefix="kafka-broker-"))
        member = self.membership
        if member is None:
            self._port, controller = free_port(), free_port()
            quorum, node_id = f"controller.quorum.bootstrap.servers=127.0.0.1:{controller}", 1
        else:
            self._port, controller = member.port, member.controller_port
            quorum, node_id = f"controller.quorum.voters={member.voters}", member.node_id
        props = _SERVER_PROPERTIES.format(port=self._port, controller=controller, data=self.log_dir / "data",
                                          quorum=quorum, node_id=node_id)
        # name -> (security protocol, port, advertised port): later lines in the file win, so the
        # listener lines are written once more whenever there is a listener beyond PLAINTEXT.
        listeners = {"PLAINTEXT": ("PLAINTEXT", self._port, self._port)}
        if self._proxy_port is not None:
            self._proxied_port = free_port()
            listeners["PROXIED"] = ("PLAINTEXT", self._proxied_port, self._proxy_port)
        if self._security is not None:
            self._secured_ports = {"SASL_SSL": free_port(), "SSL": free_port()}
            listeners |= {name: (name, port, port) for name, port in self._secured_ports.items()}
            props += _SECURED_PROPERTIES.format(mechanism=SCRAM_MECHANISM, mechanism_lower=SCRAM_MECHANISM.lower(),
                                                keystore=self._security.keystore,
                                                password=self._security.keystore_password)
        if len(listeners) > 1:
            props += "listeners=" + ",".join([f"{name}://127.0.0.1:{port}" for name, (_, port, _) in listeners.items()]
                                             + [f"CONTROLLER://127.0.0.1:{controller}"]) + "\n"
            props += "advertised.listeners=" + ",".join(
                f"{name}://127.0.0.1:{advertised}" for name, (_, _, advertised) in listeners.items()) + "\n"
            props += "listener.security.protocol.map=CONTROLLER:PLAINTEXT," + ",".join(
                f"{name}:{protocol}" for name, (protocol, _, _) in listeners.items()) + "\n"
        props += "".join(f"{k}={v}\n" for k, v in self._properties.items())  # later lines win
        (self.log_dir / "server.properties").write_text(props)
        (self.log_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES.format(log=self.log_dir / "broker.log"))
        cluster_id = member.cluster_id if member else new_cluster_id()
        # "--cluster-id=" form: a urlsafe id can start with "-", which would parse as an option (1 in 64).
        cmd = self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                         "-c", str(self.log_dir / "server.properties"), *(() if member else ("--standalone",)),
                         *(arg for name, password in (self._security.scram_users if self._security else {}).items()
                           for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")))
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log_dir, self._log_dir = self._log_dir, None  # a later start() prepares afresh
            raise RuntimeError(f"formatting Kafka storage failed:\n{done.stdout}{done.stderr}\nfiles: {log_dir}")

    def start(self, *, wait: bool = True) -> None:
        """Start the broker (formatting its storage the first time); wait until it serves consumer groups
        (``wait=False``: the caller calls ``wait_until_serving``, once a cluster's quorum can form)."""
        if self.is_running:
            raise RuntimeError("broker is already running")
        self._end(None)  # reaps one that died on its own
        if self._log_dir is None:
            self._prepare()
        flags: tuple[str, ...] = ()
        if not (ensure_jars() / _CDS_ARCHIVE).is_file():
            self._cds_pending = ensure_jars() / f"{_CDS_ARCHIVE}.{uuid.uuid4().hex}.tmp"
            flags = (f"-XX:ArchiveClassesAtExit={self._cds_pending}",)
        cmd = self._java("kafka.Kafka", str(self.log_dir / "server.properties"), extra_flags=flags)
        self._process = spawn(cmd, self.log_dir / "jvm.log")  # harness/children.py: tied to this process
        if wait:
            self.wait_until_serving()

    def wait_until_serving(self) -> None:
        try:
            self._wait_until_serving()
        except BaseException:
            self.kill()
            raise

    def _wait_until_serving(self) -> None:
        probe = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + self._startup_timeout
        while self.is_running and time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                brokers = probe.list_topics(timeout=1).brokers
                if self.membership is not None:  # a cluster's node: registered is enough; the cluster
                    if self.membership.node_id in brokers:  # warms its coordinators once all are up
                        return
                elif brokers:
                    # Load the group coordinator too, or the first group to join gets NOT_COORDINATOR and
                    # librdkafka backs off for ~3 s.
                    probe.describe_consumer_groups(["harness-warmup"], request_timeout=5)["harness-warmup"].result()
                    return
            time.sleep(0.1)
        assert self._process is not None
        problem = "was not ready in time" if self.is_running else f"exited with {self._process.returncode}"
        tails = "".join(f"\n--- {name} ---\n" + "\n".join((self.log_dir / name).read_text(errors="replace")
                                                            .splitlines()[-40:])
                        for name in ("broker.log", "jvm.log") if (self.log_dir / name).is_file())
        raise RuntimeError(f"Kafka broker {problem}; logs kept in {self.log_dir}{tails}")

    def stop(self, *, timeout: float = 30.0) -> None:
        """Shut down cleanly (SIGTERM; SIGKILL after ``timeout``) and reap; ports and data are kept."""
        self._end(timeout)

    def kill(self) -> None:
        """SIGKILL the broker (an unclean crash) and reap it; ``start()`` brings it back."""
        self._end(None)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _end(self, timeout: float | None) -> None:
        self._admin = None  # let it go first: it would keep reconnecting to the stopped broker
        if self._process is None:
            return
        clean = end(self._process, timeout)
        self._process = None
        # Promote the class archive this JVM wrote on a clean exit; drop a possibly truncated one.
        pending, self._cds_pending = self._cds_pending, None
        if pending is not None and pending.is_file():
            if clean and pending.stat().st_size > 0:
                os.replace(pending, pending.with_name(_CDS_ARCHIVE))
            else:
                pending.unlink()

    def create_topic(self, name: str, partitions: int = 1, *, config: Mapping[str, str] | None = None,
                     timeout: float = 30.0, replication_factor: int = 1) -> None:
        """Create a topic and wait until every partition has a leader."""
        new = NewTopic(name, partitions, replication_factor, config=dict(config or {}))
        futures = self.admin().create_topics([new],
                                             operation_timeout=timeout, request_timeout=timeout)
        futures[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            topic = self.admin().list_topics(name, timeout=timeout).topics.get(name)
            if (topic is not None and topic.error is None and len(topic.partitions) == partitions
                    and all(p.leader >= 0 for p in topic.partitions.values())):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} has no leaders after {timeout}s")
            time.sleep(0.05)


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a throwaway single-node Kafka broker until Ctrl-C.")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME[:PARTITIONS]",
                        help="create this topic after start (repeatable)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the data and log dir on exit")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the broker cleanly on SIGTERM too
    with KafkaBroker(keep_logs=args.keep_logs) as broker:
        for spec in args.topic:
            name, _, partitions = spec.partition(":")
            broker.create_topic(name, int(partitions or 1))
        print(f"bootstrap.servers={broker.bootstrap_servers}  (logs: {broker.log_dir}; Ctrl-C stops)", flush=True)
        try:
            while broker.is_running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            return
        raise RuntimeError(f"the broker exited unexpectedly; see {broker.log_dir / 'broker.log'}")


if __name__ == "__main__":
    main()
