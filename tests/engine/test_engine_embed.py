"""embed: one vector or one EmbedError per image, in order; device failures split the batch, never fake it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch

from harness.photos import bad_images, photo_jpegs
from worker.engine import Embedder, PreparedImage
from worker.errors import DeviceFailed, EmbedError, ImageError


class FlakyTower(torch.nn.Module):
    """Wraps a vision tower; ``fail`` decides, per call, whether the batch raises instead."""

    def __init__(self, inner: torch.nn.Module, fail: Callable[[torch.Tensor], BaseException | None]) -> None:
        super().__init__()
        self.inner = inner
        self.fail = fail
        self.batch_sizes: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(images.shape[0])
        error = self.fail(images)
        if error is not None:
            raise error
        out: torch.Tensor = self.inner(images)
        return out


def with_tower(embedder: Embedder, module: torch.nn.Module, **settings: object) -> Embedder:
    tower = dataclasses.replace(embedder.tower, module=module)
    return Embedder(settings=embedder.settings.model_copy(update=settings), tower=tower)


@pytest.fixture(scope="module")
def prepared(tiny_fast: Embedder) -> list[PreparedImage]:
    return [tiny_fast.prepare(data) for data in photo_jpegs(12)]


def vectors(results: list[np.ndarray | EmbedError]) -> np.ndarray:
    assert all(isinstance(r, np.ndarray) for r in results)
    return np.stack([r for r in results if isinstance(r, np.ndarray)])


def test_results_are_unit_float32_vectors_in_order(tiny_fast: Embedder, prepared: list[PreparedImage]) -> None:
    results = tiny_fast.embed(prepared)
    stacked = vectors(results)
    assert stacked.dtype == np.float32 and stacked.shape == (12, tiny_fast.dim)
    np.testing.assert_allclose(np.linalg.norm(stacked, axis=1), 1.0, rtol=1e-5)
    reversed_results = vectors(tiny_fast.embed(prepared[::-1]))
    np.testing.assert_allclose(reversed_results[::-1], stacked, rtol=1e-5, atol=1e-6)
    assert tiny_fast.embed([]) == []


def test_normalize_false_gives_the_raw_features(tiny_fast: Embedder, prepared: list[PreparedImage]) -> None:
    raw = vectors(with_tower(tiny_fast, tiny_fast.module, normalize=False).embed(prepared))
    unit = vectors(tiny_fast.embed(prepared))
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(raw / norms, unit, rtol=1e-5, atol=1e-6)


def test_batches_larger_than_the_batch_size_are_chunked(tiny_fast: Embedder, prepared: list[PreparedImage]) -> None:
    tower = FlakyTower(tiny_fast.module, lambda images: None)
    results = with_tower(tiny_fast, tower, inference_batch_size=5).embed(prepared)
    assert tower.batch_sizes == [5, 5, 2]
    np.testing.assert_allclose(vectors(results), vectors(tiny_fast.embed(prepared)), rtol=1e-5, atol=1e-6)


def test_out_of_memory_splits_the_batch_and_retries_the_halves(
    tiny_fast: Embedder, prepared: list[PreparedImage]
) -> None:
    def oom_above_three(images: torch.Tensor) -> BaseException | None:
        return torch.OutOfMemoryError("CUDA out of memory (simulated)") if images.shape[0] > 3 else None

    tower = FlakyTower(tiny_fast.module, oom_above_three)
    results = with_tower(tiny_fast, tower, inference_batch_size=12).embed(prepared)
    assert tower.batch_sizes == [12, 6, 3, 3, 6, 3, 3]
    np.testing.assert_allclose(vectors(results), vectors(tiny_fast.embed(prepared)), rtol=1e-5, atol=1e-6)


def test_a_device_that_fails_even_the_known_good_probe_is_a_device_failure_not_a_record_error(
    tiny_fast: Embedder, prepared: list[PreparedImage]
) -> None:
    tower = FlakyTower(tiny_fast.module, lambda images: torch.OutOfMemoryError("CUDA out of memory (simulated)"))
    with pytest.raises(DeviceFailed, match="out of memory, and a known-good image fails too"):
        with_tower(tiny_fast, tower).embed(prepared[:3])


def test_a_batch_that_fails_for_one_record_does_not_fail_the_others(
    tiny_fast: Embedder, prepared: list[PreparedImage]
) -> None:
    poison = PreparedImage(torch.full((224, 224, 3), 255, dtype=torch.uint8), 224, 224, "PNG", 1)
    batch = [*prepared[:5], poison, *prepared[5:]]

    def kernel_fault_on_white(images: torch.Tensor) -> BaseException | None:
        white = images.flatten(1).min(dim=1).values > 1.5  # normalised 255 is ~1.9 in every channel
        return RuntimeError("CUDA error: an illegal memory access (simulated)") if bool(white.any()) else None

    results = with_tower(tiny_fast, FlakyTower(tiny_fast.module, kernel_fault_on_white)).embed(batch)
    assert isinstance(results[5], EmbedError) and "illegal memory access" in results[5].reason
    assert results[5].stage == "embed"
    good = [r for i, r in enumerate(results) if i != 5]
    np.testing.assert_allclose(vectors(good), vectors(tiny_fast.embed(prepared)), rtol=1e-5, atol=1e-6)


def test_non_finite_or_zero_output_is_an_error_never_a_vector(
    tiny_fast: Embedder, prepared: list[PreparedImage]
) -> None:
    class Broken(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = torch.ones(images.shape[0], 4)
            out[1] = float("inf")  # fp16 overflow looks like this
            out[2] = float("nan")
            out[3] = 0.0
            return out

    results = with_tower(tiny_fast, Broken()).embed(prepared[:5])
    assert [type(r).__name__ for r in results] == ["ndarray", "EmbedError", "EmbedError", "EmbedError", "ndarray"]
    assert "non-finite" in results[1].reason and "zero" in results[3].reason  # type: ignore[union-attr]


def test_mixing_modes_in_one_batch_is_a_programming_error(
    tiny_fast: Embedder, tiny_exact: Embedder, prepared: list[PreparedImage]
) -> None:
    exact = tiny_exact.prepare(photo_jpegs(1)[0])
    with pytest.raises(TypeError):
        tiny_fast.embed([prepared[0], exact])


def test_prepare_then_embed_keeps_every_record_in_place(tiny_fast: Embedder) -> None:
    """The preprocess threads' path: each input prepared alone (an ImageError is that input's own), the
    prepared ones embedded as one batch, each vector back in its input's place."""
    blobs = photo_jpegs(3)
    bad = {name: data for name, (data, _error) in bad_images().items()}
    mixed = [blobs[0], bad["pdf"], blobs[1], bad["empty"], blobs[2]]
    prepared = [tiny_fast.prepare_or_error(data) for data in mixed]
    assert [type(p).__name__ for p in prepared] == ["PreparedImage", "NotAnImage", "PreparedImage", "EmptyImage",
                                                    "PreparedImage"]
    assert isinstance(prepared[1], ImageError) and isinstance(prepared[3], ImageError)
    results = tiny_fast.embed([p for p in prepared if isinstance(p, PreparedImage)])
    np.testing.assert_allclose(
        vectors(results),
        vectors(tiny_fast.embed([tiny_fast.prepare(b) for b in blobs])),
        rtol=1e-5,
        atol=1e-6,
    )
    for data, vector in zip(blobs, vectors(results), strict=True):  # in place: each matches its own image alone
        np.testing.assert_allclose(vector, vectors(tiny_fast.embed([tiny_fast.prepare(data)]))[0], rtol=1e-4, atol=1e-5)
