"""pytest fixtures for a real Kafka broker and a real HTTP S3 endpoint (load via ``pytest_plugins``).

Why these scopes: starting a broker costs a couple of seconds, so one broker serves the whole session and
tests stay apart by using their own topics (``topic_factory``) and consumer groups. A test that stops,
kills or restarts the broker takes ``private_kafka_broker`` so nobody else sees the outage; one that
stalls or cuts the network between clients and broker takes ``proxied_kafka_broker``; one that
connects through SASL_SSL or SSL takes ``secured_kafka_broker`` (one per test module). S3 is one
moto server per session with a fresh bucket per test (``s3_bucket``). The Schema Registry
(``schema_registry``) is one per session too, started only when a test asks for it (it costs a few
seconds and ~300 MB); tests keep apart by subject names, which follow their own topics.

Broker and registry logs are deleted after a green run and kept after a failure (or with KAFKA_HARNESS_KEEP_LOGS=1);
kept paths are listed in the terminal summary.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from harness.kafka_broker import KafkaBroker
from harness.kafka_cluster import KafkaCluster
from harness.kafka_security import SCRAM_MECHANISM, make_broker_tls
from harness.s3_server import S3Server
from harness.schema_registry import SchemaRegistry
from harness.tcp_proxy import TcpProxy

_KEEP_LOGS = os.environ.get("KAFKA_HARNESS_KEEP_LOGS", "") not in ("", "0")
_failed_key = pytest.StashKey[bool]()
_kept_key = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_failed_key] = True
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for path in config.stash.get(_kept_key, []):
        terminalreporter.write_line(f"Logs kept in {path}")


def _close(broker: KafkaBroker | SchemaRegistry, config: pytest.Config, *, failed: bool) -> None:
    keep = failed or _KEEP_LOGS
    broker.close(keep_logs=keep)
    if keep:
        config.stash.setdefault(_kept_key, []).append(str(broker.log_dir))


def unique_name(request: pytest.FixtureRequest, *, max_length: int) -> str:
    """``<test name>-<random>`` in lower case letters, digits and dashes (legal for topics and buckets)."""
    suffix = uuid.uuid4().hex[:8]
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"{stem[: max_length - len(suffix) - 1].rstrip('-')}-{suffix}"


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    """The session's shared broker. Do not stop it; use ``private_kafka_broker`` for that."""
    broker = KafkaBroker()
    broker.start()
    yield broker
    _close(broker, request.config, failed=request.session.testsfailed > 0)


@pytest.fixture
def private_kafka_broker(request: pytest.FixtureRequest) -> Iterator[KafkaBroker]:
    """A broker for this test alone, free to ``stop()``, ``kill()``, ``start()`` and ``restart()``."""
    broker = KafkaBroker()
    broker.start()
    yield broker
    _close(broker, request.config, failed=request.node.stash.get(_failed_key, False))


@dataclass(frozen=True)
class ProxiedKafka:
    """A private broker whose clients, bootstrapped at ``bootstrap_servers``, reach it only through
    ``proxy`` (stall, cut, heal; byte counters). ``direct_bootstrap_servers`` bypasses the proxy: for
    creating topics and checking results while the proxy is failing."""

    broker: KafkaBroker
    proxy: TcpProxy

    @property
    def bootstrap_servers(self) -> str:
        return self.proxy.address

    @property
    def direct_bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    def create_topic(self, name: str, partitions: int = 1, *, config: Mapping[str, str] | None = None) -> None:
        self.broker.create_topic(name, partitions, config=config)  # direct: works during a stall or cut


@pytest.fixture
def proxied_kafka_broker(request: pytest.FixtureRequest) -> Iterator[ProxiedKafka]:
    """A broker for this test alone behind a TCP proxy that every client connection goes through."""
    proxy = TcpProxy(lambda: broker.proxied_listener)  # the broker picks that port when it starts
    broker = KafkaBroker(proxy_port=proxy.port)
    try:
        broker.start()
        yield ProxiedKafka(broker=broker, proxy=proxy)
    finally:
        try:
            proxy.close()
        finally:
            _close(broker, request.config, failed=request.node.stash.get(_failed_key, False))


