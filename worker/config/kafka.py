"""The kafka section: the cluster, topics, security, and the clients' own properties."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from worker.config import rules
from worker.config.rules import Section, Topic, upper_case

# How long past the time it was given a transactional call may take before it counts as wedged.
# librdkafka returns a timed-out call on time (its timers run on its own threads), so this only
# absorbs scheduling delay; it is most of the latency a wedge adds, so it is kept short.
WEDGE_GRACE_SECONDS = 5.0

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


class KafkaSettings(Section):
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
    security_protocol: Annotated[SecurityProtocol, BeforeValidator(upper_case)] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
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
        f"before it is resumed as the same call; one that has not returned {WEDGE_GRACE_SECONDS:.0f} s after this "
        "counts as wedged, and the Kafka clients are replaced.",
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
