"""`clip-worker check`: can this worker, with these settings, reach everything it needs?

A deploy that cannot reach its broker, names a topic that does not exist or a bucket it cannot
read, would otherwise only show it in its logs once records flow (or as a crash loop). The checks
ask each dependency one cheap question, with a short timeout, and say what answered:

- the Kafka broker (cluster metadata), then the input, output and dead-letter topics in that
  metadata, and the consumer group (described; one that does not exist yet is fine);
- each allowlisted S3 source: HeadBucket for a bucket, ListObjectsV2 of one key for bucket/prefix;
- the schema registry, when one is set (its list of subjects);
- the model: its weights fetched as the worker fetches them (worker/weights; retries bounded by the
  same timeout, so an unreachable hub or S3 endpoint is one failed row within seconds), then loaded
  on the configured device.

Each check is independent: one failing does not stop the others (the Kafka checks that need
metadata say so when the broker did not answer, instead of each waiting out its own timeout).
Every error is reported, never raised, as a failed check with a short message safe to print.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError, NoCredentialsError
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient

from worker.config import KafkaSettings, PipelineSettings, S3Settings, Settings, env_var
from worker.engine import Embedder
from worker.errors import ConfigError, KafkaAuthFailed, KafkaUnreachable, WeightsUnavailable
from worker.kafka.boundary import create, kafka_call
from worker.kafka.config import admin_config, property_settings
from worker.kafka.health import KafkaHealth
from worker.s3.allowlist import Allowlist
from worker.s3.reader import make_s3_client
from worker.text import safe_text
from worker.weights import Budget, fetch_weights, with_weights

CHECK_TIMEOUT_SECONDS = 5.0
_DETAIL_LIMIT = 300


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One row of the table: what was checked, whether it passed, and what answered (or why not)."""

    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> list[CheckResult]:
    """Every check except the model's, in the order they are printed."""
    return [
        *kafka_checks(settings.kafka, timeout=timeout),
        *s3_checks(settings.s3, timeout=timeout),
        *registry_checks(settings.pipeline, timeout=timeout),
    ]


def kafka_checks(kafka: KafkaSettings, *, timeout: float) -> list[CheckResult]:
    topics = {
        f"topic {kafka.input_topic} (input)": kafka.input_topic,
        f"topic {kafka.output_topic} (output)": kafka.output_topic,
        f"topic {kafka.dead_letter_topic} (dead letters)": kafka.dead_letter_topic,
    }
    group = f"consumer group {kafka.group_id}"
    broker = f"kafka {kafka.bootstrap_servers}"
    skipped = [CheckResult(name, False, "not checked: no cluster metadata") for name in (*topics, group)]
    health = KafkaHealth.for_tool(kafka.bootstrap_servers, kafka.auth_failure_seconds)  # prints no line
    try:
        admin = create(AdminClient, health.attach(admin_config(kafka)), what="admin client",
                       settings=property_settings(kafka, role="admin"))
    except Exception as exc:  # a client property librdkafka refuses
        return [_failure(broker, exc), *skipped]
    with admin:
        try:
            metadata: Any = health.probe(admin, what="cluster metadata", timeout=timeout)
        except Exception as exc:  # reported; what needs the metadata is not asked for again
            return [_failure(broker, exc), *skipped]
        return [
            CheckResult(broker, True, f"{len(metadata.brokers)} broker(s), cluster {metadata.cluster_id}"),
            *(_check(name, partial(_topic, metadata, topic)) for name, topic in topics.items()),
            _check(group, partial(_group, admin, kafka.group_id, timeout)),
        ]


def _topic(metadata: Any, topic: str) -> str:
    found = metadata.topics.get(topic)
    if found is None:
        raise CheckFailed("does not exist (the worker does not create topics)")
    if found.error is not None:
        raise CheckFailed(found.error.str())
    return f"{len(found.partitions)} partition(s)"


def _group(admin: AdminClient, group_id: str, timeout: float) -> str:
    future = admin.describe_consumer_groups([group_id], request_timeout=timeout)[group_id]
    description: Any = kafka_call(lambda: future.result(timeout=timeout), what="describe consumer group")
    if description.state in (ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN):
        return "does not exist yet (the first worker creates it)"
    return f"{description.state.name.lower()}, {len(description.members)} member(s)"


def s3_checks(s3: S3Settings, *, timeout: float) -> list[CheckResult]:
    name = "s3 allowed sources"
    try:
        entries = Allowlist.parse(s3.allowed_sources).entries
    except ConfigError as exc:
        return [_failure(name, exc)]
    if not entries:
        return [CheckResult(name, False, f"empty: set {env_var('s3', 'allowed_sources')} to the buckets to read")]
    try:
        client = make_s3_client(s3.model_copy(update={"timeout_seconds": timeout}))
    except Exception as exc:  # an endpoint URL or region botocore refuses
        return [_failure(name, exc)]
    try:
        return [
            _check(f"s3 {bucket}/{prefix}" if prefix else f"s3 {bucket}", partial(_source, client, bucket, prefix))
            for bucket, prefix in entries
        ]
    finally:
        client.close()


def _source(client: Any, bucket: str, prefix: str) -> str:
    if not prefix:
        client.head_bucket(Bucket=bucket)
        return "bucket answers"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1)
    return "prefix answers" + ("" if listed.get("KeyCount") else " (no objects under it yet)")


def registry_checks(pipeline: PipelineSettings, *, timeout: float) -> list[CheckResult]:
    url = pipeline.schema_registry_url
    return [] if url is None else [_check("schema registry", partial(_subjects, url, timeout))]


def _subjects(url: str, timeout: float) -> str:
    with SchemaRegistryClient({"url": url, "timeout": timeout, "max.retries": 0}) as client:
        return f"{len(client.get_subjects())} subject(s)"


def check_model(settings: Settings, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> CheckResult:
    """The weights fetched within `timeout` of retries (a download that is under way is not cut), then loaded."""
    return _check(f"model {settings.model.model_name}", partial(_load, settings, timeout))


def _load(settings: Settings, timeout: float) -> str:
    weights = fetch_weights(settings, budget=Budget(seconds=timeout, request_seconds=timeout))
    embedder = Embedder.load(with_weights(settings, weights))
    return f"{settings.model.pretrained} on {embedder.device}, dim {embedder.dim}, field {embedder.field_name}"


class CheckFailed(Exception):
    """A check's own verdict, with a message fit to print."""


def _check(name: str, probe: Callable[[], str]) -> CheckResult:
    try:
        detail = probe()
    except Exception as exc:  # a check reports what went wrong, whatever raised it; the others still run
        return _failure(name, exc)
    return CheckResult(name, True, safe_text(detail, limit=_DETAIL_LIMIT))


def _failure(name: str, exc: Exception) -> CheckResult:
    return CheckResult(name, False, safe_text(_reason(exc), limit=_DETAIL_LIMIT))


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        return f"{error.get('Code') or status}: {error.get('Message') or 'no message'}"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials found in the standard chain"
    if isinstance(exc, CheckFailed | ConfigError | WeightsUnavailable | KafkaUnreachable | KafkaAuthFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def format_table(results: Sequence[CheckResult]) -> str:
    """The results as aligned columns: check, OK or FAILED, detail."""
    width = max([len("CHECK"), *(len(result.name) for result in results)])
    lines = [f"{'CHECK':<{width}}  RESULT  DETAIL"]
    lines += [f"{r.name:<{width}}  {'OK' if r.ok else 'FAILED':<6}  {r.detail}" for r in results]
    return "\n".join(lines)
