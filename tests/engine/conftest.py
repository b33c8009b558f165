"""Engine fixtures: real architectures with random weights from fixed seeds, loaded from checkpoints by path.

``tiny_checkpoint`` (the tiny model, seed 7) comes from tests/conftest.py. ViT-B-32 is built once per
session (a 600 MB checkpoint in the session's temp folder, ~6 s to write and load on two cores) and its
vision tower is shared by the exact- and fast-mode embedders, which differ only in preprocessing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.models import tiny_model_settings, write_random_checkpoint
from harness.photos import photo_corpus
from worker.config import ModelSettings
from worker.engine import Embedder


@pytest.fixture(scope="session")
def corpus() -> list[tuple[str, bytes]]:
    """48 real photos: 8 scikit-image photos x 640/1024/1600 px x JPEG quality 85/95."""
    return photo_corpus()


@pytest.fixture(scope="session")
def tiny_fast(tiny_checkpoint: Path) -> Embedder:
    return Embedder.load(tiny_model_settings(tiny_checkpoint, preprocess_mode="fast"))


@pytest.fixture(scope="session")
def tiny_exact(tiny_fast: Embedder) -> Embedder:
    settings = tiny_fast.settings.model_copy(update={"preprocess_mode": "exact"})
    return Embedder(settings=settings, tower=tiny_fast.tower)


@pytest.fixture(scope="session")
def vitb32_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint("ViT-B-32", tmp_path_factory.mktemp("vitb32") / "vit-b-32.pt", seed=0)


@pytest.fixture(scope="session")
def vitb32_exact(vitb32_checkpoint: Path) -> Embedder:
    settings = ModelSettings(
        model_name="ViT-B-32", pretrained=str(vitb32_checkpoint), device="cpu", preprocess_mode="exact"
    )
    return Embedder.load(settings)


@pytest.fixture(scope="session")
def vitb32_fast(vitb32_exact: Embedder) -> Embedder:
    settings = vitb32_exact.settings.model_copy(update={"preprocess_mode": "fast"})
    return Embedder(settings=settings, tower=vitb32_exact.tower)
