"""The harness itself: the broker really serves, survives restarts, leaves no process behind; S3 over HTTP.

Every other integration test stands on these servers, so their failure modes get checked here first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from harness.kafka_broker import KafkaBroker
from harness.s3_server import S3Server
from harness.workers import settings_env
from worker.config import load_settings


def collect_errors(errors: list[KafkaError]) -> Callable[[KafkaError | None, Message], None]:
    """A delivery callback that records failed deliveries in ``errors``."""

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    return on_delivery


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Produce ``values`` (keyed, to spread over partitions) and require every delivery to succeed."""
    errors: list[KafkaError] = []
    producer = Producer({"bootstrap.servers": bootstrap})
    for i, value in enumerate(values):
        producer.produce(topic, value, key=str(i).encode(), on_delivery=collect_errors(errors))
    assert producer.flush(30) == 0
    assert errors == []


def consume(bootstrap: str, topic: str, count: int, *, group: str, timeout: float = 30.0,
            config: Mapping[str, str] | None = None) -> list[Message]:
    """Read ``count`` messages from the start of ``topic`` (committing them), then check nothing else comes."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, **(config or {})})
    try:
        consumer.subscribe([topic])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                messages.append(msg)
        extra = consumer.poll(0.5)
        assert extra is None or extra.error() is not None, f"unexpected message {extra.value()!r}"
        if messages:
            consumer.commit(asynchronous=False)
        return messages
    finally:
        consumer.close()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")  # zombie: dead, unreaped


def java_processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def test_broker_serves_produce_and_consume(kafka_broker: KafkaBroker, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory(partitions=3)
    values = [f"message-{i}".encode() for i in range(200)]
    produce(kafka_broker.bootstrap_servers, topic, values)
    messages = consume(kafka_broker.bootstrap_servers, topic, len(values), group="roundtrip")
    assert sorted(m.value() or b"" for m in messages) == sorted(values)
    assert {m.partition() for m in messages} == {0, 1, 2}


def test_transactions_work(kafka_broker: KafkaBroker, topic_factory: Callable[..., str]) -> None:
    topic = topic_factory()
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers, "transactional.id": topic})
    producer.init_transactions(30)
    for value, commit in ((b"aborted", False), (b"committed", True)):
        producer.begin_transaction()
        producer.produce(topic, value)
        (producer.commit_transaction if commit else producer.abort_transaction)(30)
    messages = consume(kafka_broker.bootstrap_servers, topic, 1, group="eos",
                       config={"isolation.level": "read_committed"})
    assert [m.value() for m in messages] == [b"committed"]


def test_restart_keeps_address_data_and_committed_offsets(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    broker.create_topic("restart", 2)
    address, old_pid = broker.bootstrap_servers, broker.pid
    produce(address, "restart", [b"before-1", b"before-2"])
    assert len(consume(address, "restart", 2, group="g")) == 2

    broker.restart()

    assert broker.bootstrap_servers == address
    assert broker.pid != old_pid and old_pid is not None and process_gone(old_pid)
    produce(address, "restart", [b"after"])
    assert [m.value() for m in consume(address, "restart", 1, group="g")] == [b"after"]
    assert len(consume(address, "restart", 3, group="new-group")) == 3


def test_producer_reconnects_after_kill_and_start(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    broker.create_topic("crash")
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True})
    errors: list[KafkaError] = []
    producer.produce("crash", b"before", on_delivery=collect_errors(errors))
    assert producer.flush(30) == 0

    broker.kill()
    producer.produce("crash", b"during", on_delivery=collect_errors(errors))
    assert producer.flush(1) == 1  # nowhere to deliver while the broker is down
    broker.start()

    assert producer.flush(30) == 0
    assert errors == []
    values = [m.value() for m in consume(broker.bootstrap_servers, "crash", 2, group="g")]
    assert values == [b"before", b"during"]


def test_closed_broker_leaves_no_process_and_no_files() -> None:
    with KafkaBroker() as broker:
        pid, log_dir = broker.pid, broker.log_dir
        assert pid is not None and not process_gone(pid)
        assert (log_dir / "broker.log").stat().st_size > 0  # log4j is bound and writes the broker log
    assert process_gone(pid)
    assert java_processes_mentioning(str(log_dir)) == []
    assert not log_dir.exists()


def test_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = ("import os, sys\nfrom harness.kafka_broker import KafkaBroker\n"
              "b = KafkaBroker(); b.start(); print(b.pid, b.log_dir, flush=True); os._exit(0)\n")
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             check=True, cwd=Path(__file__).resolve().parent.parent)
    pid, log_dir = started.stdout.split()
    try:
        deadline = time.monotonic() + 10
        while java_processes_mentioning(log_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert java_processes_mentioning(log_dir) == [], f"orphaned broker {pid} survived its parent"
    finally:
        subprocess.run(["rm", "-rf", log_dir], check=True)


def test_s3_put_get_over_http(s3_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    s3_client.put_object(Bucket=s3_bucket, Key="images/cat.jpg", Body=b"\xff\xd8 not really a jpeg")
    body = s3_client.get_object(Bucket=s3_bucket, Key="images/cat.jpg")["Body"]
    with body:
        assert body.read() == b"\xff\xd8 not really a jpeg"
    url = s3_client.generate_presigned_url("get_object", Params={"Bucket": s3_bucket, "Key": "images/cat.jpg"})
    with urllib.request.urlopen(url, timeout=10) as response:  # a real HTTP server, not an in-process mock
        assert response.read() == b"\xff\xd8 not really a jpeg"


_seen_buckets: set[str] = set()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_its_own_empty_bucket(s3_client: Any, s3_bucket: str, run: int) -> None:
    assert s3_bucket not in _seen_buckets
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["KeyCount"] == 0
    _seen_buckets.add(s3_bucket)
    s3_client.put_object(Bucket=s3_bucket, Key=f"left-behind-by-run-{run}", Body=b"x")


def test_s3_env_points_a_subprocess_at_the_server(s3_server: S3Server, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="k", Body=b"from the test")
    script = "import boto3, sys; print(boto3.client('s3').get_object(Bucket=sys.argv[1], Key='k')['Body'].read())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3_server.env()
    done = subprocess.run([sys.executable, "-c", script, s3_bucket], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "b'from the test'"


def test_reset_forgets_everything() -> None:
    with S3Server() as server:
        client = server.client()
        try:
            client.create_bucket(Bucket="doomed")
            server.reset()
            assert client.list_buckets()["Buckets"] == []
        finally:
            client.close()


def test_settings_env_loads_back_the_same_settings_and_leaves_defaults_out(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(model={"decode": "gpu", "inference_batch_size": 8},
                             kafka={"bootstrap_servers": "b:9092", "consumer_config": {"fetch.min.bytes": "2"}},
                             s3={"allowed_sources": ["photos"]})
    env = settings_env(settings)
    assert env["CLIP_WORKER_MODEL__DECODE"] == "gpu" and env["CLIP_WORKER_S3__ALLOWED_SOURCES"] == '["photos"]'
    assert "CLIP_WORKER_MODEL__DEVICE" not in env and "CLIP_WORKER_PIPELINE__DELIVERY" not in env, "defaults"
    for name in [name for name in os.environ if name.startswith("CLIP_WORKER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings() == settings
