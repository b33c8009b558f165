"""Reading image bytes from local files: the fetch step of a local input (batch mode), next to the S3
one (stages.py).

The local twin of worker/s3/reader.py: the same byte limit (s3.max_object_bytes, so that the in-flight
byte budget means the same), and the OS's errors translated once, here, into the fetch stage's
SourceErrors: a missing file is SourceNotFound, an unreadable one SourceAccessDenied.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker.engine.gpu_decode import ReadHeader
from worker.errors import SourceAccessDenied, SourceError, SourceNotFound, SourceTooLarge
from worker.images.stages import keep_fetched
from worker.images.work import Work
from worker.text import safe_text


def read_local(path: Path, *, max_bytes: int) -> bytes:
    """The file's bytes; a SourceError saying why not."""
    try:
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        raise SourceNotFound(f"{safe_text(path)}: no such file") from None
    except PermissionError:
        raise SourceAccessDenied(f"{safe_text(path)}: permission denied") from None
    except OSError as exc:  # a folder, a broken link, an I/O error, a name too long
        raise SourceError(f"{safe_text(path)}: {safe_text(exc.strerror or exc)}") from None
    if len(data) > max_bytes:
        raise SourceTooLarge(f"{safe_text(path)} is over the limit of {max_bytes} bytes")
    return data


def local_fetch_step(
    path_of: Callable[[Work], Path], *, max_bytes: int, read_header: ReadHeader | None = None
) -> Callable[[Work], None]:
    """The fetch stage's step for local inputs: `path_of(work)` says which file; `read_header` as the S3 step's."""

    def step(work: Work) -> None:
        keep_fetched(work, read_local(path_of(work), max_bytes=max_bytes), read_header)
        work.fetch_attempts = 1

    return step
