"""Bad bytes are a typed error for that record alone, in both modes; odd but valid images decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from harness.photos import bad_images, photo_corpus, variant_images
from worker.engine import Embedder
from worker.errors import DecompressionBomb, ImageError, NotAnImage

# 16-bit greyscale is scaled to 8 bits now (test_engine_modes), no longer refused.
# TODO(harness owner): move "grey-16-bit.png" from bad_images() to variant_images().
BAD = {name: case for name, case in bad_images().items() if name != "grey-16-bit.png"}
VARIANTS = variant_images()


@pytest.mark.parametrize("mode", ["fast", "exact"])
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_give_their_typed_error(
    name: str, mode: str, tiny_fast: Embedder, tiny_exact: Embedder
) -> None:
    data, expected = BAD[name]
    embedder = tiny_fast if mode == "fast" else tiny_exact
    with pytest.raises(ImageError) as caught:
        embedder.prepare(data)
    assert type(caught.value) is expected, f"{name}: {caught.value!r}"
    assert caught.value.reason.strip(), "the dead-letter record needs a reason"
    assert caught.value.stage == "decode-image"


def test_reasons_name_what_the_bytes_are(tiny_fast: Embedder) -> None:
    reasons = {}
    for name in ("pdf", "html", "bomb-jpeg-72mp", "jpeg-cut-in-half"):
        with pytest.raises(ImageError) as caught:
            tiny_fast.prepare(BAD[name][0])
        reasons[name] = caught.value.reason
    assert "PDF" in reasons["pdf"]
    assert "HTML" in reasons["html"]
    assert "9000x8000" in reasons["bomb-jpeg-72mp"] and "64000000" in reasons["bomb-jpeg-72mp"]
    assert "ends early" in reasons["jpeg-cut-in-half"]


def test_formats_outside_the_allowlist_are_not_parsed(tiny_fast: Embedder) -> None:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out, "ICO")
    with pytest.raises(NotAnImage):
        tiny_fast.prepare(out.getvalue())


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_decompression_bomb_is_refused_before_any_decode(
    mode: str, tiny_fast: Embedder, tiny_exact: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("the pixel limit must be checked before the image is decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    embedder = tiny_fast if mode == "fast" else tiny_exact
    for name in ("bomb-jpeg-72mp", "bomb-png-400mp"):
        with pytest.raises(DecompressionBomb):
            embedder.prepare(BAD[name][0])


def test_pixel_limit_is_the_setting(tiny_fast: Embedder) -> None:
    data = VARIANTS["rgb.png"]  # 400 x 266 = 106,400 pixels

    def with_limit(pixels: int) -> Embedder:
        settings = tiny_fast.settings.model_copy(update={"max_image_pixels": pixels})
        return Embedder(settings=settings, tower=tiny_fast.tower)

    with pytest.raises(DecompressionBomb, match="400x266"):
        with_limit(100_000).prepare(data)
    assert with_limit(106_400).prepare(data).width == 400


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_valid_variants_decode_in_both_modes(name: str, tiny_fast: Embedder, tiny_exact: Embedder) -> None:
    fast, exact = tiny_fast.prepare(VARIANTS[name]), tiny_exact.prepare(VARIANTS[name])
    assert fast.pixels.shape == (224, 224, 3) and fast.pixels.dtype.is_floating_point is False
    assert exact.pixels.shape == (3, 224, 224)
    assert (fast.width, fast.height, fast.format) == (exact.width, exact.height, exact.format)


def test_sample_images_are_what_they_claim() -> None:
    """Guards the samples themselves, so the tests above test the cases they are named after."""
    gif = Image.open(io.BytesIO(VARIANTS["animated.gif"]))
    assert gif.n_frames == 3
    palette = Image.open(io.BytesIO(VARIANTS["palette-transparency.png"]))
    assert palette.mode == "P" and isinstance(palette.info.get("transparency"), bytes)
    assert Image.open(io.BytesIO(VARIANTS["cmyk.jpg"])).mode == "CMYK"
    assert Image.open(io.BytesIO(VARIANTS["rgba.png"])).mode == "RGBA"
    assert Image.open(io.BytesIO(VARIANTS["multi-picture.mpo"])).format == "MPO"


def _mutations(data: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        buf = bytearray(data)
        kind = rng.integers(3)
        if kind == 0:  # flip a few bytes anywhere, the header included
            for at in rng.integers(0, len(buf), size=int(rng.integers(1, 8))):
                buf[at] ^= int(rng.integers(1, 256))
        elif kind == 1:  # cut
            del buf[int(rng.integers(0, len(buf))) :]
        else:  # splice in junk
            at = int(rng.integers(0, len(buf)))
            buf[at:at] = rng.bytes(int(rng.integers(1, 64)))
        out.append(bytes(buf))
    return out


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_fuzzed_bytes_never_raise_anything_but_image_errors(
    mode: str, tiny_fast: Embedder, tiny_exact: Embedder
) -> None:
    embedder = tiny_fast if mode == "fast" else tiny_exact
    rng = np.random.default_rng(1234)
    seeds = [photo_corpus(names=("chelsea",), long_sides=(640,), qualities=(85,))[0][1]]
    seeds += [VARIANTS[name] for name in ("rgb.png", "animated.gif", "lossy.webp", "image.tiff", "image.bmp")]
    outcomes = {"ok": 0, "error": 0}
    for seed in seeds:
        for data in _mutations(seed, rng, 40):
            try:
                prepared = embedder.prepare(data)
            except ImageError:
                outcomes["error"] += 1
            else:
                assert prepared.pixels.shape in ((224, 224, 3), (3, 224, 224))
                outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0  # both paths were exercised


def test_an_animated_gif_gives_its_first_frame(tiny_exact: Embedder) -> None:
    data = VARIANTS["animated.gif"]
    frames = Image.open(io.BytesIO(data))
    first = tiny_exact.preprocessor._transform(frames)
    frames.seek(1)
    second = tiny_exact.preprocessor._transform(frames)
    got = tiny_exact.prepare(data).pixels
    assert torch.equal(got, first) and not torch.equal(got, second)
