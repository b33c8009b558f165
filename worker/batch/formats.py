"""The file formats of batch output: how one part's rows are written, and how a part's ids are read back.

    jsonl    one JSON object per line (error rows are always written this way)
    avro     an Avro object container file with the stream's output schema (embedding_schema): the
             schema travels in the file, so any Avro reader reads it without this package
    parquet  the same fields as Parquet columns, the embedding a fixed-size list of float32
             (pyarrow: the optional extra ``pip install 'clip-embedding-worker[parquet]'``)

The Parquet schema is derived from the Avro one, so the three formats hold the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import fastavro

from worker.batch.records import Row
from worker.errors import ConfigError

FormatName = Literal["jsonl", "avro", "parquet"]
FORMATS: tuple[FormatName, ...] = ("jsonl", "avro", "parquet")


class PartFormat(Protocol):
    suffix: str

    def write(self, out: IO[bytes], rows: list[Row]) -> None: ...

    def ids(self, path: Path) -> Iterator[str]: ...


class JsonLines:
    suffix = "jsonl"

    def write(self, out: IO[bytes], rows: list[Row]) -> None:
        out.writelines(json.dumps(row).encode() + b"\n" for row in rows)

    def ids(self, path: Path) -> Iterator[str]:
        with path.open("rb") as lines:
            for line in lines:
                yield json.loads(line)["id"]


class AvroContainer:
    suffix = "avro"

    def __init__(self, schema: dict[str, Any]) -> None:
        self._schema = fastavro.parse_schema(schema)

    def write(self, out: IO[bytes], rows: list[Row]) -> None:
        fastavro.writer(out, self._schema, rows)

    def ids(self, path: Path) -> Iterator[str]:
        with path.open("rb") as file:
            for record in fastavro.reader(file):
                yield record["id"]  # type: ignore[call-overload,index]  # fastavro types records loosely


class ParquetFile:
    suffix = "parquet"

    def __init__(self, schema: dict[str, Any]) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            reason = "parquet needs pyarrow: pip install 'clip-embedding-worker[parquet]'"
            raise ConfigError("--format", reason) from None
        self._pa, self._pq = pa, pq
        self._fields = schema["fields"]

    def write(self, out: IO[bytes], rows: list[Row]) -> None:
        dim = rows[0]["dim"]  # the embedding's length, known once the model has embedded something
        schema = self._pa.schema([_arrow_field(self._pa, f["name"], f["type"], dim) for f in self._fields])
        self._pq.write_table(self._pa.Table.from_pylist(rows, schema=schema), out)

    def ids(self, path: Path) -> Iterator[str]:
        yield from self._pq.read_table(path, columns=["id"]).column("id").to_pylist()


def part_format(name: FormatName, *, schema: dict[str, Any]) -> PartFormat:
    """The embedding parts' format; `schema` is the output schema (embedding_schema)."""
    if name == "avro":
        return AvroContainer(schema)
    if name == "parquet":
        return ParquetFile(schema)
    return JsonLines()


_ARROW_PRIMITIVES = {"string": "string", "int": "int32", "long": "int64", "boolean": "bool_", "float": "float32",
                     "double": "float64", "bytes": "binary"}


def _arrow_field(pa: Any, name: str, avro_type: Any, dim: int) -> Any:
    """An Avro field as an Arrow field: a ["null", T] union is a nullable T, an array of floats the
    fixed-size embedding, a map a map of strings, timestamp-millis a UTC timestamp."""
    nullable = isinstance(avro_type, list)
    if nullable:
        (avro_type,) = [member for member in avro_type if member != "null"]
    return pa.field(name, _arrow_type(pa, avro_type, dim), nullable=nullable)


def _arrow_type(pa: Any, avro_type: Any, dim: int) -> Any:
    if isinstance(avro_type, str):
        return getattr(pa, _ARROW_PRIMITIVES[avro_type])()
    if avro_type.get("logicalType") == "timestamp-millis":
        return pa.timestamp("ms", tz="UTC")
    if avro_type["type"] == "array":  # of floats: the embedding, `dim` long
        items = _arrow_type(pa, avro_type["items"], dim)
        return pa.list_(items, dim) if avro_type["items"] == "float" else pa.list_(items)
    if avro_type["type"] == "map":
        return pa.map_(pa.string(), _arrow_type(pa, avro_type["values"], dim))
    return _arrow_type(pa, avro_type["type"], dim)
