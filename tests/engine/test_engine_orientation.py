"""With exif_orientation on, a photo is embedded upright in both modes; off (the default), as stored.

"Upright" is checked against the same photo physically turned: its stored pixels transposed and saved
losslessly, so exact mode must match it bit for bit, and fast mode (reduced DCT) within its pixel
bound. The orientation is read by our own parser; the properties hold it to Pillow's reading
(``ImageOps.exif_transpose``) on EXIF blocks Pillow wrote and on damaged ones.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image, ImageOps

from harness.photos import resize_long_side, source_photo
from worker.config import load_settings
from worker.engine import Embedder, PreprocessMode
from worker.engine.orientation import ORIENTATION_TAG, upright
from worker.engine.preprocess import Preprocessor

CFG = PreprocessCfg(size=224)
FUZZ = settings(max_examples=300, deadline=None, database=None)  # no example database in the tree


def preprocessor(mode: PreprocessMode, *, exif_orientation: bool) -> Preprocessor:
    return Preprocessor(CFG, mode=mode, max_pixels=10**8, exif_orientation=exif_orientation)


def jpeg_with_orientation(photo: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def turned_by_hand(data: bytes) -> bytes:
    """The stored pixels of ``data`` physically turned upright, as a lossless PNG without EXIF."""
    out = io.BytesIO()
    ImageOps.exif_transpose(Image.open(io.BytesIO(data))).save(out, "PNG")
    return out.getvalue()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def rocket() -> Image.Image:
    return resize_long_side(Image.fromarray(source_photo("rocket")), 1600)  # 1600x1068: JPEG draft at 1/4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exact_mode_embeds_the_photo_as_if_physically_turned(orientation: int) -> None:
    data = jpeg_with_orientation(resize_long_side(Image.fromarray(source_photo("coffee")), 400), orientation)
    upright_png = turned_by_hand(data)
    on, off = preprocessor("exact", exif_orientation=True), preprocessor("exact", exif_orientation=False)
    got = on.prepare(data)
    assert torch.equal(got.pixels, on.prepare(upright_png).pixels)
    assert (got.width, got.height) == Image.open(io.BytesIO(upright_png)).size
    stored = image_transform_v2(CFG, is_train=False)(Image.open(io.BytesIO(data)))
    assert torch.equal(off.prepare(data).pixels, stored), "off: open_clip's own result, EXIF ignored"
    assert torch.equal(got.pixels, stored) == (orientation == 1)


@pytest.mark.parametrize("orientation", [3, 6])
def test_fast_mode_drafts_and_plans_on_the_upright_size(rocket: Image.Image, orientation: int) -> None:
    data = jpeg_with_orientation(rocket, orientation)
    reference = preprocessor("exact", exif_orientation=True).prepare(turned_by_hand(data))
    want = (reference.pixels * torch.tensor(CFG.std).view(3, 1, 1) + torch.tensor(CFG.mean).view(3, 1, 1))
    want = want.mul(255).clamp(0, 255).permute(1, 2, 0)
    on = preprocessor("fast", exif_orientation=True).prepare(data)
    off = preprocessor("fast", exif_orientation=False).prepare(data)
    # Upright 1068x1600 resizes to 224x335: 1/4 of the file (400x267) still covers it; had the draft been
    # asked for in the upright axes it would have taken 1/2.
    assert on.scale == 4
    assert (on.width, on.height) == ((1068, 1600) if orientation == 6 else (1600, 1068))
    assert psnr(on.pixels, want) >= 35.0
    assert psnr(off.pixels, want) < 20.0, "off: the photo as stored, not turned"


def test_an_xmp_orientation_counts_when_exif_has_none() -> None:
    out = io.BytesIO()
    Image.new("RGB", (64, 40), "red").save(out, "JPEG", xmp=b'<x:xmpmeta tiff:Orientation="6"/>')
    image = Image.open(io.BytesIO(out.getvalue()))
    assert upright(image) == Image.Transpose.ROTATE_270
    assert ImageOps.exif_transpose(image).size == (40, 64)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_a_tiff_is_turned_by_pillow_itself_and_never_twice(mode: PreprocessMode) -> None:
    photo = resize_long_side(Image.fromarray(source_photo("astronaut")), 300).crop((0, 0, 300, 200))
    out = io.BytesIO()
    photo.save(out, "TIFF", tiffinfo={ORIENTATION_TAG: 8})
    data = out.getvalue()
    on = preprocessor(mode, exif_orientation=True).prepare(data)
    off = preprocessor(mode, exif_orientation=False).prepare(data)
    assert (on.width, on.height) == (off.width, off.height) == (200, 300)  # Pillow's TIFF loader turned it
    assert torch.equal(on.pixels, off.pixels)


def test_the_setting_is_off_by_default_and_its_variable_reaches_the_preprocessor(
    tiny_fast: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_settings().model.exif_orientation is False and tiny_fast.preprocessor.exif_orientation is False
    monkeypatch.setenv("CLIP_WORKER_MODEL__EXIF_ORIENTATION", "true")
    embedder = Embedder(settings=load_settings().model, tower=tiny_fast.tower)
    assert embedder.preprocessor.exif_orientation is True


def pillows_turn(blob: bytes) -> Image.Image | None:
    """What exif_transpose does to a 2x3 image carrying ``blob`` as its EXIF, warnings let pass; None if it raises
    (anything: rewriting damaged EXIF after the turn can fail in ways of its own, AttributeError among them)."""
    image = probe(blob)
    with warnings.catch_warnings():  # the test's own thread; the worker never lets Pillow parse EXIF
        warnings.simplefilter("ignore")
        try:
            return ImageOps.exif_transpose(image)
        except Exception:
            return None


def probe(blob: bytes) -> Image.Image:
    image = Image.frombytes("L", (2, 3), bytes(range(6)))  # every transpose gives a different image
    image.info["exif"] = blob
    return image


def ours(blob: bytes) -> Image.Image:
    image = probe(blob)
    turn = upright(image)
    return image if turn is None else image.transpose(turn)


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


ORIENTATIONS = st.integers(0, 9) | st.integers(0, 65535)  # mostly the values that mean something


@st.composite
def exif_blocks(draw: st.DrawFn) -> bytes:
    """Pillow-written EXIF with any orientation, or a hand-built IFD0 of arbitrary entries, maybe cut."""
    if draw(st.booleans()):
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = draw(ORIENTATIONS)
        if draw(st.booleans()):
            exif[0x010F] = draw(st.text(max_size=20))  # Make: its value lies outside the entry
        return exif.tobytes()  # with its "Exif" prefix
    order = draw(st.sampled_from(["<", ">"]))
    body = b""
    entries = draw(st.integers(0, 4))
    for _ in range(entries):
        tag = draw(st.sampled_from([ORIENTATION_TAG, 0x010F, 0x0132]))  # Orientation, Make, DateTime
        kind, count = draw(st.integers(0, 12)), draw(st.integers(0, 3))  # any field type, valid or not
        value = draw(st.binary(min_size=4, max_size=4) | ORIENTATIONS.map(lambda v: struct.pack(order + "HH", v, 0)))
        body += struct.pack(order + "HHL", tag, kind, count) + value
    tiff = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "LH", 8, entries) + body
    tiff += draw(st.binary(max_size=16))
    return tiff[: draw(st.integers(0, len(tiff)))] if draw(st.booleans()) else tiff


def turns(image: Image.Image) -> list[Image.Image]:
    """The image as stored and under each of the seven transposes an orientation can ask for."""
    return [image, *(image.transpose(turn) for turn in Image.Transpose)]


@FUZZ
@given(exif_blocks())
def test_the_orientation_is_pillows_wherever_pillow_can_read_it(blob: bytes) -> None:
    got = ours(blob)  # never warns (warnings are errors here) and never raises
    want = pillows_turn(blob)
    if want is None:  # damaged past Pillow's reading: ours still gives the probe as stored or turned
        assert any(same(got, turned) for turned in turns(probe(blob)))
    else:
        assert same(got, want)


@FUZZ
@given(ORIENTATIONS, st.booleans())
def test_pillow_reads_every_exif_block_it_wrote_and_turns_it_as_ours_does(orientation: int, make: bool) -> None:
    """The blocks Pillow wrote are the case the property above must not skip: Pillow reads each of them."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    if make:
        exif[0x010F] = "camera"
    blob = exif.tobytes()
    want = pillows_turn(blob)
    assert want is not None, "Pillow cannot read an EXIF block it wrote itself"
    assert same(ours(blob), want)


@FUZZ
@given(st.binary(max_size=64))
def test_any_exif_bytes_give_an_orientation_or_none(blob: bytes) -> None:
    got = ours(b"Exif\x00\x00II*\x00" + blob)
    assert got.size in ((2, 3), (3, 2))
