"""`clip-worker check` against the real broker and S3 endpoint: what answers passes, what does not
is named, and an unreachable broker fails within its timeout."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import Consumer

from harness.kafka_broker import KafkaBroker
from harness.s3_server import S3Server
from tests.conftest import Credentials
from tests.test_logs import closed_port
from worker.checks import CheckResult, format_table, run_checks
from worker.config import Settings

MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(
    kafka_broker: KafkaBroker, s3_server: S3Server, s3_bucket: str, topic_factory: Callable[..., str],
    aws_credentials: Credentials,
) -> MakeSettings:
    """make_settings(kafka=..., s3=..., pipeline=...): three fresh topics, a fresh group, the test's bucket."""

    def make(**sections: dict[str, Any]) -> Settings:
        return Settings(
            kafka={"bootstrap_servers": kafka_broker.bootstrap_servers, "input_topic": topic_factory(3),
                   "output_topic": topic_factory(), "dead_letter_topic": topic_factory(),
                   "group_id": f"group-{topic_factory()}"} | sections.get("kafka", {}),
            s3={"endpoint_url": s3_server.endpoint_url, "allowed_sources": (s3_bucket, f"{s3_bucket}/photos/")}
            | sections.get("s3", {}),
            pipeline=sections.get("pipeline", {}),
        )

    return make


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def test_every_check_passes_when_the_broker_topics_and_buckets_are_there(make_settings: MakeSettings) -> None:
    settings = make_settings()
    results = by_name(run_checks(settings))
    kafka, s3 = settings.kafka, settings.s3
    assert [name for name, result in results.items() if not result.ok] == []
    assert results[f"topic {kafka.input_topic} (input)"].detail == "3 partition(s)"
    assert results[f"consumer group {kafka.group_id}"].detail.startswith("does not exist yet")
    bucket = s3.allowed_sources[0]
    assert results[f"s3 {bucket}"].detail == "bucket answers"
    assert results[f"s3 {bucket}/photos"].detail == "prefix answers (no objects under it yet)"
    assert f"kafka {kafka.bootstrap_servers}" in results and "schema registry" not in results


def test_a_missing_topic_fails_and_is_named(make_settings: MakeSettings) -> None:
    results = by_name(run_checks(make_settings(kafka={"dead_letter_topic": "no-such-dlq"})))
    assert results["topic no-such-dlq (dead letters)"] == CheckResult(
        "topic no-such-dlq (dead letters)", False, "does not exist (the worker does not create topics)")
    assert [name for name, result in results.items() if not result.ok] == ["topic no-such-dlq (dead letters)"]


def test_a_missing_bucket_fails_and_is_named(make_settings: MakeSettings, s3_bucket: str) -> None:
    results = by_name(run_checks(make_settings(s3={"allowed_sources": (s3_bucket, "no-such-bucket/raw")})))
    assert [name for name, result in results.items() if not result.ok] == ["s3 no-such-bucket/raw"]
    assert "NoSuchBucket" in results["s3 no-such-bucket/raw"].detail


def test_an_empty_allowlist_fails(make_settings: MakeSettings) -> None:
    results = by_name(run_checks(make_settings(s3={"allowed_sources": ()})))
    assert not results["s3 allowed sources"].ok
    assert "CLIP_WORKER_S3__ALLOWED_SOURCES" in results["s3 allowed sources"].detail


def test_an_unreachable_broker_fails_within_the_timeout_and_the_kafka_checks_say_why(
    make_settings: MakeSettings, capfd: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    results = run_checks(make_settings(kafka={"bootstrap_servers": address}), timeout=2.0)
    assert time.monotonic() - started < 6.0
    failed = [result for result in results if not result.ok]
    assert failed[0].name == f"kafka {address}" and "cluster metadata" in failed[0].detail
    assert len(failed) == 5 and all(r.detail == "not checked: no cluster metadata" for r in failed[1:])
    assert all(result.ok for result in results if result.name.startswith("s3 ")), "the others still ran"
    time.sleep(0.5)
    assert "Connection refused" not in capfd.readouterr().err, "the closed client printed nothing"


def test_a_client_property_librdkafka_refuses_fails_the_broker_check_instead_of_raising(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(kafka={"client_config": {"socket.keepalive.enable": "maybe"}})
    broker, *rest = run_checks(settings)[:5]
    assert broker.name == f"kafka {settings.kafka.bootstrap_servers}" and not broker.ok
    assert "socket.keepalive.enable" in broker.detail
    assert [r.detail for r in rest] == ["not checked: no cluster metadata"] * 4


def test_a_group_with_a_member_is_described(make_settings: MakeSettings, kafka_broker: KafkaBroker) -> None:
    settings = make_settings()
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers, "group.id": settings.kafka.group_id})
    try:
        consumer.subscribe([settings.kafka.input_topic])
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(0.2)
        result = by_name(run_checks(settings))[f"consumer group {settings.kafka.group_id}"]
    finally:
        consumer.close()
    assert result == CheckResult(f"consumer group {settings.kafka.group_id}", True, "stable, 1 member(s)")


@pytest.fixture
def registry_url() -> Iterator[str]:
    """A stand-in Schema Registry that knows two subjects."""

    class Subjects(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(["images-value", "image-embeddings-value"]).encode()
            self.send_response(200 if self.path.startswith("/subjects") else 404)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Subjects)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_schema_registry_is_asked_for_its_subjects_when_one_is_set(
    make_settings: MakeSettings, registry_url: str
) -> None:
    results = by_name(run_checks(make_settings(pipeline={"schema_registry_url": registry_url})))
    assert results["schema registry"] == CheckResult("schema registry", True, "2 subject(s)")


def test_an_unreachable_schema_registry_fails(make_settings: MakeSettings) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    results = by_name(run_checks(make_settings(pipeline={"schema_registry_url": url}), timeout=2.0))
    assert not results["schema registry"].ok and results["schema registry"].detail


def test_the_table_lines_up_names_results_and_details() -> None:
    table = format_table([CheckResult("kafka 127.0.0.1:9092", True, "1 broker(s)"),
                          CheckResult("s3 photos", False, "404: Not Found")])
    assert table.splitlines() == [
        "CHECK                 RESULT  DETAIL",
        "kafka 127.0.0.1:9092  OK      1 broker(s)",
        "s3 photos             FAILED  404: Not Found",
    ]
