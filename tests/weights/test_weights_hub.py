"""OpenCLIP tags without the internet: a cached tag needs no network, HF_HUB_OFFLINE=1 with a tag not in
the cache fails at once saying what to do, and an unreachable hub is tried within a bounded budget, not
for the hub client's half minute of retries. No test reaches the real hub: its endpoint is a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import pytest

from tests.test_logs import closed_port
from worker.config import ModelSettings, Settings
from worker.errors import WeightsUnavailable
from worker.weights import Budget, fetch_weights

OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip's ViT-B-32 "openai" tag lives


def vit_b_32(cache_dir: Path) -> Settings:
    return Settings(model=ModelSettings(model_name="ViT-B-32", pretrained="openai", cache_dir=cache_dir))


def fill_hub_cache(cache_dir: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """A file as the hub client caches it: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0" * 40
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def dead_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub client pointed at a closed port, online (HF_HUB_OFFLINE unset)."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return endpoint


def test_a_cached_tag_is_found_without_asking_the_hub(dead_hub: str, tmp_path: Path) -> None:
    cached = fill_hub_cache(tmp_path, OPENAI_REPO, "open_clip_model.safetensors", b"weights")
    started = time.monotonic()
    weights = fetch_weights(vit_b_32(tmp_path), budget=Budget(seconds=5, request_seconds=5))
    assert weights.path == cached and weights.pretrained == "openai"
    assert time.monotonic() - started < 0.5


def test_an_unreachable_hub_is_tried_within_the_budget_and_named_in_one_line(dead_hub: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as failed:
        fetch_weights(vit_b_32(tmp_path), budget=Budget(seconds=2, request_seconds=1))
    assert time.monotonic() - started < 4.0
    message = str(failed.value)
    assert "\n" not in message and "'openai' of ViT-B-32" in message and dead_hub in message
    assert "unreachable: 2 attempt(s)" in message


def test_offline_a_tag_not_in_the_cache_fails_at_once_saying_so_and_what_to_do(
    dead_hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as failed:
        fetch_weights(vit_b_32(tmp_path))
    assert time.monotonic() - started < 0.5
    message = str(failed.value)
    assert "HF_HUB_OFFLINE is set" in message and str(tmp_path) in message and "clip-worker fetch-model" in message


def clip_worker(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith(("CLIP_WORKER_", "HF_"))}
    return subprocess.run([sys.executable, "-m", "worker", *argv], env=clean | env, capture_output=True, text=True,
                          timeout=120)


def test_run_offline_without_the_tag_exits_1_with_one_line_not_2_as_a_bad_setting(tmp_path: Path) -> None:
    done = clip_worker("run", env={"HF_HUB_OFFLINE": "1", "CLIP_WORKER_MODEL__CACHE_DIR": str(tmp_path),
                                   "CLIP_WORKER_MODEL__DEVICE": "cpu", "CLIP_WORKER_S3__ALLOWED_SOURCES": '["photos"]',
                                   "CLIP_WORKER_PIPELINE__METRICS_PORT": str(closed_port())})
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert " ERROR worker: stopping: model weights 'openai' of ViT-B-32" in line and "HF_HUB_OFFLINE" in line


def test_fetch_model_offline_with_the_tag_cached_prints_its_path(tmp_path: Path) -> None:
    cached = fill_hub_cache(tmp_path, OPENAI_REPO, "open_clip_model.safetensors", b"weights")
    done = clip_worker("fetch-model", env={"HF_HUB_OFFLINE": "1", "CLIP_WORKER_MODEL__CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cached)
