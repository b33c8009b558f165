"""librdkafka configuration for the consumer and the producer, derived from the settings.

Defaults encode the delivery contract (see worker/stream/produce.py): offsets are stored by the
runtime only for finished records (enable.auto.offset.store=false) and committed in the background
(at-least-once) or inside transactions (exactly-once, auto commit off). Outside transactions the
producer's delivery timeout is infinite, so a broker outage delays outputs but never drops them.
Every client logs through Python logging (worker/logs.py), never straight to stderr.
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any

from worker.config import KafkaSettings, PipelineSettings, env_var
from worker.logs import LIBRDKAFKA_LOGGER


def _common(kafka: KafkaSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
        "client.id": f"clip-worker-{kafka.group_instance_id or socket.gethostname()}",
        "logger": logging.getLogger(LIBRDKAFKA_LOGGER),
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
    if kafka.sasl_username:
        conf["sasl.username"] = kafka.sasl_username
    if kafka.sasl_password is not None:
        conf["sasl.password"] = kafka.sasl_password.get_secret_value()
    return conf | kafka.client_config


def admin_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For an AdminClient (``clip-worker check``): the connection settings alone."""
    return _common(kafka)


def consumer_config(kafka: KafkaSettings, pipeline: PipelineSettings) -> dict[str, Any]:
    exactly_once = pipeline.delivery == "exactly-once"
    conf = _common(kafka) | {
        "group.id": kafka.group_id,
        "group.protocol": kafka.group_protocol,
        "enable.auto.commit": not exactly_once,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "statistics.interval.ms": 10_000,
    }
    if kafka.group_protocol == "classic":  # KIP-848 forbids both on the client
        conf["partition.assignment.strategy"] = "cooperative-sticky"
    if kafka.group_instance_id:
        conf["group.instance.id"] = kafka.group_instance_id
    return conf | kafka.consumer_config


def is_cooperative(conf: dict[str, Any]) -> bool:
    """Whether assignments change incrementally (cooperative-sticky, or the KIP-848 protocol)."""
    return conf.get("group.protocol") == "consumer" or conf.get("partition.assignment.strategy") == "cooperative-sticky"


def producer_config(kafka: KafkaSettings, pipeline: PipelineSettings) -> dict[str, Any]:
    conf = _common(kafka) | {"acks": "all", "enable.idempotence": True, "linger.ms": 5}
    if pipeline.delivery == "exactly-once":
        # A stable id (the static member id) lets a restarted pod fence and abort its predecessor's
        # open transaction at once; a random one leaves readers waiting for transaction.timeout.ms.
        conf["transactional.id"] = f"{kafka.group_id}-{kafka.group_instance_id or uuid.uuid4()}"
        conf["transaction.timeout.ms"] = kafka.transaction_timeout_ms
    else:
        conf["message.timeout.ms"] = 0  # infinite: never drop an output on a broker outage
    return conf | kafka.producer_config


def replay_consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For `clip-worker replay` (worker/stream/replay.py): it assigns the dead-letter topic's partitions itself
    and commits nothing, so the group id only names it; committed records only."""
    return _common(kafka) | {
        "group.id": f"{kafka.group_id}-replay",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }


def tool_producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """For the one-shot commands that write to a topic (`replay`, `enqueue`): idempotent, and with
    librdkafka's finite delivery timeout, so that a record the broker never takes is reported rather
    than waited for."""
    return _common(kafka) | {"acks": "all", "enable.idempotence": True, "linger.ms": 5} | kafka.producer_config


def property_settings(kafka: KafkaSettings, *, role: str) -> dict[str, dict[str, str]]:
    """The settings that hand librdkafka properties to a client of ``role`` (consumer, producer, admin),
    by env var, most specific first: for naming the one that holds a property librdkafka refuses."""
    specific = {"consumer": kafka.consumer_config, "producer": kafka.producer_config}.get(role)
    named = {env_var("kafka", f"{role}_config"): specific} if specific is not None else {}
    return named | {env_var("kafka", "client_config"): kafka.client_config}
