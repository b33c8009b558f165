"""Where an input came from, which travels with it down the image path.

In the stream an input is a Kafka record, at a `KafkaPosition`; its offset is committed once the input
is finished. In batch mode it is an entry of one of the inputs the command was given, at a
`BatchPosition`. Both name the input in the output record, the logs and the device journal through
`coordinates()`: (topic, partition, offset) for Kafka; (the input as given, 0, the entry's index) in
batch mode, which is how a batch row fills input_topic, input_partition and input_offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Partition(NamedTuple):
    """A Kafka partition of a topic (confluent_kafka.TopicPartition is the client's, with an offset)."""

    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class KafkaPosition:
    """A record's place in Kafka; its offset is what the stream commits."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> Partition:
        return Partition(self.topic, self.partition)

    def coordinates(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class BatchPosition:
    """An entry's place in batch mode: the input it came from (a file, folder, manifest or s3:// prefix,
    as given) and its index there from 0 (a manifest's line number less one)."""

    input: str
    index: int

    def coordinates(self) -> tuple[str, int, int]:
        return (self.input, 0, self.index)


Position = KafkaPosition | BatchPosition
