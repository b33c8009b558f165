"""The device JPEG path (worker/engine/gpu_decode.py), run here on the CPU through the same calls.

``baseline_header`` reads untrusted bytes, so besides examples it gets properties: on arbitrary bytes
and on real JPEGs mutated (bytes overwritten, inserted, deleted, cut) it never raises, and what it
accepts is a sane frame. ``decode_batch`` is held to the fast path's quality guard against exact mode
(tiny-model embedding cosine >= 0.99 per photo, >= 0.995 on average) and to a pixel bound of its own:
PSNR >= 45 dB per photo against exact mode's pixels. On the CPU both decode with libjpeg-turbo at full
size, so only the resize arithmetic differs (float32 antialiased filter vs Pillow's fixed point):
56 dB at worst was measured on the corpus, where fast mode (reduced DCT) gives 40 dB; 45 dB leaves
room for another build and still fails any geometry error (an off-by-one crop costs ~20 dB).
nvJPEG's own decode differs more; bench/gpu_check.py measures it on the GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.transform import PreprocessCfg
from PIL import Image

from harness.photos import photo_corpus
from worker.engine import Embedder, PreparedImage
from worker.engine.gpu_decode import JpegHeader, baseline_header, decode_batch
from worker.engine.preprocess import Preprocessor
from worker.errors import CorruptImage, DecompressionBomb, ImageError, UnsupportedImage

CPU = torch.device("cpu")
BIG = 10**9


def small_jpegs() -> list[bytes]:
    return [data for _, data in photo_corpus(long_sides=(640,), qualities=(85,))]


def thumbnail_jpeg() -> bytes:
    image = Image.open(io.BytesIO(small_jpegs()[1]))
    image.thumbnail((48, 48))
    return encoded(image)


def encoded(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def unnormalised(cfg: PreprocessCfg, exact: PreparedImage) -> torch.Tensor:
    """Exact mode's normalised float input, back in 0..255 (3, H, W)."""
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    return (exact.pixels * std + mean).mul(255).clamp(0, 255)


def check_header(header: JpegHeader | None) -> None:
    assert header is None or (header.width > 0 and header.height > 0 and header.components in (1, 3))


def test_the_corpus_photos_are_baseline_jpegs_of_their_size(corpus: list[tuple[str, bytes]]) -> None:
    for name, data in corpus:
        width, height = Image.open(io.BytesIO(data)).size
        assert baseline_header(data) == JpegHeader(width, height, 3), name


