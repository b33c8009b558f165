"""exact is open_clip's transform on the file as opened, bit for bit; fast has its geometry and modes, decodes JPEGs
small, and is thread-safe."""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from harness.models import TINY_MODEL_NAME, register_model_configs
from harness.photos import photo_corpus, source_photo, variant_images
from worker.engine import Embedder, PreparedImage
from worker.engine.preprocess import Preprocessor, plan

MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)


CFGS = {
    "shortest-224": PreprocessCfg(size=224),
    "shortest-bilinear": PreprocessCfg(size=(224, 224), interpolation="bilinear"),
    "shortest-non-square": PreprocessCfg(size=(192, 256)),
    "longest-pad": PreprocessCfg(size=224, resize_mode="longest", fill_color=128),
    "longest-non-square": PreprocessCfg(size=(256, 192), resize_mode="longest"),
    "squash": PreprocessCfg(size=(224, 224), resize_mode="squash", interpolation="bilinear"),
}
SIZES = [(224, 224), (225, 300), (300, 225), (640, 427), (427, 640), (150, 100), (40, 400), (1000, 31), (333, 333)]


def open_clip_tensor(transform: object, data: bytes) -> torch.Tensor:
    """What open_clip gives for the file: its transform on ``Image.open``, nothing done before it."""
    with warnings.catch_warnings():  # its convert("RGB") warns on palette alpha (this test's thread only)
        warnings.simplefilter("ignore")
        tensor = transform(Image.open(io.BytesIO(data)))  # type: ignore[operator]
    assert isinstance(tensor, torch.Tensor)
    return tensor


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def palette_files() -> dict[str, bytes]:
    """The files whose mode made exact mode differ from open_clip: palettes with alpha, animations."""
    photo = Image.fromarray(source_photo("chelsea")).resize((300, 200))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    frames = [photo.rotate(angle).quantize(colors) for angle, colors in ((0, 16), (90, 64), (180, 256))]
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    return {
        "palette-alpha.png": encoded(palette, "PNG", transparency=bytes(range(0, 256, 4))),
        "palette-transparent-index.gif": encoded(palette, "GIF", transparency=3),
        "animated-palettes.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
        "animated.webp": encoded(rgba, "WEBP", save_all=True, append_images=[photo.rotate(90)], duration=50),
        "animated.png": encoded(rgba, "PNG", save_all=True, append_images=[photo.rotate(90).convert("RGBA")]),
        "rgba.png": encoded(rgba, "PNG"),
        "grey-alpha.png": encoded(rgba.convert("LA"), "PNG"),
        "bilevel.png": encoded(photo.convert("1"), "PNG"),
        "cmyk.tiff": encoded(photo.convert("CMYK"), "TIFF"),
    }


PALETTE_FILES = palette_files()


def test_exact_mode_is_bitwise_open_clips_transform(
    tiny_checkpoint: Path, tiny_exact: Embedder, corpus: list[tuple[str, bytes]]
) -> None:
    register_model_configs()
    _model, _train, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=str(tiny_checkpoint))
    samples = [*corpus, *variant_images().items(), *PALETTE_FILES.items()]
    for name, data in samples:
        expected = open_clip_tensor(preprocess, data)
        got = tiny_exact.prepare(data).pixels
        assert got.dtype == expected.dtype and torch.equal(got, expected), name


def test_palette_and_animated_samples_are_what_they_claim() -> None:
    """Guards the samples, so that the tests on them test the cases they are named after."""
    opened = {name: Image.open(io.BytesIO(data)) for name, data in PALETTE_FILES.items()}
    palette_alpha = opened["palette-alpha.png"]
    assert palette_alpha.mode == "P" and isinstance(palette_alpha.info["transparency"], bytes)
    assert opened["palette-transparent-index.gif"].info["transparency"] == 3
    gif = opened["animated-palettes.gif"]
    palettes = []
    for frame in range(gif.n_frames):
        gif.seek(frame)
        palettes.append(gif.convert("RGB").getcolors(256 * 256))
    assert gif.n_frames == 3 and len({len(colors or []) for colors in palettes}) == 3
    assert opened["animated.webp"].n_frames == 2 and opened["animated.png"].n_frames == 2
    assert [opened[name].mode for name in ("rgba.png", "grey-alpha.png", "bilevel.png", "cmyk.tiff")] == [
        "RGBA", "LA", "1", "CMYK"
    ]


@pytest.mark.parametrize("cfg_name", ["shortest-224", "longest-pad", "longest-non-square"])
@pytest.mark.parametrize("name", sorted(PALETTE_FILES))
def test_both_modes_give_open_clips_pixels_for_palettes_alpha_and_animations(name: str, cfg_name: str) -> None:
    """open_clip resizes in the file's own mode (NEAREST for P, premultiplied for RGBA) and pads with its fill
    per band (a palette index for P); both modes must do the same, without a warning (they are errors here)."""
    cfg = CFGS[cfg_name]
    fast = Preprocessor(cfg, mode="fast", max_pixels=10**8)
    exact = Preprocessor(cfg, mode="exact", max_pixels=10**8)
    data = PALETTE_FILES[name]
    want = open_clip_tensor(image_transform_v2(cfg, is_train=False), data)
    assert torch.equal(exact.prepare(data).pixels, want)
    assert torch.equal(fast.collate([fast.prepare(data)], device=torch.device("cpu"), dtype=torch.float32)[0], want)


