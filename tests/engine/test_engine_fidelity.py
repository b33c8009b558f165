"""Fidelity on real photos with the real ViT-B-32 architecture (random weights from a fixed seed, fp32, CPU).

The quality guard of the fast path: per photo, the fast-mode embedding has cosine >= 0.99 with the
exact-mode one, and >= 0.995 on average. Random weights make embeddings less sensitive than trained
ones, so the pixels are held to a bound of their own (PSNR against exact mode's pixels), which no model
can soften. The exact path is also checked end to end against open_clip's own full model.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from harness.photos import variant_images
from worker.engine import Embedder, PreparedImage


def cosines(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    x, y = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)


def embedded(embedder: Embedder, images: list[PreparedImage]) -> list[np.ndarray]:
    results = embedder.embed(images)
    assert all(isinstance(r, np.ndarray) for r in results)
    return [r for r in results if isinstance(r, np.ndarray)]


@pytest.fixture(scope="module")
def prepared_corpus(
    vitb32_fast: Embedder, vitb32_exact: Embedder, corpus: list[tuple[str, bytes]]
) -> tuple[list[PreparedImage], list[PreparedImage]]:
    return [vitb32_fast.prepare(data) for _, data in corpus], [vitb32_exact.prepare(data) for _, data in corpus]


def test_fast_mode_embeddings_match_exact_mode_on_real_photos(
    vitb32_fast: Embedder,
    vitb32_exact: Embedder,
    corpus: list[tuple[str, bytes]],
    prepared_corpus: tuple[list[PreparedImage], list[PreparedImage]],
) -> None:
    fast, exact = prepared_corpus
    assert {p.scale for p in fast} == {1, 2, 4}  # reduced-DCT decoding really happened
    cos = cosines(embedded(vitb32_fast, fast), embedded(vitb32_exact, exact))
    worst = corpus[int(cos.argmin())][0]
    print(f"\nfast vs exact cosine over {len(cos)} photos: min {cos.min():.5f} ({worst}), mean {cos.mean():.5f}")
    assert cos.min() >= 0.99, worst
    assert cos.mean() >= 0.995


def test_fast_mode_pixels_stay_close_to_exact_mode(
    corpus: list[tuple[str, bytes]], prepared_corpus: tuple[list[PreparedImage], list[PreparedImage]]
) -> None:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    psnrs = []
    for (name, _), fast, exact in zip(corpus, *prepared_corpus, strict=True):
        reference = (exact.pixels * std + mean).mul(255).clamp(0, 255).permute(1, 2, 0).double()
        mse = float((fast.pixels.double() - reference).pow(2).mean())
        psnrs.append(10 * np.log10(255**2 / max(mse, 1e-12)))
        assert psnrs[-1] >= 30.0, (name, psnrs[-1])
    print(f"\nfast vs exact pixel PSNR: min {min(psnrs):.1f} dB, median {np.median(psnrs):.1f} dB")


def test_exact_mode_embeds_what_open_clips_full_model_embeds(
    vitb32_exact: Embedder, vitb32_checkpoint: Path, corpus: list[tuple[str, bytes]]
) -> None:
    """open_clip's own path end to end: full model, its transform on the opened file, encode_image, L2 norm."""
    model, _train, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=str(vitb32_checkpoint))
    model.eval()
    samples = [corpus[0][1], corpus[-1][1], variant_images()["rgba.png"]]
    with torch.inference_mode():
        batch = torch.stack([preprocess(Image.open(io.BytesIO(data))) for data in samples])
        expected = model.encode_image(batch, normalize=True).numpy()
    got = np.stack(embedded(vitb32_exact, [vitb32_exact.prepare(data) for data in samples]))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_an_embedding_does_not_depend_on_its_batch(
    vitb32_fast: Embedder, prepared_corpus: tuple[list[PreparedImage], list[PreparedImage]]
) -> None:
    fast, _exact = prepared_corpus
    extra = [vitb32_fast.prepare(data) for data in variant_images().values()]
    batch = (fast + extra + fast)[:64]
    settings = vitb32_fast.settings.model_copy(update={"inference_batch_size": 64})
    big = Embedder(settings=settings, tower=vitb32_fast.tower)
    in_batch = embedded(big, batch)
    positions = [0, 21, 47, 63]
    alone = [embedded(big, [batch[i]])[0] for i in positions]
    cos = cosines(alone, [in_batch[i] for i in positions])
    assert cos.min() >= 0.9999, cos