def test_what_the_device_path_leaves_to_the_cpu() -> None:
    data = small_jpegs()[0]
    image = Image.open(io.BytesIO(data))
    png = io.BytesIO()
    image.save(png, "PNG")
    sos = data.find(b"\xff\xda")
    second_scan = data[:-2] + data[sos : sos + 14] + b"\x12" * 8 + b"\xff\xd9"  # an SOS again before EOI
    assert baseline_header(encoded(image.convert("L"))) == JpegHeader(*image.size, 1)
    assert baseline_header(data + data) == JpegHeader(*image.size, 3)  # a second picture after EOI (MPO)
    for other in (
        encoded(image, progressive=True),
        encoded(image.convert("CMYK")),
        encoded(image, keep_rgb=True),  # RGB-coded, not YCbCr
        second_scan,
        data[:-2],  # no EOI: cut short
        data[: len(data) // 2],
        png.getvalue(),
        b"",
        b"\xff\xd8",
    ):
        assert baseline_header(other) is None


def test_decoded_batches_match_exact_mode_as_closely_as_fast_mode_must(
    tiny_exact: Embedder, tiny_fast: Embedder, corpus: list[tuple[str, bytes]]
) -> None:
    batch = decode_batch([data for _, data in corpus], tiny_exact.tower.preprocess_cfg, device=CPU, max_pixels=BIG)
    assert batch.rows == tuple(range(len(corpus))) and not batch.errors
    assert batch.pixels.dtype == torch.uint8 and batch.pixels.shape == (len(corpus), 3, 224, 224)
    exact = [tiny_exact.prepare(data) for _, data in corpus]
    cfg = tiny_exact.tower.preprocess_cfg
    psnrs = [psnr(batch.pixels[i], unnormalised(cfg, image)) for i, image in enumerate(exact)]
    worst = corpus[int(np.argmin(psnrs))][0]
    print(f"\ndevice path vs exact pixel PSNR: min {min(psnrs):.1f} dB ({worst}), median {np.median(psnrs):.1f} dB")
    assert min(psnrs) >= 45.0, worst
    ours = np.stack(tiny_fast.embed([batch.prepared(i) for i in range(len(corpus))]))  # type: ignore[arg-type]
    theirs = np.stack(tiny_exact.embed(exact))  # type: ignore[arg-type]
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= 0.99 and cos.mean() >= 0.995


@pytest.mark.parametrize(
    ("resize_mode", "interpolation"), [("shortest", "bilinear"), ("longest", "bicubic"), ("squash", "bicubic")]
)
def test_every_resize_mode_follows_open_clips_geometry(
    tiny_exact: Embedder, resize_mode: str, interpolation: str
) -> None:
    base = tiny_exact.tower.preprocess_cfg
    cfg = PreprocessCfg(size=(160, 224), mode="RGB", mean=base.mean, std=base.std, interpolation=interpolation,
                        resize_mode=resize_mode, fill_color=0)
    blobs = [small_jpegs()[2], photo_corpus(long_sides=(1024,), qualities=(95,))[5][1]]
    grey = encoded(Image.open(io.BytesIO(blobs[0])).convert("L"))
    batch = decode_batch([*blobs, grey], cfg, device=CPU, max_pixels=BIG)
    assert batch.pixels.shape == (3, 3, 160, 224)
    exact = Preprocessor(cfg, mode="exact", max_pixels=BIG)
    for row, data in enumerate([*blobs, grey]):
        assert psnr(batch.pixels[row], unnormalised(cfg, exact.prepare(data))) >= 45.0
    assert torch.equal(batch.pixels[2][0], batch.pixels[2][1])  # grey comes out as three equal channels


def test_a_bad_image_fails_alone_and_the_rest_of_its_batch_decodes(tiny_exact: Embedder) -> None:
    good = small_jpegs()[:3]
    scan = good[0].find(b"\xff\xda")
    broken = bytearray(good[0])
    broken[scan + 6] = 0x33  # the first component's Huffman tables: 3 and 3, which the file never defines
    assert baseline_header(bytes(broken)) is not None  # the header check passes it; the decoder does not
    cfg = tiny_exact.tower.preprocess_cfg
    batch = decode_batch([good[0], bytes(broken), good[1], bytes(broken), good[2]], cfg, device=CPU, max_pixels=BIG)
    assert batch.rows == (0, 2, 4)
    assert set(batch.errors) == {1, 3} and all(isinstance(e, CorruptImage) for e in batch.errors.values())
    alone = decode_batch(good, cfg, device=CPU, max_pixels=BIG)
    assert torch.equal(batch.pixels, alone.pixels)
    assert batch.sizes == alone.sizes


def test_bombs_and_other_formats_are_errors_per_image_not_exceptions(tiny_exact: Embedder) -> None:
    data = small_jpegs()[0]
    progressive = encoded(Image.open(io.BytesIO(data)), progressive=True)
    batch = decode_batch([data, progressive, b""], tiny_exact.tower.preprocess_cfg, device=CPU, max_pixels=BIG)
    assert batch.rows == (0,)
    assert isinstance(batch.errors[1], UnsupportedImage) and isinstance(batch.errors[2], UnsupportedImage)
    bomb = decode_batch([data], tiny_exact.tower.preprocess_cfg, device=CPU, max_pixels=100 * 100)
    assert bomb.rows == () and bomb.pixels.shape[0] == 0 and isinstance(bomb.errors[0], DecompressionBomb)
    assert decode_batch([], tiny_exact.tower.preprocess_cfg, device=CPU, max_pixels=BIG).pixels.shape[0] == 0


@given(st.binary(max_size=2048) | st.binary(max_size=256).map(lambda tail: b"\xff\xd8" + tail))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    check_header(baseline_header(data))


MUTATION = st.tuples(st.sampled_from(["overwrite", "insert", "delete", "cut"]), st.integers(0, 10**6), st.binary(
    min_size=1, max_size=8))


def mutated(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, value in mutations:
        at = where % (len(data) + 1)
        if kind == "overwrite":
            data = data[:at] + value + data[at + len(value) :]
        elif kind == "insert":
            data = data[:at] + value + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(value) :]
        else:
            data = data[:at]
    return data


@given(st.integers(0, 7), st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_real_jpegs_never_raise(photo: int, mutations: list[tuple[str, int, bytes]]) -> None:
    check_header(baseline_header(mutated(small_jpegs()[photo], mutations)))


@given(st.integers(0, 7), st.data())
def test_a_jpeg_cut_before_its_end_is_never_taken(photo: int, data: st.DataObject) -> None:
    whole = small_jpegs()[photo]
    assert baseline_header(whole[: data.draw(st.integers(0, len(whole) - 2))]) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_decode_batch_gives_a_row_or_an_error_for_any_mutated_jpeg(mutations: list[tuple[str, int, bytes]]) -> None:
    good = thumbnail_jpeg()
    blobs = [good, mutated(good, mutations), good]
    # a mutated frame header may claim any size: the pixel limit keeps the decode small, as in the worker
    batch = decode_batch(blobs, PreprocessCfg(size=224, mode="RGB"), device=CPU, max_pixels=2000 * 2000)
    assert sorted((*batch.rows, *batch.errors)) == [0, 1, 2] and not set(batch.rows) & set(batch.errors)
    assert {0, 2} <= set(batch.rows) and all(isinstance(e, ImageError) for e in batch.errors.values())
    assert batch.pixels.shape == (len(batch.rows), 3, 224, 224)
