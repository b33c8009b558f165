"""Confluent Schema Registry framing, for inputs and outputs that use it (byte 0 = 0x00, 4-byte
schema id, Avro body). Production registers the output schema up front; auto-registration is a
setting for development."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from worker.encoding import RegistrySerializer
from worker.messages import ConfluentDecoder


def registry_client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


def output_serializer(client: Any, schema: dict[str, Any], *, auto_register: bool) -> RegistrySerializer:
    serializer = AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": auto_register})

    def serialize(record: dict[str, Any], topic: str) -> bytes:
        value: bytes = serializer(record, SerializationContext(topic, MessageField.VALUE))
        return value

    return serialize


def input_decoder(client: Any, topic: str) -> ConfluentDecoder:
    deserializer = AvroDeserializer(client)

    def decode(value: bytes) -> dict[str, Any]:
        fields: dict[str, Any] = deserializer(value, SerializationContext(topic, MessageField.VALUE))
        return fields

    return decode
