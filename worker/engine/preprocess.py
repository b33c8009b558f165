"""Image bytes to model input, in two modes: open_clip's own transform (exact) or a faster equivalent.

exact: decode at full size and run open_clip's eval transform (``image_transform_v2`` built from the
model's own ``PreprocessCfg``) on the image as Pillow opened it, so the tensor is bit for bit what
open_clip gives for ``Image.open(file)``; the only changes are those of ``worker.engine.modes`` (16-
and 32-bit greyscale scaled, not clipped) and, when the setting is on, the EXIF orientation. It is
slow: the whole image is decoded, resized, then cropped, and the float tensor is 4x the pixels' bytes.

fast: a JPEG is decoded by reduced DCT straight to the smallest libjpeg scale (1/8..1) that is still
no smaller than the resize target, then resized and cropped to a uint8 HxWx3 array. It goes to the
device as uint8 (a quarter of the bytes) and is converted and normalised there. The geometry (resized
size, crop offsets, padding, interpolation) replicates open_clip's transform for every ``resize_mode``,
and like open_clip it resizes, crops and pads in the image's own mode and converts to RGB last, so
whenever no reduced DCT applies (non-JPEGs, small JPEGs) the pixels are exact mode's, bit for bit;
the reduced-DCT difference is measured by the quality tests.

Both run in the runtime's preprocessing threads: nothing here holds shared mutable state, and
Pillow releases the GIL while it decodes and resamples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision.transforms import functional as tvf

from worker.engine.decode import DecodedImage, load_image, open_image

PreprocessMode = Literal["fast", "exact"]


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """One image ready for the device: uint8 (H, W, 3) in fast mode, normalised float32 (3, H, W) in exact."""

    pixels: torch.Tensor
    width: int  # the source image's size, for the output record and metrics
    height: int
    format: str
    scale: int  # reduced-DCT factor the fast path decoded at (1 = full size)
    nbytes: int = field(init=False)  # of the pixels; read by every walk of the byte budget, so kept

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", self.pixels.numel() * self.pixels.element_size())


@dataclass(frozen=True, slots=True)
class Plan:
    """Where the model input comes from: open_clip's resize then crop-or-pad, as numbers."""

    resized: tuple[int, int]  # (w, h) the transform resizes the whole image to
    region: tuple[int, int, int, int]  # (left, top, width, height) kept from the resized image
    offset: tuple[int, int]  # (left, top) where that region lands in the output
    output: tuple[int, int]  # (w, h) of the model input
    resample: Image.Resampling
    fill: int


def _axis(resized: int, target: int) -> tuple[int, int, int]:
    """(source offset, output offset, length) of one axis: torchvision's centre crop, or centre pad."""
    if target > resized:
        return 0, (target - resized) // 2, resized
    return round((resized - target) / 2.0), 0, target  # torchvision: int(round(...)), banker's rounding


def plan(width: int, height: int, cfg: PreprocessCfg) -> Plan:
    """The geometry of open_clip's eval transform (transform.image_transform) for one source size."""
    target_h, target_w = (cfg.size, cfg.size) if isinstance(cfg.size, int) else cfg.size
    resample = Image.Resampling.BILINEAR if cfg.interpolation == "bilinear" else Image.Resampling.BICUBIC
    fill = 0  # torchvision's CenterCrop pads with 0; only "longest" uses fill_color
    if cfg.resize_mode == "squash":
        resized = (target_w, target_h)
    elif cfg.resize_mode == "shortest" and target_h == target_w:
        # torchvision Resize(int): the short side to the target, the long side truncated.
        short, long = min(width, height), max(width, height)
        new_long = int(target_h * long / short)
        resized = (target_h, new_long) if width <= height else (new_long, target_h)
    else:
        # ResizeKeepRatio.get_params, literally (the same float expressions, Python's round).
        longest = 1.0 if cfg.resize_mode == "longest" else 0.0
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        resized = (round(width * 1.0 / ratio), round(height * 1.0 / ratio))
        if cfg.resize_mode == "longest":
            fill = cfg.fill_color
        else:
            resample = Image.Resampling.BICUBIC  # open_clip builds this ResizeKeepRatio without interpolation
    src_x, dst_x, len_x = _axis(resized[0], target_w)
    src_y, dst_y, len_y = _axis(resized[1], target_h)
    return Plan(resized, (src_x, src_y, len_x, len_y), (dst_x, dst_y), (target_w, target_h), resample, fill)