@pytest.mark.parametrize("name", ["palette-alpha.png", "animated-palettes.gif", "rgba.png", "bilevel.png"])
def test_converting_to_rgb_before_open_clips_transform_would_give_other_pixels(name: str) -> None:
    """The cause of the old mismatch: open_clip converts to RGB after resizing, not before."""
    transform = image_transform_v2(CFGS["shortest-224"], is_train=False)
    data = PALETTE_FILES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted_first = transform(Image.open(io.BytesIO(data)).convert("RGB"))
    assert not torch.equal(converted_first, open_clip_tensor(transform, data))


@pytest.mark.parametrize("cfg_name", sorted(CFGS))
def test_fast_geometry_matches_open_clip_for_every_resize_mode(cfg_name: str) -> None:
    """On non-JPEG input (no reduced DCT), fast mode's pixels are exact mode's, bit for bit."""
    cfg = CFGS[cfg_name]
    fast = Preprocessor(cfg, mode="fast", max_pixels=10**8)
    exact = Preprocessor(cfg, mode="exact", max_pixels=10**8)
    photo = Image.fromarray(source_photo("astronaut"))
    for size in SIZES:
        out = io.BytesIO()
        photo.resize(size, Image.Resampling.LANCZOS).save(out, "PNG")
        data = out.getvalue()
        got = fast.collate([fast.prepare(data)], device=torch.device("cpu"), dtype=torch.float32)[0]
        want = exact.prepare(data).pixels
        assert torch.equal(got, want), (cfg_name, size)


def test_plan_replicates_torchvision_and_open_clip_numbers() -> None:
    p = plan(640, 427, PreprocessCfg(size=224))
    assert p.resized == (335, 224)  # int(224 * 640 / 427) = 335: truncated, as torchvision does
    assert p.region == (56, 0, 224, 224)  # int(round((335 - 224) / 2.0)) = 56 (banker's rounding of 55.5)
    padded = plan(400, 100, PreprocessCfg(size=224, resize_mode="longest", fill_color=7))
    assert padded.resized == (224, 56) and padded.offset == (0, 84) and padded.fill == 7


def test_fast_mode_decodes_jpegs_at_the_smallest_scale_still_above_the_target(
    tiny_fast: Embedder, corpus: list[tuple[str, bytes]]
) -> None:
    cfg = tiny_fast.preprocessor.cfg
    scales = {}
    for name, data in corpus:
        prepared = tiny_fast.prepare(data)
        resized = plan(prepared.width, prepared.height, cfg).resized
        decoded = (-(-prepared.width // prepared.scale), -(-prepared.height // prepared.scale))
        assert decoded[0] >= resized[0] and decoded[1] >= resized[1], name  # never below the target
        if prepared.scale < 8:  # ...and one more halving would go below it
            finer = prepared.scale * 2
            assert prepared.width // finer < resized[0] or prepared.height // finer < resized[1], name
        scales[name] = prepared.scale
    assert scales["astronaut-640px-q85.jpg"] == 2  # 640x640: 2x the 224 target, decoded at 320x320
    assert scales["rocket-1600px-q85.jpg"] == 4  # 1600x1067: decoded at 400x267 for a 335x224 resize
    assert scales["rocket-640px-q85.jpg"] == 1  # 640x427: under 2x the target, decoded whole


def test_phone_multi_picture_jpegs_take_the_reduced_dct_path_too(tiny_fast: Embedder) -> None:
    photo = Image.fromarray(source_photo("rocket")).resize((1600, 1067))
    out = io.BytesIO()
    photo.save(out, "MPO", save_all=True, append_images=[photo.rotate(180)], quality=90)
    prepared = tiny_fast.prepare(out.getvalue())
    assert (prepared.format, prepared.scale) == ("MPO", 4)


def test_fast_collate_is_bitwise_totensor_and_normalize_laid_out_channels_last(tiny_fast: Embedder) -> None:
    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(3)]
    images = [PreparedImage(torch.from_numpy(a), 224, 224, "PNG", 1) for a in arrays]
    batch = tiny_fast.preprocessor.collate(images, device=torch.device("cpu"), dtype=torch.float32)
    assert batch.shape == (3, 3, 224, 224) and batch.is_contiguous(memory_format=torch.channels_last)
    to_tensor = open_clip.transform.MaybeToTensor()
    for got, array in zip(batch, arrays, strict=True):
        want = (to_tensor(Image.fromarray(array)) - MEAN) / STD  # torchvision Normalize's arithmetic
        assert torch.equal(got, want)


def test_fast_mode_ships_a_quarter_of_the_bytes(tiny_fast: Embedder, tiny_exact: Embedder) -> None:
    data = variant_images()["rgb.png"]
    assert tiny_fast.prepare(data).nbytes == 224 * 224 * 3
    assert tiny_exact.prepare(data).nbytes == 4 * 224 * 224 * 3


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_prepare_is_thread_safe(mode: str, tiny_fast: Embedder, tiny_exact: Embedder) -> None:
    """Same pixels from any thread, and no Pillow warning escapes one (warnings are errors here; the palette
    files would warn if their transparency reached convert("RGB"))."""
    embedder = tiny_fast if mode == "fast" else tiny_exact
    blobs = [*(data for _, data in photo_corpus(long_sides=(640, 1024))), *PALETTE_FILES.values()] * 2
    sequential = [embedder.prepare(data).pixels for data in blobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(lambda data: embedder.prepare(data).pixels, blobs))
    assert all(torch.equal(a, b) for a, b in zip(sequential, threaded, strict=True))
