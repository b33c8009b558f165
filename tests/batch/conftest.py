"""Batch-mode fixtures: the tiny model's embedder, its settings on the test S3 endpoint, a folder of
good and bad images, and the reference each embedding is judged against.

The reference is the engine itself: Embedder.embed on the same bytes, one image at a time, which is
what the stream path computes for an image (tests/pipeline pin that); batch mode must agree with it
to cosine >= 0.9999.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness.models import tiny_model_settings
from harness.photos import bad_images
from harness.s3_server import S3Server
from tests.pipeline.conftest import make_settings  # noqa: F401  # a fixture: the stream's settings, for enqueue
from worker.config import Settings
from worker.engine import Embedder
from worker.errors import ImageError

# The tiny model in fast mode, batches of 8, two preprocessing threads: the embedder and the settings
# of every batch run are built from this one dict, so that they agree.
MODEL = {"preprocess_mode": "fast", "inference_batch_size": 8, "preprocess_workers": 2}
FIELD = "image_clip_emb_tiny_vit"
# "grey-16-bit.png" decodes since 16-bit greyscale is scaled to 8 bits (tests/engine/test_engine_decode.py).
BAD: dict[str, tuple[bytes, type[ImageError]]] = {
    name: case for name, case in bad_images().items() if name != "grey-16-bit.png"
}


@pytest.fixture(scope="session")
def embedder(tiny_checkpoint: Path) -> Embedder:
    return Embedder.load(tiny_model_settings(tiny_checkpoint, **MODEL))


@pytest.fixture
def batch_settings(tiny_checkpoint: Path, s3_server: S3Server) -> Callable[..., Settings]:
    """batch_settings(*allowed_sources, preprocess_in=..., **pipeline) -> Settings on the test S3 endpoint."""

    def make(*allowed_sources: str, s3: dict[str, object] | None = None, preprocess_in: str = "threads",
             **pipeline: object) -> Settings:
        return Settings(
            model=tiny_model_settings(tiny_checkpoint, **MODEL, preprocess_in=preprocess_in),
            s3={"endpoint_url": s3_server.endpoint_url, "region": "us-east-1", "allowed_sources": allowed_sources}
            | (s3 or {}),
            pipeline=pipeline,
        )

    return make


@pytest.fixture
def reference(embedder: Embedder) -> Callable[[bytes], np.ndarray]:
    """The engine's own embedding of one image's bytes."""

    def embed(data: bytes) -> np.ndarray:
        (result,) = embedder.embed([embedder.prepare(data)])
        assert isinstance(result, np.ndarray)
        return result

    return embed


@pytest.fixture
def photo_folder(tmp_path: Path, small_photos: list[tuple[str, bytes]]) -> Path:
    """photos/: the 8 small photos at the top, every bad-bytes case in bad/ (as .jpg files), and a
    README.txt that is no image and must not be picked up."""
    folder = tmp_path / "photos"
    (folder / "bad").mkdir(parents=True)
    for name, data in small_photos:
        (folder / name).write_bytes(data)
    for name, (data, _error) in BAD.items():
        (folder / "bad" / f"{name}.jpg").write_bytes(data)
    (folder / "README.txt").write_text("not an image, and not named like one")
    return folder


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