def fast_pixels(decoded: DecodedImage, p: Plan) -> np.ndarray:
    """Resize the (possibly reduced-DCT) decode to the transform's size, crop or pad, convert: uint8 (H, W, 3)."""
    image = decoded.image
    left, top, width, height = p.region
    if decoded.scale != 1:
        # Reduced DCT is not exact mode's pixels anyway: resample only the kept region, whose box is
        # in decoded pixels (a 1001-px side at 1/4 is 250.25 of 251). For a 4:3 photo that is a
        # quarter fewer output pixels than resizing all of it (the resize is much of fast mode's time,
        # measured in BENCHMARKS.md); pixels just outside the box still feed the filter, as before.
        sx, sy = decoded.width / decoded.scale / p.resized[0], decoded.height / decoded.scale / p.resized[1]
        box = (left * sx, top * sy, (left + width) * sx, (top + height) * sy)
        region = image.resize((width, height), p.resample, box=box)
    else:
        if p.resized != (decoded.width, decoded.height):  # torchvision skips same-size
            # Resizing all of it and then cropping, like torchvision, rather than resampling only the
            # kept box: Pillow 13 picks the order of its two passes from the sizes involved, so a box
            # resize can round differently; this way a full-size decode gives exact mode's pixels bit for bit.
            image = image.resize(p.resized, p.resample)
        region = image.crop((left, top, left + width, top + height))
    if (width, height) != p.output:
        # torchvision's own pad, as open_clip's crop-or-pad calls it: the fill per band of the image's
        # mode (a palette index for P), so that converting afterwards gives open_clip's colour.
        right, bottom = p.output[0] - p.offset[0] - width, p.output[1] - p.offset[1] - height
        region = tvf.pad(region, [p.offset[0], p.offset[1], right, bottom], fill=p.fill)
    return np.array(region.convert("RGB"))  # a writable copy: torch refuses to wrap PIL's read-only buffer


def _per_channel(value: float | Sequence[float]) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, Sequence) else (float(value),) * 3


