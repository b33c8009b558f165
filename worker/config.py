"""The worker's settings: one frozen tree, read from the environment once at startup.

Every setting has an environment variable: ``CLIP_WORKER_`` + section + ``__`` + name, upper-cased,
e.g. ``CLIP_WORKER_MODEL__MODEL_NAME=ViT-L-14`` or ``CLIP_WORKER_KAFKA__BOOTSTRAP_SERVERS=k:9092``.
List settings take JSON (``CLIP_WORKER_S3__ALLOWED_SOURCES='["photos", "raw/2026/"]'``).
The model section keeps the parameter names and defaults of the batch operator this worker grew
from (ImageClipEmbeddingRefiner). An invalid value stops the worker at startup with a ConfigError
that names the variable.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from worker import config_rules as rules
from worker.errors import ConfigError

ENV_PREFIX = "CLIP_WORKER_"
ENV_NESTED_DELIMITER = "__"


Topic = Annotated[str, AfterValidator(rules.kafka_topic)]
HttpUrl = Annotated[str, AfterValidator(rules.http_url)]
AllowlistEntry = Annotated[str, AfterValidator(rules.allowlist_entry)]


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# The device path gives fast mode's uint8 crops to the device thread of this process, upright as the
# file stores them: it cannot serve exact mode, decoder processes, or EXIF orientation.
_DEVICE_DECODE_NEEDS: dict[str, object] = {
    "preprocess_mode": "fast", "preprocess_in": "threads", "exif_orientation": False,
}


# A bucket name as S3 allows it (3-63 lower-case letters, digits, dots, dashes), then the key of an object
# (no control characters; not a prefix ending in /).
_WEIGHTS_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f/])")


def parse_weights_uri(value: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://bucket/key`` model.pretrained, or None when it is not one."""
    match = _WEIGHTS_URI.fullmatch(value)
    return None if match is None else (match["bucket"], match["key"])


def _device_decode_clashes(values: Mapping[str, object]) -> list[str]:
    """The settings among `values` that keep the device from decoding JPEGs, as name=value."""
    return [f"{name}={values[name]}" for name, needed in _DEVICE_DECODE_NEEDS.items()
            if values.get(name, needed) != needed]


