"""An ``s3://bucket/key`` checkpoint, downloaded with the worker's own S3 client into the cache.

The client is the one the worker reads images with (worker.s3.reader.make_s3_client): the same
endpoint, region and credential chain, so MinIO, Ceph, R2 and IRSA work as they do for images.

Where the file lands, under ``<cache_dir>/weights/`` (the key's extension is kept, since OpenCLIP
reads ``.safetensors`` and ``.npz`` by it):

- with ``model.weights_sha256``: ``sha256-<digest><ext>``. A start that finds it, with that digest,
  uses it without asking S3 at all; a corrupt copy is fetched again.
- without: ``s3-<hash of bucket/key>-<ETag><ext>``. Each start asks S3 for the object's ETag and
  size (one HEAD) and reuses the copy of that version; a changed object is a new file.

The body is read with GET If-Match on the ETag that HEAD gave, so a file is never assembled from two
versions, and written through files.atomic_file, so readers never see it half written.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError, ResponseStreamingError
from botocore.exceptions import ConnectionError as BotoConnectionError

from worker.config import S3Settings
from worker.s3.reader import make_s3_client
from worker.weights.files import atomic_file, check_sha256, sha256_of
from worker.weights.retry import Budget, retried

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}


class _Truncated(Exception):
    """The body ended before the size HEAD announced."""


def fetch_s3(
    bucket: str, key: str, *, s3: S3Settings, cache_dir: Path, sha256: str | None, budget: Budget,
) -> Path:
    """The local path of the checkpoint at s3://bucket/key, downloaded unless a checked copy is cached."""
    uri = f"s3://{bucket}/{key}"
    what = f"could not fetch model weights {uri} from {s3.endpoint_url or 'AWS S3'}"
    folder = cache_dir / "weights"
    ext = _extension(key)
    if sha256 is not None:
        target = folder / f"sha256-{sha256}{ext}"
        if target.is_file():
            if sha256_of(target) == sha256:
                logger.info("model weights %s: using the cached copy %s", uri, target)
                return target
            logger.warning("model weights %s: the cached copy %s fails its checksum; fetching it again", uri, target)
    client = make_s3_client(s3.model_copy(update={"timeout_seconds": budget.request_seconds}))
    try:
        head = retried(lambda: client.head_object(Bucket=bucket, Key=key), what=what, budget=budget,
                       transient=_transient)
        etag, size = str(head["ETag"]).strip('"'), int(head["ContentLength"])
        if sha256 is None:
            target = folder / f"s3-{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{_safe(etag)}{ext}"
            if target.is_file() and target.stat().st_size == size:
                logger.info("model weights %s: using the cached copy %s of ETag %s", uri, target, etag)
                return target
        logger.info("model weights %s: downloading %.1f MB into %s", uri, size / 1e6, target)
        retried(lambda: _download(client, bucket, key, etag=etag, size=size, target=target, sha256=sha256, what=what),
                what=what, budget=budget, transient=_transient)
    finally:
        client.close()
    return target


def _download(
    client: Any, bucket: str, key: str, *, etag: str, size: int, target: Path, sha256: str | None, what: str,
) -> None:
    digest = hashlib.sha256()
    written = 0
    with atomic_file(target) as file:
        body = client.get_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')["Body"]
        for chunk in body.iter_chunks(_CHUNK):
            digest.update(chunk)
            file.write(chunk)
            written += len(chunk)
        if written != size:
            raise _Truncated(f"got {written} of {size} bytes")
        check_sha256(digest.hexdigest(), sha256, what=what)


def _transient(exc: Exception) -> bool:
    """Network failures, 5xx and throttling are tried again; a missing object, a refusal or no credentials
    will not change by retrying."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code") in _TRANSIENT_CODES or int(status or 0) >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError | ResponseStreamingError | IncompleteReadError
                      | _Truncated)


def _extension(key: str) -> str:
    """The key's file extension if it is a plain one (".pt", ".safetensors"), else none."""
    suffix = Path(key).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,16}", suffix) else ""


def _safe(etag: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", etag)[:80]