class Preprocessor:
    """Turns bytes into PreparedImage (any thread), and batches of them into model input (device thread)."""

    def __init__(
        self, cfg: PreprocessCfg, *, mode: PreprocessMode, max_pixels: int, exif_orientation: bool = False
    ) -> None:
        self.cfg = cfg
        self.mode: PreprocessMode = mode
        self.max_pixels = max_pixels
        self.exif_orientation = exif_orientation
        self._transform: Callable[[Image.Image], torch.Tensor] = image_transform_v2(cfg, is_train=False)
        self._mean = torch.tensor(_per_channel(cfg.mean), dtype=torch.float32)
        self._std = torch.tensor(_per_channel(cfg.std), dtype=torch.float32)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # built by collate

    def prepare(self, data: bytes) -> PreparedImage:
        """Decode and preprocess one image. Thread-safe. Raises ImageError subclasses only."""
        image = open_image(data, max_pixels=self.max_pixels)
        if self.mode == "exact":
            decoded = load_image(image, exif_orientation=self.exif_orientation)
            pixels = self._transform(decoded.image)
        else:
            decoded = load_image(image, exif_orientation=self.exif_orientation, draft_for=self._resized)
            pixels = torch.from_numpy(fast_pixels(decoded, plan(decoded.width, decoded.height, self.cfg)))
        return PreparedImage(pixels, decoded.width, decoded.height, decoded.format, decoded.scale)

    def output_shape(self) -> tuple[tuple[int, int, int], str]:
        """The shape and numpy dtype of what `prepare` gives (slots.py sizes the decoders' slots by it)."""
        height, width = self._crop_size()
        if self.mode == "exact":
            return (3, height, width), "float32"
        return (height, width, 3), "uint8"

    def _crop_size(self) -> tuple[int, int]:
        return (self.cfg.size, self.cfg.size) if isinstance(self.cfg.size, int) else self.cfg.size

    def _resized(self, size: tuple[int, int]) -> tuple[int, int]:
        return plan(size[0], size[1], self.cfg).resized

    def collate(self, images: Sequence[PreparedImage], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Stack a batch, move it to ``device`` and return the model's input in ``dtype``."""
        pixels = [image.pixels for image in images]
        if all(p.dtype == torch.uint8 for p in pixels):
            batch = gathered(pixels, device)
            mean, std = self._on(device)
            # ToTensor's and Normalize's arithmetic in float32, then one cast: for the same pixels the
            # input is bitwise what exact mode gives. It runs on the (N, H, W, C) batch as it lies and
            # the permute to (N, C, H, W) is a view, so the model gets a channels-last tensor: on the
            # CPU that skips a copy and the forward runs faster (measured in BENCHMARKS.md).
            return batch.to(torch.float32).div_(255).sub_(mean).div_(std).permute(0, 3, 1, 2).to(dtype)
        if all(p.dtype == torch.float32 for p in pixels):
            return torch.stack(pixels).to(device, non_blocking=True).to(dtype)
        raise TypeError("a batch must hold images prepared in one mode")

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std with one value per pixel and channel, laid out as fast mode's (H, W, C) crops,
        on `device`: broadcast over the batch axis only, the arithmetic runs on contiguous memory
        (faster on the CPU than a broadcast over a last axis of 3). Built on first use: a
        preprocessor that never collates (a decoder process's) holds none."""
        if device not in self._constants:
            height, width = self._crop_size()
            mean, std = (c.to(device).expand(height, width, len(c)).contiguous() for c in (self._mean, self._std))
            self._constants[device] = (mean, std)
        return self._constants[device]


def gathered(pixels: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The uint8 batch on `device`, rows in order. Crops prepared on the host are staged and copied in
    one go; crops the device decoded (gpu_decode.py, model.decode) are already there and stacked there."""
    host = [i for i, p in enumerate(pixels) if p.is_cpu]
    if len(host) == len(pixels):
        return staged(pixels, device).to(device, non_blocking=True)
    if not host:
        return torch.stack(list(pixels))
    decoded = [i for i, p in enumerate(pixels) if not p.is_cpu]
    batch = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.uint8, device=device)
    batch[host] = staged([pixels[i] for i in host], device).to(device, non_blocking=True)
    batch[decoded] = torch.stack([pixels[i] for i in decoded])
    return batch


def staged(pixels: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The batch on the host, for a copy to `device`. For CUDA it is stacked straight into page-locked
    memory: the copy then runs asynchronously at full bus speed, and the batch is written once, not
    stacked and then copied again by pin_memory() (a B-32 batch of 256 is 38 MB; the GPU script times
    both). torch's caching host allocator hands the same pinned blocks back batch after batch."""
    if device.type != "cuda":
        return torch.stack(list(pixels))
    first = pixels[0]
    out = torch.empty((len(pixels), *first.shape), dtype=first.dtype, pin_memory=True)
    return torch.stack(list(pixels), out=out)


def preprocess_cfg_from(raw: dict[str, object]) -> PreprocessCfg:
    """A PreprocessCfg from the dict open_clip attaches to a model (``get_model_preprocess_cfg``)."""
    fields = {k: v for k, v in raw.items() if k in PreprocessCfg.__dataclass_fields__}
    cfg = PreprocessCfg(**fields)
    if not isinstance(cfg.size, int) and len(cfg.size) != 2:
        raise ValueError(f"preprocess size {cfg.size!r} is not an int or (h, w)")
    if not all(math.isfinite(s) and s > 0 for s in _per_channel(cfg.std)):
        raise ValueError(f"preprocess std {cfg.std!r} must be positive")
    return cfg