class ModelSettings(_Section):
    """The embedding engine. Names and defaults are those of the original operator."""

    model_name: str = Field("ViT-B-32", description="OpenCLIP model name, or an hf-hub: name.")
    pretrained: str = Field(
        "openai",
        description='OpenCLIP pretrained tag, a local checkpoint path, an s3://bucket/key checkpoint (read with '
        'the s3 settings\' endpoint, region and credentials, cached under cache_dir), or "none" (random weights).',
    )
    weights_sha256: str | None = Field(
        None,
        description="SHA-256 (64 hex digits) the checkpoint file must have; checked before loading. With an s3:// "
        "pretrained it also lets a start reuse the cached copy without asking S3.",
    )
    device: str = Field("auto", description='"auto" (CUDA, then MPS, then CPU), "cuda", "cuda:N", "mps" or "cpu".')
    normalize: bool = Field(True, description="L2-normalise each embedding to unit length.")
    feature_field_name: str | None = Field(
        None, description="Name of the embedding field in the output record; derived from model_name when unset."
    )
    inference_batch_size: int = Field(32, ge=1, le=4096, description="Images per device batch.")
    use_fp16: bool = Field(True, description="Half precision weights and inputs; applies on CUDA devices only.")
    half_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="Which half precision use_fp16 selects on CUDA."
    )
    preprocess_workers: int = Field(
        4, ge=1, le=256, description="Threads (or, with preprocess_in=processes, processes) that decode and preprocess."
    )
    preprocess_in: Literal["threads", "processes"] = Field(
        "threads",
        description="threads: fetch and preprocess on threads of the worker process (one GIL). processes: "
        "preprocess_workers decoder processes fetch and preprocess, s3.fetch_workers threads shared among them.",
    )
    preprocess_mode: Literal["fast", "exact"] = Field(
        "fast",
        description="exact: open_clip's own eval transform, bit for bit. "
        "fast: reduced-DCT JPEG decode, uint8 crop on the CPU, normalisation on the device.",
    )
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Images with more pixels are rejected before the full decode."
    )
    exif_orientation: bool = Field(
        False,
        description="Turn each image upright by its EXIF orientation first (as PIL's exif_transpose). "
        "open_clip does not, so exact mode is open_clip's only while this is off.",
    )
    decode: Literal["cpu", "gpu", "auto"] = Field(
        "cpu",
        description="Where JPEGs are decoded. cpu: the preprocess threads or processes. gpu: baseline JPEGs in "
        "batches on the model's device (nvJPEG on CUDA), resized and cropped there; other images, and any the "
        "device decoder refuses, on the CPU. Needs preprocess_mode=fast, preprocess_in=threads and "
        "exif_orientation off. auto: gpu where the device is CUDA and those hold, else cpu.",
    )
    decode_journal_dir: Annotated[Path, AfterValidator(rules.folder_to_be)] = Field(
        Path("/tmp/clip-worker-device-journal"),
        description="While JPEGs are decoded on the device: where the worker notes which records the device "
        "is decoding, so that records that were there when a worker crashed are decoded on the CPU when they "
        "come again, not crash it again. Must outlive a restart of the worker (the chart's /tmp does).",
    )
    model_config_dir: Annotated[Path, AfterValidator(rules.existing_folder)] | None = Field(
        None, description="A folder (or file) of extra OpenCLIP model configs (JSON) to register before loading."
    )
    cache_dir: Annotated[Path, AfterValidator(rules.folder_to_be)] | None = Field(
        None,
        description="Where pretrained weights are downloaded and looked for: OpenCLIP tags (Hugging Face hub cache "
        "layout; unset: the hub's default) and s3:// checkpoints (under weights/; unset: ~/.cache/clip-worker).",
    )

    @field_validator("pretrained")
    @classmethod
    def _where_the_weights_are(cls, value: str) -> str:
        if value.strip().lower().startswith("s3:") and parse_weights_uri(value.strip()) is None:
            raise ValueError("an s3 checkpoint must look like s3://bucket/key (a bucket name, then a key)")
        return rules.checkpoint_file(value)

    @field_validator("weights_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
            raise ValueError("must be a SHA-256 digest: 64 hexadecimal digits")
        return value.strip().lower()

    @field_validator("feature_field_name")
    @classmethod
    def _legal_avro_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be a legal Avro field name: [A-Za-z_][A-Za-z0-9_]*")
        return value

    @field_validator("decode")
    @classmethod
    def _device_decode_possible(cls, value: str, info: ValidationInfo) -> str:
        wrong = _device_decode_clashes(info.data)
        if value == "gpu" and wrong:
            raise ValueError(f"gpu decodes fast mode's crops on the device thread: not with {', '.join(wrong)}")
        return value

    @property
    def device_decode_serves(self) -> bool:
        """Whether the other settings let the device decode JPEGs (what decode=auto asks besides CUDA)."""
        return not _device_decode_clashes({name: getattr(self, name) for name in _DEVICE_DECODE_NEEDS})

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError('must be "auto", "cpu", "mps", "cuda" or "cuda:N"')
        return value

    @property
    def output_field(self) -> str:
        """The embedding field's name: set, or ``image_clip_emb_`` + the model name made Avro-legal."""
        if self.feature_field_name:
            return self.feature_field_name
        return "image_clip_emb_" + re.sub(r"[^a-z0-9_]", "_", self.model_name.lower())


class KafkaSettings(_Section):
    bootstrap_servers: Annotated[str, AfterValidator(rules.bootstrap_servers)] = Field(
        "localhost:9092", description="Kafka bootstrap servers: host:port, separated by commas."
    )
    group_id: str = Field("clip-embedding-worker", description="Consumer group: more pods, more throughput.")
    input_topic: Topic = Field("images", description="Topic of image-reference messages.")
    output_topic: Topic = Field("image-embeddings", description="Topic the embedding records go to.")
    dead_letter_topic: Topic = Field("images-dlq", description="Topic for records that can never succeed.")
    group_instance_id: str | None = Field(
        None, description="Static membership id (KIP-345); the StatefulSet pod name is a good one."
    )
    group_protocol: Literal["classic", "consumer"] = Field(
        "classic", description='"consumer" selects the KIP-848 protocol (Kafka 4.x brokers).'
    )
    security_protocol: Annotated[Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], BeforeValidator(_upper)] = (
        Field("PLAINTEXT", description="librdkafka security.protocol.")
    )
    sasl_mechanism: str | None = Field(
        None, validate_default=True,
        description="librdkafka sasl.mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.",
    )
    sasl_username: str | None = Field(None, description="SASL user.")
    sasl_password: SecretStr | None = Field(None, validate_default=True, description="SASL password; never logged.")
    client_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka properties for consumer and producer (JSON object)."
    )
    consumer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka properties for the consumer only (JSON object)."
    )
    producer_config: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka properties for the producer only (JSON object)."
    )
    transaction_timeout_ms: int = Field(
        60_000,
        ge=1000,
        description="exactly-once: must exceed the slowest batch; bounds how long a crash blocks readers.",
    )
    transaction_call_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="exactly-once: how long one transactional call (offsets, commit, abort) waits on the broker "
        "before it is resumed as the same call; one that has not returned after twice this long counts as wedged, "
        "and the Kafka clients are replaced.",
    )
    client_replacements_max: int = Field(
        3,
        ge=0,
        le=100,
        description="Kafka clients replaced in the running process (a wedged call, a fatal client error) within "
        "client_replacements_window_seconds; the next failure makes the worker exit to be restarted. 0: exit at once.",
    )
    client_replacements_window_seconds: float = Field(
        600.0, gt=0, description="The window client_replacements_max counts replacements in."
    )

    auth_failure_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="How long the brokers may refuse authentication (SASL) or the TLS handshake, with no broker "
        "answering, before the worker stops with exit code 1 and a line naming it: retrying does not fix either.",
    )

    @field_validator("output_topic", "dead_letter_topic")
    @classmethod
    def _not_the_input(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("input_topic"):
            raise ValueError(f"{value!r} is the input topic too: the worker would read its own records again")
        if info.field_name == "dead_letter_topic" and value == info.data.get("output_topic"):
            raise ValueError(f"{value!r} is the output topic too: dead letters would read as embeddings")
        return value

    @field_validator("sasl_mechanism")
    @classmethod
    def _servable_mechanism(cls, value: str | None, info: ValidationInfo) -> str | None:
        return rules.sasl_mechanism(value, info.data.get("security_protocol", "PLAINTEXT"))

    @field_validator("sasl_password")
    @classmethod
    def _credentials_for_the_mechanism(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        mechanism = info.data.get("sasl_mechanism")
        if rules.needs_credentials(mechanism) and (value is None or not info.data.get("sasl_username")):
            raise ValueError(f"{mechanism} needs sasl_username and sasl_password (from a secret)")
        return value


class S3Settings(_Section):
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


class PipelineSettings(_Section):
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


class LogSettings(_Section):
    """What the worker logs and how: one line per event on stderr (see worker/logs.py)."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)] = Field(
        "INFO", description="Least severe level logged: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per event; json: one JSON object per line, for collectors."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, frozen=True, extra="forbid"
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    log: LogSettings = Field(default_factory=LogSettings)


def env_var(*path: str) -> str:
    """The environment variable of a setting, e.g. env_var("model", "device")."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(path).upper()


def every_variable() -> list[str]:
    """The environment variable of every setting."""
    return [env_var(section_name, name) for section_name, section in Settings.model_fields.items()
            for name in section.annotation.model_fields]  # type: ignore[union-attr]


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (overrides win); raise ConfigError naming the first bad
    one, or a CLIP_WORKER_ variable that is no setting (a typo must not be silently ignored)."""
    unknown = rules.unknown_variables(os.environ, prefix=ENV_PREFIX, known=every_variable())
    if unknown:
        variable, closest = unknown[0]
        hint = f"did you mean {closest}?" if closest else "see docs/configuration.md for the settings"
        raise ConfigError(variable, f"no such setting: {hint}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        path = [str(part) for part in first["loc"]]
        where = f" (at {'.'.join(path[2:])})" if len(path) > 2 else ""  # an item of a list or dict setting
        raise ConfigError(env_var(*path[:2]), first["msg"].removeprefix("Value error, ") + where) from None
    except SettingsError:  # a list or dict setting whose value is not JSON: pydantic-settings names only its section
        raise ConfigError(_unparsable_json_variable(), "not valid JSON (list and dict settings take JSON)") from None


def require_stream_settings(settings: Settings) -> None:
    """What the stream needs beyond valid values, checked before the model loads; raises ConfigError.
    (Batch mode may run without them: local files need no allowlist.)"""
    if not settings.s3.allowed_sources:
        raise ConfigError(env_var("s3", "allowed_sources"),
                          'empty: name the buckets (or bucket/prefix) the worker may read, e.g. ["photos"]')
    if settings.pipeline.output_format == "confluent" and not settings.pipeline.schema_registry_url:
        raise ConfigError(env_var("pipeline", "schema_registry_url"), "output_format confluent needs a registry")


def _unparsable_json_variable() -> str:
    """The first CLIP_WORKER_* variable of a list or dict setting whose value does not parse as JSON."""
    for section_name, section in Settings.model_fields.items():
        for name, field in section.annotation.model_fields.items():  # type: ignore[union-attr]
            variable = env_var(section_name, name)
            if get_origin(field.annotation) in (tuple, dict, list) and variable in os.environ:
                try:
                    json.loads(os.environ[variable])
                except ValueError:
                    return variable
    return ENV_PREFIX + "*"
