"""What the batch commands read: files, folders, manifests and S3 prefixes, as one stream of inputs.

Each command-line argument is one source:

    s3://bucket/prefix   every object under the prefix, in key order (source.py: whole "/" segments);
                         its id is its s3:// URI
    FOLDER               every image file under it (by extension, recursively, in sorted order);
                         its id is its path
    FILE.jsonl           a manifest (manifest.py): ids, uris (s3:// or local) and metadata per line
    FILE                 that file, whatever its extension; its id is its path

Every input also carries its BatchPosition (formats/positions.py): the argument it came from and its
index there (from 0; a manifest's line number less one). Output rows keep them as input_topic and
input_offset, as a stream record keeps its topic and offset. Sources are read lazily, as the run loop takes inputs, so a
listing of millions of objects is never held in memory. An input that names nothing to fetch (a
manifest line that is no request, an id seen before) is an InputError: it gets an error row, named
``<source>#<position>`` when its own id cannot name it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker.batch.manifest import read_manifest
from worker.errors import BadMessage, ConfigError, FatalError, Outage, RecordError, SourceError
from worker.formats.messages import S3Uri, parse_s3_prefix
from worker.formats.positions import BatchPosition
from worker.s3.reader import S3Reader
from worker.text import safe_text

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"})
MANIFEST_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_PATH_ID_LIMIT = 4096  # PATH_MAX: a path id is never cut, only made writable (safe_text)

SourceKind = Literal["s3-prefix", "folder", "manifest", "file"]


@dataclass(frozen=True, slots=True)
class BatchInput:
    """One image to embed: its id, where its bytes are, and where it came from."""

    id: str
    location: S3Uri | Path
    position: BatchPosition
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """s3://bucket/key, or file:///absolute/path."""
        if isinstance(self.location, S3Uri):
            return str(self.location)
        return self.location.absolute().as_uri()


@dataclass(frozen=True, slots=True)
class InputError:
    """An input that names nothing to fetch; it gets an error row, never a vector."""

    id: str
    source_uri: str | None
    position: BatchPosition
    error: RecordError


@dataclass(frozen=True, slots=True)
class InputSource:
    argument: str
    kind: SourceKind

    @classmethod
    def parse(cls, argument: str) -> InputSource:
        """Raises ConfigError (exit code 2) for a path that does not exist or a malformed s3:// prefix."""
        if argument.startswith("s3://"):
            if parse_s3_prefix(argument) is None:
                raise ConfigError("SOURCE", f"{safe_text(argument)!r} is not s3://bucket or s3://bucket/prefix")
            return cls(argument, "s3-prefix")
        path = Path(argument)
        if path.is_dir():
            return cls(argument, "folder")
        if not path.is_file():
            raise ConfigError("SOURCE", f"{safe_text(argument)!r}: no such file or folder")
        return cls(argument, "manifest" if path.suffix.lower() in MANIFEST_SUFFIXES else "file")


def read_inputs(sources: Iterable[InputSource], *, s3: S3Reader) -> Iterator[BatchInput | InputError]:
    """Every source's inputs in order, lazily; an id already seen becomes an InputError (one row per input)."""
    seen: set[str] = set()
    for source in sources:
        for item in _read(source, s3):
            if isinstance(item, BatchInput):
                if item.id in seen:
                    error = BadMessage(f"id {safe_text(item.id, limit=200)!r} repeats an earlier input's")
                    item = _unnamed(item.position, error, source_uri=item.uri)
                else:
                    seen.add(item.id)
            yield item


def _read(source: InputSource, s3: S3Reader) -> Iterator[BatchInput | InputError]:
    origin = source.argument
    if source.kind == "s3-prefix":
        yield from _listing(origin, s3)
    elif source.kind == "folder":
        for index, path in enumerate(_image_files(Path(origin))):
            yield BatchInput(id=safe_text(path, limit=_PATH_ID_LIMIT), location=path,
                             position=BatchPosition(origin, index))
    elif source.kind == "manifest":
        for line in read_manifest(Path(origin)):
            position, entry = BatchPosition(origin, line.index), line.entry
            if isinstance(entry, BadMessage):
                yield _unnamed(position, entry, source_uri=None)
            else:
                yield BatchInput(id=entry.id, location=entry.location, position=position, metadata=entry.metadata)
    else:
        path = Path(origin)  # "./a.jpg" is "a.jpg", as a folder lists it
        yield BatchInput(id=safe_text(path, limit=_PATH_ID_LIMIT), location=path, position=BatchPosition(origin, 0))


def _listing(origin: str, s3: S3Reader) -> Iterator[BatchInput]:
    prefix = parse_s3_prefix(origin)
    assert prefix is not None, "InputSource.parse checked it"
    try:
        for index, uri in enumerate(s3.list_objects(prefix)):
            yield BatchInput(id=str(uri), location=uri, position=BatchPosition(origin, index))
    except (SourceError, Outage) as exc:
        raise FatalError(f"listing {safe_text(origin)} failed: {type(exc).__name__}: {exc}") from exc


def _image_files(folder: Path) -> Iterator[Path]:
    for root, folders, files in os.walk(folder):
        folders.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root, name)


def _unnamed(position: BatchPosition, error: RecordError, *, source_uri: str | None) -> InputError:
    return InputError(id=f"{position.input}#{position.index}", source_uri=source_uri, position=position, error=error)
