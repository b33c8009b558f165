"""The s3, pipeline and log sections."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
)

from worker.config.rules import AllowlistEntry, HttpUrl, Section, upper_case


class S3Settings(Section):
    endpoint_url: HttpUrl | None = Field(None, description="S3 endpoint; unset means AWS. Set it for MinIO, Ceph, R2.")
    region: str | None = Field(None, description="S3 region; unset means the standard AWS chain decides.")
    allowed_sources: tuple[AllowlistEntry, ...] = Field(
        (), description='Buckets, or "bucket/prefix", the worker may read. Empty means none: set it.'
    )
    max_object_bytes: int = Field(32 * 1024 * 1024, ge=1, description="Objects larger than this are rejected.")
    fetch_workers: int = Field(16, ge=1, le=512, description="Threads fetching objects from S3.")
    max_attempts: int = Field(5, ge=1, le=50, description="Attempts per object for transient S3 errors, "
        "and one more when S3 comes back just after the last (that one decides).")
    backoff_initial_seconds: float = Field(0.1, gt=0, description="First retry backoff; doubles, with full jitter.")
    backoff_max_seconds: float = Field(5.0, gt=0, description="Cap on one retry backoff.")
    timeout_seconds: float = Field(10.0, gt=0, description="Connect and read timeout of one S3 request.")


class PipelineSettings(Section):
    max_batch_wait_ms: int = Field(
        50, ge=0, description="A partial batch goes to the device once its oldest image has waited this long."
    )
    max_in_flight: int = Field(
        1024, ge=1, description="Records between poll and delivery before partitions are paused."
    )
    max_in_flight_bytes: int = Field(
        1024**3,
        ge=1,
        description="Bytes of fetched objects and prepared tensors in flight (stale work included) before "
        "partitions are paused and fetches wait; a fetch reserves s3.max_object_bytes until its size is known.",
    )
    record_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Deadline of one record in fetch and in preprocess (it then fails with RecordTimeout), "
        "and of one batch on the device (the worker then exits: the device is stuck).",
    )
    outage_retry_initial_seconds: float = Field(
        1.0, gt=0, description="During an outage (S3, credentials, schema registry): first wait before a retry."
    )
    outage_retry_max_seconds: float = Field(
        30.0, gt=0, description="During an outage: the cap of the doubling wait between retries."
    )
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once", description="exactly-once: one Kafka transaction per batch, outputs with offsets."
    )
    on_error: Literal["dead-letter", "skip", "stop"] = Field(
        "dead-letter", description="What a permanently failing record does."
    )
    input_format: Literal["json", "avro", "auto"] = Field(
        "auto", description="Input value format; auto tells JSON, Confluent-framed Avro and plain Avro apart."
    )
    output_format: Literal["avro", "confluent"] = Field(
        "avro", description="avro: schemaless Avro, schema named in a header; confluent: Schema Registry framing."
    )
    forward_headers: tuple[str, ...] = Field(
        ("traceparent", "tracestate"),
        description="Input record headers copied to the output record, by exact name (W3C trace context by default).",
    )
    schema_registry_url: HttpUrl | None = Field(None, description="Schema Registry URL; needed for confluent framing.")
    schema_registry_auto_register: bool = Field(
        False, description="Register the output schema on first use; production registers it up front."
    )
    max_consecutive_failures: int = Field(
        1000, ge=1, description="Failed records in a row (no success between) after which the worker stops."
    )
    shutdown_grace_seconds: float = Field(
        25.0, gt=0, description="On SIGTERM, time to drain, flush and commit; keep under the pod's grace period."
    )
    metrics_port: int | None = Field(9400, description="Port of /metrics, /livez and /readyz; unset disables.")
    liveness_stall_seconds: float = Field(
        60.0,
        gt=0,
        description="/livez fails once the poll loop has not turned for this long, or records are in flight "
        "and no offset has been finished for this long (outside a declared outage).",
    )


class LogSettings(Section):
    """What the worker logs and how: one line per event on stderr (see worker/logs.py)."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(upper_case)] = Field(
        "INFO", description="Least severe level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line, for collectors."
    )
