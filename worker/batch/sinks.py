"""Where batch rows go: stdout as JSON lines (no --output), or a folder of parts, each written whole.

    OUTPUT/part-00000.<jsonl|avro|parquet>   embedded inputs, part_size rows a part (the last one fewer)
    OUTPUT/errors-00000.jsonl                failed inputs' error rows, part_size a part

A part is written to a hidden temp file, fsynced and renamed, so it appears complete or not at all: a
crash (SIGKILL included) loses only the rows not yet in a part, and the next run over the same output
redoes their inputs. That run reads the ids of every part first and skips them, failed ids too (delete
errors-*.jsonl to retry those). ``overwrite`` deletes the parts first, and nothing else in the folder;
temp files a crash left behind are deleted. One run at a time per folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal, Protocol, TextIO

from worker.batch.formats import JsonLines, PartFormat
from worker.batch.records import Row
from worker.errors import ConfigError
from worker.text import safe_text

PartKind = Literal["part", "errors"]
_PART = re.compile(r"(?P<kind>part|errors)-(?P<number>\d+)\.(?P<suffix>\w+)")
_TEMP = re.compile(r"\.(part|errors)-\d+\.\w+\.tmp")


class RowSink(Protocol):
    def embedded(self, row: Row) -> None: ...

    def failed(self, row: Row) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """Every row as one JSON line, as it finishes (what `clip-worker embed FILE...` always printed)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def embedded(self, row: Row) -> None:
        self._out.write(json.dumps(row) + "\n")

    def failed(self, row: Row) -> None:
        self._out.write(json.dumps(row) + "\n")

    def close(self) -> None:
        self._out.flush()


class PartSink:
    def __init__(self, folder: Path, *, fmt: PartFormat, part_size: int, overwrite: bool) -> None:
        if folder.exists() and not folder.is_dir():
            raise ConfigError("--output", f"{safe_text(folder)} is a file: name a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._part_size = part_size
        self._formats: dict[PartKind, PartFormat] = {"part": fmt, "errors": JsonLines()}
        self._parts: dict[PartKind, list[Path]] = {"part": [], "errors": []}
        self._next: dict[PartKind, int] = {"part": 0, "errors": 0}
        self._rows: dict[PartKind, list[Row]] = {"part": [], "errors": []}
        for path in sorted(folder.iterdir()):
            if _TEMP.fullmatch(path.name):
                path.unlink()  # a part a crash left unfinished: its inputs are redone
            elif (match := _PART.fullmatch(path.name)) and overwrite:
                path.unlink()
            elif match:
                kind: PartKind = "part" if match["kind"] == "part" else "errors"
                if match["suffix"] != self._formats[kind].suffix:
                    raise ConfigError("--format", f"{safe_text(path)} is not {self._formats[kind].suffix}: "
                                                  "use its format, or --overwrite")
                self._parts[kind].append(path)
                self._next[kind] = max(self._next[kind], int(match["number"]) + 1)

    def written_ids(self) -> set[str]:
        """The ids of every row already in a part (embedded or failed): a rerun skips them."""
        return {row_id for kind, paths in self._parts.items() for path in paths
                for row_id in self._formats[kind].ids(path)}

    def embedded(self, row: Row) -> None:
        self._add("part", row)

    def failed(self, row: Row) -> None:
        self._add("errors", row)

    def close(self) -> None:
        """Write what is buffered as the last, shorter parts."""
        for kind, rows in self._rows.items():
            if rows:
                self._write(kind)

    def _add(self, kind: PartKind, row: Row) -> None:
        self._rows[kind].append(row)
        if len(self._rows[kind]) >= self._part_size:
            self._write(kind)

    def _write(self, kind: PartKind) -> None:
        fmt = self._formats[kind]
        name = f"{kind}-{self._next[kind]:05d}.{fmt.suffix}"
        temp = self._folder / f".{name}.tmp"
        with temp.open("wb") as out:
            fmt.write(out, self._rows[kind])
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self._folder / name)
        folder = os.open(self._folder, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a power cut
        finally:
            os.close(folder)
        self._parts[kind].append(self._folder / name)
        self._next[kind] += 1
        self._rows[kind] = []
