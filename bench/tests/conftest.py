"""The benchmarks' own tests: each script runs from its command line, and the pieces its figures rest
on (the decode floor, the /proc counters, the loop probe, the GPU script's checks) do what they claim.
They run in `make test` beside the product's tests, which never import bench/."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.models import TINY_MODEL_NAME, tiny_model_settings, write_random_checkpoint
from harness.photos import photo_corpus
from worker.engine import Embedder


@pytest.fixture(scope="session")
def corpus() -> list[tuple[str, bytes]]:
    return photo_corpus()


@pytest.fixture(scope="session")
def tiny_fast(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    checkpoint: Path = write_random_checkpoint(TINY_MODEL_NAME, tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=7)
    return Embedder.load(tiny_model_settings(checkpoint, preprocess_mode="fast"))
