"""Weight files on disk: their SHA-256, and a write that other processes never see half done.

Pods that share a cache volume may fetch the same checkpoint at once. Each writes its own temporary
file in the target's folder, syncs it, checks it, and renames it over the target (os.replace is
atomic within a filesystem), so a reader finds either no file or a whole, checked one; the loser of
the race replaces the file with identical bytes. A failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from worker.errors import WeightsUnavailable

_CHUNK = 1 << 20
PARTIAL_PREFIX = ".partial-"  # temporary files in the cache start with it


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(actual: str, expected: str | None, *, what: str) -> None:
    """WeightsUnavailable unless `actual` is `expected` (nothing to check when none is expected)."""
    if expected is not None and actual != expected:
        raise WeightsUnavailable(f"{what}: SHA-256 is {actual}, model.weights_sha256 expects {expected}")


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A temporary file beside `target` to write into; once the block ends without an error it is synced
    and renamed to `target`, otherwise removed. Check its contents inside the block, before the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=PARTIAL_PREFIX)
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(partial, 0o644)  # mkstemp's 0600 would hide the file from pods running as another user
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """The rename itself is durable once the folder is synced (a crash right after keeps the file)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