@dataclass(frozen=True)
class SecuredKafka:
    """A broker with a SASL_SSL listener (SCRAM-SHA-512, ``username``/``password``) and an SSL listener,
    both with a certificate signed by the CA in ``ca_file``; ``other_ca_file`` is an unrelated CA, which a
    client must refuse the broker with. Topics are made, and results read, on the PLAINTEXT listener
    (``broker.bootstrap_servers`` and ``create_topic``)."""

    broker: KafkaBroker
    sasl_ssl_bootstrap: str
    ssl_bootstrap: str
    ca_file: str
    other_ca_file: str
    username: str
    password: str
    mechanism: str = SCRAM_MECHANISM

    def create_topic(self, name: str, partitions: int = 1) -> None:
        self.broker.create_topic(name, partitions)


@pytest.fixture(scope="module")
def secured_kafka_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredKafka]:
    """A broker for this module with SASL_SSL and SSL listeners (see ``SecuredKafka``). The password is
    new for every module, so that finding it anywhere it should not be cannot be a coincidence."""
    username, password = "worker", f"pw-{secrets.token_hex(12)}"
    tls = make_broker_tls(tmp_path_factory.mktemp("kafka-tls"), scram_users={username: password})
    broker = KafkaBroker(security=tls)
    try:
        broker.start()
        yield SecuredKafka(broker=broker, sasl_ssl_bootstrap=broker.listener_bootstrap("SASL_SSL"),
                           ssl_bootstrap=broker.listener_bootstrap("SSL"), ca_file=str(tls.ca_file),
                           other_ca_file=str(tls.other_ca_file), username=username, password=password)
    finally:
        _close(broker, request.config, failed=request.session.testsfailed > 0)


@pytest.fixture
def topic_factory(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``topic_factory(partitions=1)`` creates a uniquely named topic on the session broker; returns its name."""

    def create(partitions: int = 1) -> str:
        name = unique_name(request, max_length=200)
        kafka_broker.create_topic(name, partitions)
        return name

    return create


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_client(s3_server: S3Server) -> Iterator[Any]:
    client = s3_server.client()
    yield client
    client.close()


@pytest.fixture
def s3_bucket(s3_client: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty bucket for this test; emptied and deleted afterwards."""
    name = unique_name(request, max_length=63)
    s3_client.create_bucket(Bucket=name)
    yield name
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        if page.get("Contents"):
            s3_client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": o["Key"]} for o in page["Contents"]]})
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def schema_registry(request: pytest.FixtureRequest) -> Iterator[SchemaRegistry]:
    """The session's Apicurio Registry; its Confluent-compatible API is at ``schema_registry.url``.

    A test may ``stop()`` it to play an outage, and must ``start()`` it again before it returns (in a
    ``finally``): the port and every registered schema survive, so the tests after it see no difference."""
    registry = SchemaRegistry()
    registry.start()
    yield registry
    _close(registry, request.config, failed=request.session.testsfailed > 0)


@pytest.fixture(scope="module")
def kafka_cluster(request: pytest.FixtureRequest) -> Iterator[KafkaCluster]:
    """Three replicated nodes (harness/kafka_cluster.py) shared by one test module: three JVMs, so only
    the modules that fail brokers over take it. Tests may kill, stop and start nodes; each must leave
    all three running."""
    cluster = KafkaCluster(keep_logs=_KEEP_LOGS)
    cluster.start()
    yield cluster
    failed = request.session.testsfailed > 0
    cluster.close(keep_logs=failed or _KEEP_LOGS)
    if failed or _KEEP_LOGS:
        config = request.config
        config.stash.setdefault(_kept_key, []).extend(str(node.log_dir) for node in cluster.nodes)
