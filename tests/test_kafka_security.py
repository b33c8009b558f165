"""The worker and its tools against a secured broker: SASL_SSL (SCRAM-SHA-512) and SSL listeners whose
certificate is signed by a CA made for this module (harness/kafka_security.py), trusted through
``kafka.client_config`` {"ssl.ca.location": ...}, as a pod mounts it.

Every record is embedded once through either listener in both delivery modes; `enqueue`, `replay` and
`check` work through SASL_SSL; a wrong password or an untrusted certificate stops the worker with exit
code 1 and one line that says so, within kafka.auth_failure_seconds and a margin; and the password is
never in a log line, /metrics, a dead-letter record or `check`'s output.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from harness.children import free_port
from harness.kafka_io import produce, produce_requests, read_all, wait_until_committed, written_count
from harness.models import tiny_model_settings
from harness.pytest_plugin import SecuredKafka
from harness.s3_server import S3Server
from harness.workers import WorkerProcess, settings_env
from tests.conftest import Credentials
from tests.pipeline.conftest import FAST_TINY, ids_of, requests_for
from worker.checks import format_table, run_checks
from worker.config import Settings
from worker.errors import SourceNotFound
from worker.formats.positions import KafkaPosition
from worker.formats.records import PolledRecord
from worker.images.work import Work
from worker.stream.deadletter import dead_letter_record

pytestmark = pytest.mark.slow(minutes=2)

AUTH_FAILURE_SECONDS = 5
EXIT_MARGIN_SECONDS = 40  # start-up, model load and client shutdown on a busy machine, beyond AUTH_FAILURE_SECONDS
N_RECORDS = 24

MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(
    secured_kafka_broker: SecuredKafka, s3_server: S3Server, photo_bucket: tuple[str, list[str]],
    tiny_checkpoint: Path, aws_credentials: Credentials, tmp_path: Path,
) -> MakeSettings:
    """make_settings(protocol, delivery=..., password=..., ca_file=...) -> Settings that reach the secured
    broker through that listener, with fresh topics (made on its PLAINTEXT listener) and the test's bucket."""
    secured, bucket = secured_kafka_broker, photo_bucket[0]

    def make(protocol: str, *, delivery: str = "at-least-once", password: str | None = None,
             ca_file: str | None = None, pipeline: dict[str, Any] | None = None) -> Settings:
        stem = f"secured-{uuid.uuid4().hex[:12]}"
        topics = {"input_topic": f"{stem}-in", "output_topic": f"{stem}-out", "dead_letter_topic": f"{stem}-dlq"}
        for name in topics.values():
            secured.create_topic(name, 2)
        kafka: dict[str, Any] = topics | {
            "bootstrap_servers": secured.sasl_ssl_bootstrap if protocol == "SASL_SSL" else secured.ssl_bootstrap,
            "group_id": f"group-{stem}",
            "security_protocol": protocol,
            "client_config": {"ssl.ca.location": ca_file or secured.ca_file},
            "consumer_config": {"auto.commit.interval.ms": "200"},  # at-least-once: committed soon after
        }
        if protocol == "SASL_SSL":
            kafka |= {"sasl_mechanism": secured.mechanism, "sasl_username": secured.username,
                      "sasl_password": password or secured.password}
        return Settings(
            model=tiny_model_settings(tiny_checkpoint, decode_journal_dir=tmp_path / "journal", **FAST_TINY),
            kafka=kafka,
            s3={"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "allowed_sources": (bucket,)},
            pipeline={"delivery": delivery, "metrics_port": free_port(), "max_batch_wait_ms": 20} | (pipeline or {}),
        )

    return make


def env_of(settings: Settings, s3_server: S3Server, **extra: str) -> dict[str, str]:
    return settings_env(settings) | s3_server.env() | extra


def secret_of(settings: Settings) -> str:
    password = settings.kafka.sasl_password
    return "" if password is None else password.get_secret_value()


def assert_not_in(secret: str, text: str, where: str) -> None:
    assert secret, "a test of where the password is not needs one"
    assert secret not in text, f"the SASL password is in {where}"


def header_text(message: Message) -> str:
    return " ".join(f"{name}={value!r}" for name, value in message.headers() or [])


def run_until_exit(env: dict[str, str], log_path: Path, *, within: float) -> tuple[int, float, str]:
    """Start a worker process and wait for it to exit by itself: (exit code, seconds, its log)."""
    worker = WorkerProcess(env, log_path=log_path).start()
    started = time.monotonic()
    try:
        assert worker.process is not None
        try:
            code = worker.process.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker was still running after {within:.0f} s\n{worker.log_tail()}")
        return code, time.monotonic() - started, log_path.read_text(errors="replace")
    finally:
        worker.close()


def lines_naming(word: str, log: str, *, case_sensitive: bool) -> list[str]:
    return [line for line in log.splitlines()
            if (word in line if case_sensitive else word.lower() in line.lower())]


# -- the worker through each listener ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
def test_the_worker_embeds_every_record_once_through_a_secured_listener_in_both_delivery_modes(
    protocol: str, secured_kafka_broker: SecuredKafka, s3_server: S3Server,
    photo_bucket: tuple[str, list[str]], make_settings: MakeSettings, tmp_path: Path,
) -> None:
    """One worker process per delivery mode, side by side (each with its own topics and group)."""
    bucket, keys = photo_bucket
    plaintext = secured_kafka_broker.broker.bootstrap_servers
    requests = requests_for(bucket, keys, N_RECORDS)
    runs: dict[str, tuple[Settings, WorkerProcess]] = {}
    try:
        for delivery in ("at-least-once", "exactly-once"):
            settings = make_settings(protocol, delivery=delivery)
            produce_requests(plaintext, settings.kafka.input_topic, requests)
            produce(plaintext, settings.kafka.input_topic, [(b"bad", b"{not json")])  # a dead letter to read
            env = env_of(settings, s3_server)
            runs[delivery] = settings, WorkerProcess(env, log_path=tmp_path / f"{delivery}.log").start()
        for delivery, (settings, worker) in runs.items():
            kafka = settings.kafka
            wait_until_committed(plaintext, kafka.group_id, kafka.input_topic, timeout=90)
            with urllib.request.urlopen(f"http://127.0.0.1:{settings.pipeline.metrics_port}/metrics", timeout=10) as r:
                metrics = r.read().decode()
            assert worker.terminate(timeout=30) == 0, worker.log_tail()

            seen = ids_of(read_all(plaintext, kafka.output_topic))
            assert set(seen) == {r.id for r in requests}, f"{delivery}: every record"
            assert max(seen.values()) == 1, f"{delivery}: once"
            dead = read_all(plaintext, kafka.dead_letter_topic)
            assert [m.key() for m in dead] == [b"bad"], delivery
            if protocol == "SASL_SSL":
                secret = secret_of(settings)
                assert_not_in(secret, worker.log_path.read_text(errors="replace"), f"the {delivery} worker's log")
                assert_not_in(secret, metrics, "/metrics")
                assert_not_in(secret, header_text(dead[0]) + repr(dead[0].value()), "the dead letter")
    finally:
        for _, worker in runs.values():
            worker.close()


# -- the tools through SASL_SSL ---------------------------------------------------------------------


def run_tool(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_enqueue_replay_and_check_work_through_sasl_ssl(
    secured_kafka_broker: SecuredKafka, s3_server: S3Server, photo_bucket: tuple[str, list[str]],
    make_settings: MakeSettings,
) -> None:
    bucket, keys = photo_bucket
    settings = make_settings("SASL_SSL")
    plaintext, kafka, secret = secured_kafka_broker.broker.bootstrap_servers, settings.kafka, secret_of(settings)
    env = env_of(settings, s3_server)

    enqueued = run_tool(env, "enqueue", f"s3://{bucket}/")
    assert enqueued.returncode == 0, enqueued.stderr
    assert written_count(plaintext, kafka.input_topic) == len(keys)

    original = Work(position=KafkaPosition(kafka.input_topic, 0, 0),
                    polled=PolledRecord(generation=1, key=b"lost", value=b'{"id": "lost"}', headers=[],
                                        timestamp_ms=int(time.time() * 1000)))
    letter = dead_letter_record(original, SourceNotFound("missing"), stage="fetch", topic=kafka.dead_letter_topic,
                                max_bytes=1 << 20, worker_id="test")
    producer = Producer({"bootstrap.servers": plaintext, "logger": logging.getLogger("harness.librdkafka")})
    try:
        producer.produce(letter.topic, letter.value, letter.key, headers=letter.headers,
                         timestamp=letter.timestamp_ms or 0)
        assert producer.flush(30) == 0
    finally:
        producer.close()
    replayed = run_tool(env, "replay", "--stage", "fetch")
    assert replayed.returncode == 0, replayed.stderr
    inputs = [m.key() for m in read_all(plaintext, kafka.input_topic)]
    assert len(inputs) == len(keys) + 1 and b"lost" in inputs, "replayed into the input"

    checked = run_tool(env, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"kafka {kafka.bootstrap_servers}" in checked.stdout
    for name, done in (("enqueue", enqueued), ("replay", replayed), ("check", checked)):
        assert_not_in(secret, done.stdout + done.stderr, f"the output of {name}")


# -- refused credentials and certificates -----------------------------------------------------------


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_wrong_password_stops_the_worker_with_exit_1_and_one_line_naming_authentication(
    delivery: str, s3_server: S3Server, make_settings: MakeSettings, tmp_path: Path,
) -> None:
    settings = make_settings("SASL_SSL", delivery=delivery, password=f"wrong-{uuid.uuid4().hex}")
    env = env_of(settings, s3_server, CLIP_WORKER_KAFKA__AUTH_FAILURE_SECONDS=str(AUTH_FAILURE_SECONDS))
    code, seconds, log = run_until_exit(env, tmp_path / "worker.log",
                                        within=AUTH_FAILURE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 1, f"exit code {code} after {seconds:.1f} s (1: a fatal error, not a crash)\n{log}"
    assert len(lines_naming("authentication", log, case_sensitive=False)) == 1, log
    assert "Traceback" not in log, log
    assert_not_in(secret_of(settings), log, "the worker's log")


def test_check_reports_a_wrong_password_as_a_failed_row_naming_authentication(make_settings: MakeSettings) -> None:
    settings = make_settings("SASL_SSL", password=f"wrong-{uuid.uuid4().hex}")
    results = run_checks(settings, timeout=5.0)
    table = format_table(results)
    broker = results[0]
    assert broker.name == f"kafka {settings.kafka.bootstrap_servers}" and not broker.ok, table
    assert "authentication" in broker.detail.lower(), table
    assert_not_in(secret_of(settings), table, "check's table")


def test_a_certificate_from_another_ca_stops_the_worker_with_exit_1_and_one_line_naming_tls(
    secured_kafka_broker: SecuredKafka, s3_server: S3Server, make_settings: MakeSettings, tmp_path: Path,
) -> None:
    settings = make_settings("SSL", ca_file=secured_kafka_broker.other_ca_file)
    env = env_of(settings, s3_server, CLIP_WORKER_KAFKA__AUTH_FAILURE_SECONDS=str(AUTH_FAILURE_SECONDS))
    code, seconds, log = run_until_exit(env, tmp_path / "worker.log",
                                        within=AUTH_FAILURE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 1, f"exit code {code} after {seconds:.1f} s (1: a fatal error, not a crash)\n{log}"
    assert len(lines_naming("TLS", log, case_sensitive=True)) == 1, log
    assert "Traceback" not in log, log


def test_check_reports_a_certificate_from_another_ca_as_a_failed_row_naming_tls(
    secured_kafka_broker: SecuredKafka, make_settings: MakeSettings,
) -> None:
    settings = make_settings("SASL_SSL", ca_file=secured_kafka_broker.other_ca_file)
    results = run_checks(settings, timeout=5.0)
    table = format_table(results)
    assert not results[0].ok and "TLS" in results[0].detail, table
    assert_not_in(secret_of(settings), table, "check's table")
