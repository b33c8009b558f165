"""How the worker reads librdkafka's signals about its connection to Kafka, without a broker: which
error or line means what (one broker, all of them, authentication, TLS), the outage's lines, gauge and
readiness, the rate limit on one broker's lines, the bound on a refused login, and the secrets that
never reach a line. tests/pipeline/test_kafka_outage.py runs the same on a real broker."""

from __future__ import annotations

import json
import logging

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from hypothesis import given
from hypothesis import strategies as st

from worker.config import KafkaSettings
from worker.errors import ConfigError, FatalError, KafkaAuthFailed, KafkaUnavailable, KafkaUnreachable
from worker.kafka.boundary import create
from worker.kafka.config import property_settings
from worker.kafka.health import KafkaHealth
from worker.kafka.signals import broker_of, classify_error, classify_text, redact, refused_property
from worker.metrics import Metrics

REFUSED = "localhost:9092/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"
SASL = ("sasl_ssl://localhost:9093/bootstrap: SASL authentication error: Authentication failed during "
        "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256 (after 5ms in state AUTH_REQ)")
HANDSHAKE = ("ssl://localhost:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify "
             "failed: broker certificate could not be verified (after 4ms in state SSL_HANDSHAKE)")


@pytest.mark.parametrize(
    ("code", "text", "kind"),
    [
        (KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down", "unreachable"),
        (KafkaError._TRANSPORT, REFUSED, "broker"),
        (KafkaError._TRANSPORT, "localhost:9092/2: Disconnected (after 5012ms in state UP)", "broker"),
        (KafkaError._RESOLVE, "kafka-0:9092/0: Failed to resolve 'kafka-0:9092': Name or service not known", "broker"),
        (KafkaError._AUTHENTICATION, SASL, "auth"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed", "auth"),
        (KafkaError._SSL, HANDSHAKE, "tls"),
        (KafkaError._TRANSPORT, HANDSHAKE, "tls"),
        (KafkaError._TRANSPORT, "localhost:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused "
         "by incorrect security.protocol configuration (connecting to a SSL listener?)", "tls"),
        (KafkaError._MAX_POLL_EXCEEDED, "Application maximum poll interval exceeded", "other"),
    ],
)
def test_each_librdkafka_error_is_read_as_one_kind(code: int, text: str, kind: str) -> None:
    assert classify_error(KafkaError(code, text)) == kind


def test_a_line_saying_some_brokers_are_down_is_one_broker_and_all_of_them_is_unreachable() -> None:
    assert classify_text("1/3 brokers are down") == "broker"
    assert classify_text("3/3 brokers are down") == "unreachable"
    assert broker_of(REFUSED) == "localhost:9092/1" and broker_of(SASL) == "sasl_ssl://localhost:9093/bootstrap"


@given(st.text())
def test_any_text_is_classified_redacted_and_searched_without_raising(text: str) -> None:
    assert classify_text(text) in ("unreachable", "broker", "auth", "tls", "other")
    assert isinstance(redact(text), str)
    broker_of(text)
    refused_property(text)


@given(st.text(alphabet=st.characters(blacklist_characters="\"', }\n\t\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0",
                                      blacklist_categories=("Zs", "Zl", "Zp", "Cs")), min_size=1),
       st.text(), st.text(), st.sampled_from(["=", ": ", '": "', "="]))
def test_a_sasl_password_never_survives_redaction_wherever_it_sits(
    secret: str, before: str, after: str, separator: str
) -> None:
    line = f"{before} sasl.password{separator}{secret} {after}"
    redacted = redact(line)
    assert "sasl.password" in redacted and f"sasl.password{separator}{secret}" not in redacted


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stats(*states: str) -> str:
    brokers = {f"b{i}:9092/{i}": {"state": s, "source": "learned"} for i, s in enumerate(states)}
    return json.dumps({"brokers": brokers | {"GroupCoordinator": {"state": "UP", "source": "logical"}}})


@pytest.fixture
def health() -> tuple[KafkaHealth, Metrics, Clock]:
    metrics, clock = Metrics(), Clock()
    return KafkaHealth(bootstrap="b0:9092", auth_failure_seconds=30, metrics=metrics, clock=clock), metrics, clock


def gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("clip_worker_outage", {"cause": "kafka"})


def test_kafka_unreachable_is_one_line_a_gauge_and_not_ready_until_a_broker_is_up_again(
    health: tuple[KafkaHealth, Metrics, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    kafka, metrics, clock = health
    assert gauge(metrics) == 0 and kafka.ready
    kafka.on_error(KafkaError(KafkaError._TRANSPORT, REFUSED))
    for _ in range(3):
        kafka.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        for _ in range(50):
            kafka.on_line(logging.ERROR, "FAIL", REFUSED)
    assert gauge(metrics) == 1 and not kafka.ready and kafka.down
    kafka.on_stats(stats("DOWN", "INIT"))
    assert not kafka.ready, "a broker that is not UP does not end it"
    clock.now += 7
    kafka.on_stats(stats("DOWN", "UP"))
    assert gauge(metrics) == 0 and kafka.ready
    lines = [r.getMessage() for r in caplog.records]
    assert len([line for line in lines if "Kafka unreachable" in line]) == 1
    assert [line for line in lines if "Kafka back" in line] == [
        "Kafka back after 7 s: a broker of b0:9092 answers again (150 repeated librdkafka line(s) held back)"
    ]
    assert not [r for r in caplog.records if r.name == "worker.librdkafka"], "held back while down"


def test_one_broker_down_is_a_warning_once_a_minute_per_broker_with_a_count(
    health: tuple[KafkaHealth, Metrics, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    kafka, metrics, clock = health
    other = REFUSED.replace("9092/1", "9092/2")
    for _ in range(10):
        kafka.on_line(logging.ERROR, "FAIL", REFUSED)
        kafka.on_line(logging.ERROR, "FAIL", other)
        clock.now += 5
    clock.now += 20
    kafka.on_line(logging.ERROR, "FAIL", REFUSED)
    lines = [r for r in caplog.records if r.name == "worker.librdkafka"]
    assert [r.levelno for r in lines] == [logging.WARNING] * 3
    assert lines[2].getMessage().endswith("(9 more such line(s) in the last 60 s)")
    assert gauge(metrics) == 0 and kafka.ready


def test_a_refused_login_is_reported_once_after_its_bound_and_names_authentication(
    health: tuple[KafkaHealth, Metrics, Clock],
) -> None:
    kafka, _, clock = health
    reported: list[FatalError] = []
    kafka.stop_with(reported.append)
    kafka.on_error(KafkaError(KafkaError._AUTHENTICATION, SASL + " sasl.password=hunter2"))
    clock.now += 29
    kafka.on_line(logging.ERROR, "FAIL", SASL)
    assert reported == []
    clock.now += 2
    kafka.on_stats(stats("DOWN"))
    kafka.on_stats(stats("DOWN"))
    assert len(reported) == 1 and isinstance(reported[0], KafkaAuthFailed)
    message = str(reported[0])
    assert message.startswith("Kafka authentication failed for 31 s") and "hunter2" not in message


def test_a_failed_tls_handshake_names_tls_and_the_certificate_and_a_broker_that_answers_clears_it(
    health: tuple[KafkaHealth, Metrics, Clock],
) -> None:
    kafka, _, clock = health
    reported: list[FatalError] = []
    kafka.stop_with(reported.append)
    kafka.on_error(KafkaError(KafkaError._SSL, HANDSHAKE))
    clock.now += 20
    kafka.on_stats(stats("UP"))  # the failure did not persist
    clock.now += 20
    kafka.on_stats(stats("DOWN"))
    assert reported == []
    kafka.on_error(KafkaError(KafkaError._TRANSPORT, HANDSHAKE))
    clock.now += 30
    kafka.check()
    assert "Kafka TLS handshake failed for 30 s" in str(reported[0]) and "certificate verify failed" in str(reported[0])


def test_a_tool_that_reached_no_broker_gets_one_error_saying_so_and_prints_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    kafka = KafkaHealth.for_tool("b0:9092", 30)
    kafka.on_line(logging.ERROR, "FAIL", REFUSED)
    kafka.on_error(KafkaError(KafkaError._TRANSPORT, REFUSED))
    kafka.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    explained = kafka.explain(KafkaUnavailable("metadata: timed out"), what="cluster metadata", timeout=10)
    assert isinstance(explained, KafkaUnreachable)
    assert str(explained).startswith("Kafka unreachable: no broker of b0:9092 answered the cluster metadata request "
                                     "within 10 s (last: localhost:9092/1: Connect to")
    assert caplog.records == []


def test_a_property_librdkafka_refuses_at_construction_is_a_config_error_naming_its_setting() -> None:
    kafka = KafkaSettings(consumer_config={"fetch.wait.max.ms": "soon"}, producer_config={"acks": "banana"})
    with pytest.raises(ConfigError) as consumer_error:
        create(Consumer, {"group.id": "g", "fetch.wait.max.ms": "soon"}, what="consumer",
               settings=property_settings(kafka, role="consumer"))
    assert consumer_error.value.setting == "CLIP_WORKER_KAFKA__CONSUMER_CONFIG"
    assert "fetch.wait.max.ms" in str(consumer_error.value)
    with pytest.raises(ConfigError) as producer_error:
        create(Producer, {"acks": "banana"}, what="producer", settings=property_settings(kafka, role="producer"))
    assert producer_error.value.setting == "CLIP_WORKER_KAFKA__PRODUCER_CONFIG"
    with pytest.raises(ConfigError, match=r"no\.such\.property"):
        create(Producer, {"no.such.property": "1"}, what="producer")
