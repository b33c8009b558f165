"""16- and 32-bit greyscale is scaled to 8 bits by its mode's range, in both modes; other modes stay as decoded.

The examples are real PNG and TIFF files holding a gradient: each must come out as the 8-bit image
its documented scaling gives (bit for bit, through the whole preprocessing), which a clipped or a
constant picture cannot. The properties give arbitrary arrays in every high-depth mode, straight to
the conversion and as TIFF bytes through ``prepare``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from open_clip.transform import PreprocessCfg
from PIL import Image

from worker.engine.modes import HIGH_DEPTH_MODES, eight_bit, for_transform
from worker.engine.preprocess import Preprocessor
from worker.errors import ImageError, UnsupportedImage

CFG = PreprocessCfg(size=64)
PREPROCESSORS = {mode: Preprocessor(CFG, mode=mode, max_pixels=10**7) for mode in ("fast", "exact")}
GRADIENT = np.linspace(0.0, 1.0, 96 * 128).reshape(96, 128)  # every row a different band of values
FUZZ = settings(max_examples=150, deadline=None, database=None)  # no example database in the tree


def encoded(array: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, fmt)
    return out.getvalue()


def prepared_like(data: bytes, reference: np.ndarray, mode: str) -> None:
    """``data`` prepares to exactly what the 8-bit ``reference`` does, and that is not one flat value."""
    preprocessor = PREPROCESSORS[mode]
    got, want = preprocessor.prepare(data).pixels, preprocessor.prepare(encoded(reference, "PNG")).pixels
    assert torch.equal(got, want)
    assert len(torch.unique(got)) > 50, "the gradient did not survive"


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_sixteen_bit_png_is_scaled_not_clipped(mode: str) -> None:
    values = np.round(GRADIENT * 65535).astype(np.uint16)
    data = encoded(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    prepared_like(data, np.round(values / 257).astype(np.uint8), mode)  # v * 255 / 65535 is v / 257


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_big_endian_sixteen_bit_tiff_is_scaled_like_the_png(mode: str) -> None:
    values = np.round(GRADIENT * 65535).astype(">u2")
    data = encoded(values, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    prepared_like(data, np.round(values.astype(np.uint16) / 257).astype(np.uint8), mode)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_thirty_two_bit_tiff_within_sixteen_bits_is_scaled_as_sixteen_bit(mode: str) -> None:
    values = np.round(GRADIENT * 40000).astype(np.int32)  # 16-bit data in a 32-bit file
    data = encoded(values, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    prepared_like(data, np.round(values / 257).astype(np.uint8), mode)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_thirty_two_bit_tiff_past_sixteen_bits_is_stretched_over_its_own_range(mode: str) -> None:
    values = np.round(GRADIENT * 3_000_000 - 1_000_000).astype(np.int32)
    data = encoded(values, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    prepared_like(data, np.round((values + 1_000_000) * 255 / 3_000_000).astype(np.uint8), mode)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_float_tiff_in_zero_to_one_is_scaled_by_255(mode: str) -> None:
    values = (GRADIENT * 0.5 + 0.25).astype(np.float32)  # 0.25..0.75: not stretched to its own range
    data = encoded(values, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    prepared_like(data, np.round(values.astype(np.float64) * 255).astype(np.uint8), mode)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_float_tiff_outside_zero_to_one_is_stretched_and_nan_is_black(mode: str) -> None:
    values = (GRADIENT * 1000 - 200).astype(np.float32)
    values[:, :8] = np.nan
    data = encoded(values, "TIFF")
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    reference = np.round((np.nan_to_num(values.astype(np.float64), nan=low) - low) * 255 / (high - low))
    reference = reference.astype(np.uint8)
    reference[:, :8] = 0
    prepared_like(data, reference, mode)


def test_a_mode_the_transform_cannot_take_is_unsupported() -> None:
    with pytest.raises(UnsupportedImage, match="La"):
        for_transform(Image.new("La", (4, 4)))


def test_palette_transparency_is_dropped_and_the_palette_kept() -> None:
    image = Image.new("P", (4, 4), 3)
    image.putpalette([value for entry in range(256) for value in (entry, entry, entry)])
    image.info["transparency"] = bytes(range(256))
    ready = for_transform(image)
    assert ready.mode == "P" and "transparency" not in ready.info
    assert ready.convert("RGB").getpixel((0, 0)) == (3, 3, 3)


DTYPES = {"I;16": "<u2", "I;16B": ">u2", "I;16L": "<u2", "I;16N": "=u2", "I": "<i4", "F": "<f4"}
TIFF_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # the ones Pillow writes as TIFF (not I;16N)


def high_depth_images(modes: tuple[str, ...] = tuple(DTYPES)) -> st.SearchStrategy[Image.Image]:
    """Small arrays of any values in high-depth modes, NaN and infinities included for F."""
    shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)

    def image(mode: str, array: np.ndarray) -> Image.Image:
        return Image.frombytes(mode, (array.shape[1], array.shape[0]), array.tobytes())

    return st.sampled_from(modes).flatmap(
        lambda mode: st.builds(image, st.just(mode), hnp.arrays(np.dtype(DTYPES[mode]), shapes))
    )


def test_every_high_depth_mode_is_generated() -> None:
    assert set(DTYPES) == HIGH_DEPTH_MODES


@FUZZ
@given(high_depth_images())
def test_any_high_depth_image_becomes_eight_bit_greyscale_in_value_order(image: Image.Image) -> None:
    try:
        out = eight_bit(image)
    except ImageError:
        return
    assert out.mode == "L" and out.size == image.size
    rgb = np.asarray(out.convert("RGB"))
    assert rgb.dtype == np.uint8 and rgb.shape == (image.size[1], image.size[0], 3)
    values, got = np.asarray(image).astype(np.float64).ravel(), np.asarray(out).ravel()
    if image.mode.startswith("I;16"):
        assert np.array_equal(got, np.round(values / 257))
    finite = np.isfinite(values)
    order = np.argsort(values[finite], kind="stable")
    assert np.all(np.diff(got[finite][order].astype(int)) >= 0), "the scaling must keep the values' order"
    assert np.all(got[~finite] == 0)


@FUZZ
@given(high_depth_images(TIFF_MODES), st.sampled_from(["fast", "exact"]))
def test_high_depth_tiff_bytes_prepare_or_give_an_image_error(image: Image.Image, mode: str) -> None:
    out = io.BytesIO()
    image.save(out, "TIFF")
    try:
        prepared = PREPROCESSORS[mode].prepare(out.getvalue())
    except ImageError:
        return
    assert prepared.pixels.shape in ((64, 64, 3), (3, 64, 64))
    assert torch.isfinite(prepared.pixels.float()).all()
