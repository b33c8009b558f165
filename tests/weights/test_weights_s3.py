"""s3:// checkpoints against the real S3 endpoint: fetched with the worker's S3 client, checked, cached,
loaded through OpenCLIP's own path; a wrong checksum or a dead endpoint is WeightsUnavailable."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.test_logs import closed_port
from tests.weights.conftest import MakeSettings, StoredCheckpoint, cached_files
from worker.engine import Embedder
from worker.errors import WeightsUnavailable
from worker.weights import Budget, fetch_weights, with_weights

QUICK = Budget(seconds=2.0, request_seconds=1.0)


def test_a_checkpoint_from_s3_with_its_checksum_loads_through_openclip_with_the_files_weights(
    weights_settings: MakeSettings, stored_checkpoint: StoredCheckpoint, tiny_checkpoint: Path,
) -> None:
    settings = weights_settings(stored_checkpoint.uri, weights_sha256=stored_checkpoint.sha256.upper())
    weights = fetch_weights(settings)
    assert weights.path is not None and weights.path.read_bytes() == stored_checkpoint.data
    assert weights.path.name == f"sha256-{stored_checkpoint.sha256}.pt"
    from_s3 = Embedder.load(with_weights(settings, weights))
    from_file = Embedder.load(settings.model.model_copy(update={"pretrained": str(tiny_checkpoint)}))
    for ours, theirs in zip(from_s3.tower.module.state_dict().values(),
                            from_file.tower.module.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_a_wrong_checksum_fails_with_weights_unavailable_and_leaves_no_file_in_the_cache(
    weights_settings: MakeSettings, stored_checkpoint: StoredCheckpoint, tmp_path: Path,
) -> None:
    settings = weights_settings(stored_checkpoint.uri, weights_sha256="0" * 64)
    with pytest.raises(WeightsUnavailable) as failed:
        fetch_weights(settings)
    assert stored_checkpoint.uri in str(failed.value) and stored_checkpoint.sha256 in str(failed.value)
    assert cached_files(tmp_path / "cache") == []


def test_a_second_fetch_with_a_checksum_uses_the_cache_without_asking_s3(
    weights_settings: MakeSettings, stored_checkpoint: StoredCheckpoint,
) -> None:
    first = fetch_weights(weights_settings(stored_checkpoint.uri, weights_sha256=stored_checkpoint.sha256))
    dead = weights_settings(stored_checkpoint.uri, weights_sha256=stored_checkpoint.sha256,
                            endpoint_url=f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    second = fetch_weights(dead, budget=QUICK)
    assert second == first and time.monotonic() - started < 1.0
    assert Embedder.load(with_weights(dead, second)).dim == 32


def test_a_corrupt_cached_copy_is_fetched_again(
    weights_settings: MakeSettings, stored_checkpoint: StoredCheckpoint,
) -> None:
    settings = weights_settings(stored_checkpoint.uri, weights_sha256=stored_checkpoint.sha256)
    path = fetch_weights(settings).path
    assert path is not None
    path.write_bytes(b"half a file")
    assert fetch_weights(settings).path == path and path.read_bytes() == stored_checkpoint.data


def test_without_a_checksum_the_copy_of_the_same_etag_is_reused_and_a_changed_object_fetched_anew(
    weights_settings: MakeSettings, stored_checkpoint: StoredCheckpoint, s3_client: Any, s3_bucket: str,
) -> None:
    settings = weights_settings(stored_checkpoint.uri)
    first = fetch_weights(settings).path
    assert first is not None
    mtime = first.stat().st_mtime_ns
    assert fetch_weights(settings).path == first and first.stat().st_mtime_ns == mtime
    s3_client.put_object(Bucket=s3_bucket, Key="models/tiny-vit.pt", Body=b"another version")
    changed = fetch_weights(settings).path
    assert changed is not None and changed != first and changed.read_bytes() == b"another version"


def test_concurrent_fetches_into_one_cache_never_expose_a_partial_file(
    weights_settings: MakeSettings, s3_client: Any, s3_bucket: str, tmp_path: Path,
) -> None:
    data = bytes(range(256)) * (24 * 1024 * 4)  # 24 MiB: many chunks, so a reader could catch one half written
    digest = hashlib.sha256(data).hexdigest()
    s3_client.put_object(Bucket=s3_bucket, Key="big.pt", Body=data)
    settings = weights_settings(f"s3://{s3_bucket}/big.pt", weights_sha256=digest)
    target = tmp_path / "cache" / "weights" / f"sha256-{digest}.pt"
    done = threading.Event()
    seen: list[int] = []  # sizes of the target each time a reader found it

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(len(target.read_bytes()))
            except FileNotFoundError:
                time.sleep(0.001)

    fetches = [threading.Thread(target=fetch_weights, args=(settings,)) for _ in range(4)]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in fetches:
        thread.start()
    for thread in fetches:
        thread.join()
    done.set()
    reader.join()
    assert seen and set(seen) == {len(data)}
    assert cached_files(tmp_path / "cache") == [target] and target.read_bytes() == data


def test_an_unreachable_endpoint_is_retried_within_the_budget_and_named_in_one_line(
    weights_settings: MakeSettings,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as failed:
        fetch_weights(weights_settings("s3://models/tiny.pt", endpoint_url=endpoint), budget=QUICK)
    assert time.monotonic() - started < QUICK.seconds + 2 * QUICK.request_seconds
    message = str(failed.value)
    assert "\n" not in message and "s3://models/tiny.pt" in message and endpoint in message
    assert "unreachable: 2 attempt(s)" in message


def test_a_missing_object_fails_at_once_without_retries(weights_settings: MakeSettings, s3_bucket: str) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable, match=f"s3://{s3_bucket}/no/such.pt.*404"):
        fetch_weights(weights_settings(f"s3://{s3_bucket}/no/such.pt"))
    assert time.monotonic() - started < 1.0


def test_a_local_checkpoint_is_checked_against_its_checksum(
    weights_settings: MakeSettings, tiny_checkpoint: Path,
) -> None:
    good = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert fetch_weights(weights_settings(str(tiny_checkpoint), weights_sha256=good)).path == tiny_checkpoint
    with pytest.raises(WeightsUnavailable, match=f"{tiny_checkpoint}: SHA-256 is {good}"):
        fetch_weights(weights_settings(str(tiny_checkpoint), weights_sha256="f" * 64))
