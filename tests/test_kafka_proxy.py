"""The TCP proxy of harness/tcp_proxy.py, and a broker behind it (``proxied_kafka_broker``).

The Kafka fault tests (tests/pipeline/test_commit_stalls.py) trust that a stall moves no byte and
then delivers everything, that a cut resets every connection, and that no client of a proxied
broker can reach it except through the proxy. These check each, first on plain sockets, then with
real Kafka clients.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from harness.kafka_io import read_all
from harness.pytest_plugin import ProxiedKafka
from harness.tcp_proxy import TcpProxy
from tests.test_harness import collect_errors, consume, produce


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def connect_and_read_a_byte(port: int) -> bytes:
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        return sock.recv(1)


def test_the_tcp_proxy_forwards_holds_in_a_stall_resets_in_a_cut_and_leaves_nothing_behind() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, TcpProxy(server.getsockname()[:2]) as proxy:
        server.settimeout(5)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            upstream, _ = server.accept()
            with upstream:
                upstream.settimeout(5)
                client.sendall(b"ping")
                assert recv_exactly(upstream, 4) == b"ping"
                upstream.sendall(b"pong!")
                assert recv_exactly(client, 5) == b"pong!"
                proxy.stall(1.5)  # returns once the loop has stopped: the counters stand still
                assert (proxy.bytes_to_upstream, proxy.bytes_to_client) == (4, 5)
                client.sendall(b"held")
                upstream.sendall(b"back")
                upstream.settimeout(0.7)
                with pytest.raises(TimeoutError):
                    upstream.recv(4)
                assert (proxy.bytes_to_upstream, proxy.bytes_to_client, proxy.open_connections) == (4, 5, 1)
                upstream.settimeout(5)
                assert recv_exactly(upstream, 4) == b"held", "delivered when the stall ends"
                assert recv_exactly(client, 4) == b"back"

                proxy.cut(1.0)
                assert proxy.open_connections == 0 and proxy.resets == 1
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
                with pytest.raises(ConnectionResetError):
                    upstream.recv(1)
        with pytest.raises(ConnectionResetError):  # at connect or at the first read: a race on loopback
            connect_and_read_a_byte(proxy.port)
        assert proxy.resets == 2
        time.sleep(1.1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            upstream, _ = server.accept()
            with upstream:
                client.sendall(b"again")
                assert recv_exactly(upstream, 5) == b"again"
        assert proxy.connections == 2
        port = proxy.port
    # Closed: its thread is gone and its port refuses connections. (Counting the process's threads or
    # file descriptors instead would see other tests' clients come and go.)
    assert not [t for t in threading.enumerate() if t.name == f"tcp-proxy-{port}"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_every_client_connection_to_a_proxied_broker_goes_through_the_proxy(
    proxied_kafka_broker: ProxiedKafka,
) -> None:
    kafka = proxied_kafka_broker
    kafka.create_topic("through", 2)
    brokers = AdminClient({"bootstrap.servers": kafka.bootstrap_servers}).list_topics(timeout=10).brokers
    assert [f"{b.host}:{b.port}" for b in brokers.values()] == [kafka.bootstrap_servers]
    brokers = kafka.broker.admin().list_topics(timeout=10).brokers
    assert [f"{b.host}:{b.port}" for b in brokers.values()] == [kafka.direct_bootstrap_servers]

    values = [f"message-{i}".encode() for i in range(100)]
    produce(kafka.bootstrap_servers, "through", values)
    transactional = Producer({"bootstrap.servers": kafka.bootstrap_servers, "transactional.id": "through"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    transactional.produce("through", b"in a transaction")
    transactional.commit_transaction(30)
    messages = consume(kafka.bootstrap_servers, "through", 101, group="g", config={"isolation.level": "read_committed"})
    assert sorted(m.value() or b"" for m in messages) == sorted([*values, b"in a transaction"])
    assert kafka.proxy.bytes_to_upstream > sum(map(len, values)) < kafka.proxy.bytes_to_client


def test_a_stall_holds_produce_requests_until_it_ends(proxied_kafka_broker: ProxiedKafka) -> None:
    kafka = proxied_kafka_broker
    kafka.create_topic("stall")
    acked: list[bytes] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is None:
            acked.append(msg.value() or b"")
        else:
            errors.append(err)

    impatient = Producer({"bootstrap.servers": kafka.bootstrap_servers, "message.timeout.ms": 1500})
    patient = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for producer in (impatient, patient):  # connected, and the partition leader known
        producer.produce("stall", b"warm-up", on_delivery=on_delivery)
        assert producer.flush(30) == 0
    kafka.proxy.stall(6)
    moved = (kafka.proxy.bytes_to_upstream, kafka.proxy.bytes_to_client)
    impatient.produce("stall", b"timed out", on_delivery=on_delivery)
    patient.produce("stall", b"held", on_delivery=on_delivery)
    assert impatient.flush(4) == 0, "its delivery report came, within the stall"
    assert [e.code() for e in errors] == [KafkaError._MSG_TIMED_OUT]
    assert patient.flush(0.5) == 1, "not acknowledged during the stall"
    assert (kafka.proxy.bytes_to_upstream, kafka.proxy.bytes_to_client) == moved, "no byte crossed the stall"

    assert patient.flush(30) == 0, "acknowledged once the stall ends"
    impatient.produce("stall", b"after", on_delivery=on_delivery)
    assert impatient.flush(30) == 0
    assert acked == [b"warm-up", b"warm-up", b"held", b"after"]
    assert len(errors) == 1
    written = [m.value() for m in read_all(kafka.direct_bootstrap_servers, "stall")]
    # The timed-out request was already on the wire, held by the stall: the broker may still write it.
    assert [v for v in written if v != b"timed out"] == acked
    print(f"a produce that timed out in the stall was written anyway: {b'timed out' in written}")


def test_a_cut_resets_the_connections_and_clients_reconnect_when_it_ends(proxied_kafka_broker: ProxiedKafka) -> None:
    kafka = proxied_kafka_broker
    kafka.create_topic("cut")
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True})
    producer.produce("cut", b"before", on_delivery=collect_errors(errors))
    assert producer.flush(30) == 0
    connections = kafka.proxy.connections

    kafka.proxy.cut(3)
    assert kafka.proxy.open_connections == 0 and kafka.proxy.resets >= 1
    resets = kafka.proxy.resets
    producer.produce("cut", b"during", on_delivery=collect_errors(errors))
    assert producer.flush(1.5) == 1, "nowhere to deliver during the cut"
    assert kafka.proxy.resets > resets, "its reconnects were reset too"

    assert producer.flush(30) == 0
    assert kafka.proxy.connections > connections, "it reconnected through the proxy"
    assert errors == []
    values = [m.value() for m in consume(kafka.direct_bootstrap_servers, "cut", 2, group="g")]
    assert values == [b"before", b"during"]
