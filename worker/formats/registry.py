"""Confluent Schema Registry framing, for inputs and outputs that use it (byte 0 = 0x00, 4-byte
schema id, Avro body). Production registers the output schema up front; auto-registration is a
setting for development.

The registry client's errors are translated here, once: a registry that cannot be reached, or
answers 5xx / 429 / 408, is an outage (RegistryUnavailable: records wait, they are not dead-lettered);
any other answer (an unknown schema id, an incompatible schema) is the record's own problem.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

# The HTTP library the registry client itself uses (httpx2, or httpx): its transport errors are outages.
from confluent_kafka.schema_registry.common._httpx_compat import httpx as registry_http
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from worker.config import env_var
from worker.errors import ConfigError, RegistryUnavailable
from worker.formats.encoding import RegistrySerializer
from worker.formats.messages import ConfluentDecoder
from worker.text import safe_text

T = TypeVar("T")
_UNAVAILABLE_STATUS = frozenset({408, 429})


# One request, bounded: the message decode asks the registry on the main loop (once per new schema id),
# and the worker's outage handling already retries, with backoff, what the registry did not answer.
# The client's own retries (three, waiting 1, 2 and 4 s) would hold the loop seven seconds per record.
_CLIENT_CONF = {"max.retries": 0, "timeout": 5}


def registry_client(url: str) -> SchemaRegistryClient:
    client = SchemaRegistryClient({"url": url} | _CLIENT_CONF)
    # The client lives as long as the serializer and decoder that hold it, and nothing closes it: close its
    # HTTP session when it is collected, rather than leave its kept-alive sockets to be found unclosed.
    weakref.finalize(client, client._rest_client.session.close)
    return client


@contextmanager
def _outages() -> Iterator[None]:
    try:
        yield
    except SchemaRegistryError as exc:
        if exc.http_status_code >= 500 or exc.http_status_code in _UNAVAILABLE_STATUS:
            raise RegistryUnavailable(f"schema registry answered {exc.http_status_code}") from exc
        raise
    except (registry_http.TransportError, OSError) as exc:
        raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}: {safe_text(exc)}") from exc


def require_registered(client: Any, schema: dict[str, Any], *, subject: str) -> None:
    """With auto-registration off, the output schema must be registered under `subject` before the
    first record, or every record's encode would fail alike: refuse to start, saying what to do. A
    registry that does not answer now is left to the first record's encode, which waits it out."""
    try:
        with _outages():
            client.lookup_schema(subject, Schema(json.dumps(schema), "AVRO"))
    except RegistryUnavailable:
        return
    except SchemaRegistryError as exc:
        raise ConfigError(
            env_var("pipeline", "schema_registry_auto_register"),
            f"false, and the registry does not know the output schema under subject {subject!r} "
            f"({exc.http_status_code} {safe_text(exc.error_message)}): register it first (docs/operations.md)",
        ) from None


def output_serializer(client: Any, schema: dict[str, Any], *, auto_register: bool) -> RegistrySerializer:
    # The subject is "<topic>-value", named here: the client's default strategy first asks the registry's
    # associations API, which registries other than Confluent's may not serve (or answer at all).
    conf = {"auto.register.schemas": auto_register, "subject.name.strategy": topic_subject_name_strategy}
    serializer = AvroSerializer(client, json.dumps(schema), conf=conf)

    def serialize(record: dict[str, Any], topic: str) -> bytes:
        value: bytes = _checked(lambda: serializer(record, SerializationContext(topic, MessageField.VALUE)))
        return value

    return serialize


def input_decoder(client: Any, topic: str) -> ConfluentDecoder:
    deserializer = AvroDeserializer(client)

    def decode(value: bytes) -> dict[str, Any]:
        return _checked(lambda: deserializer(value, SerializationContext(topic, MessageField.VALUE)))

    return decode


def _checked(call: Callable[[], T]) -> T:
    with _outages():
        return call()
