"""Manifests: JSON lines of ``{"id", "uri", "metadata"}``, each line one input or that line's error.

A manifest line is the stream's input message (worker/formats/messages.py checks its fields the same way),
except that its uri may also be a local path; a relative path is read from the manifest's folder.
Whatever the bytes, a line gives an entry or a BadMessage saying why, never a crash: one bad line
costs one error row, not the run. Blank lines are skipped; a line over 1 MiB is refused unread.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from worker.errors import BadMessage
from worker.formats.messages import S3Uri, decode_reference_json, parse_s3_uri
from worker.text import safe_text

MAX_LINE_BYTES = 1 << 20
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")  # "http://...", "file:..." (a Windows drive would match too)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    id: str
    location: S3Uri | Path
    metadata: dict[str, str]


def parse_line(line: bytes, *, folder: Path) -> ManifestEntry:
    """One manifest line; BadMessage when it is not an object with an id and an s3:// or local uri."""
    reference = decode_reference_json(line)
    uri = reference.uri
    if uri.startswith("s3://"):
        return ManifestEntry(id=reference.id, location=parse_s3_uri(uri), metadata=reference.metadata)
    if not uri or "\x00" in uri or _SCHEME.match(uri):
        raise BadMessage(f"uri must be s3://bucket/key or a local path, got {safe_text(uri, limit=200)!r}")
    return ManifestEntry(id=reference.id, location=folder / uri, metadata=reference.metadata)


@dataclass(frozen=True, slots=True)
class ManifestLine:
    """A line that is not blank: its index from 0 (the line number less one), and its entry or its error."""

    index: int
    entry: ManifestEntry | BadMessage


def read_manifest(path: Path) -> Iterator[ManifestLine]:
    """Every line that is not blank, in order."""
    with path.open("rb") as lines:
        for index, line in enumerate(_lines(lines)):
            if line is None:
                yield ManifestLine(index, BadMessage(f"line over {MAX_LINE_BYTES} bytes"))
            elif line.strip():
                try:
                    yield ManifestLine(index, parse_line(line, folder=path.parent))
                except BadMessage as exc:
                    yield ManifestLine(index, exc)


def _lines(stream: BinaryIO) -> Iterator[bytes | None]:
    """The stream's lines, or None for a line over MAX_LINE_BYTES (skipped without holding it)."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        if len(line) <= MAX_LINE_BYTES:
            yield line
            continue
        while not line.endswith(b"\n") and (line := stream.readline(MAX_LINE_BYTES)):
            pass  # the rest of the long line, a piece at a time
        yield None
