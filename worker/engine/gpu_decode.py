"""Baseline JPEGs decoded as a batch on the device (nvJPEG, inside torchvision), resized and cropped there.

Why: on a 16-core host the CPU decode is the wall for the small towers (ViT-B-32 wants far more
images per second than the cores decode); torchvision ships nvJPEG, which decodes a list of baseline
JPEGs in one call. Resize and crop then run on the device as well, so the CPU only reads headers.

What goes here: ``baseline_header`` says, from the bytes alone and without raising, whether a file is
a JPEG this path takes: one baseline or extended sequential Huffman scan (SOF0/SOF1), 8-bit, 1 or 3
YCbCr components, ending in EOI. Anything else (progressive, CMYK, RGB-coded, 12-bit, truncated, not a
JPEG) belongs to the CPU path, which gives each its own ImageError. EXIF orientation is not applied
here (open_clip does not apply it either); a caller with that setting on keeps the CPU path.

Geometry: ``preprocess.plan`` (open_clip's eval transform as numbers) for each source size; the resize
is antialiased bicubic or bilinear as the plan says (``interpolate(..., antialias=True)``, the same
filter as Pillow's), in float32, then rounded to uint8. The result is uint8 (N, 3, H, W) on the device:
fast mode's pixels, channels first. Decodes of one size are resized together.

Errors: the batched decoder raises for the whole list when one image fails. The list is then split in
halves and each half retried, down to single images, so k bad images cost about 2k·log2(n) extra calls
and every good image of the batch still comes back; the single image that fails is that record's
CorruptImage (TruncatedImage when the decoder says so). On the CPU (``device="cpu"``) the same calls go
to torchvision's libjpeg-turbo decoder, which is how the tests run this code.

The decoder is reached through ``torch.ops.image``, the two calls ``torchvision.io.decode_jpeg`` makes
(same signature in torchvision 0.19 to 0.29): since 0.29 the public function warns on every call,
which is an error under the tests' warning filter and cannot be silenced per call thread-safely.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torchvision.io  # noqa: F401  # loads torchvision's image library, which registers torch.ops.image
from open_clip.transform import PreprocessCfg
from PIL import Image

from worker.engine.preprocess import Plan, PreparedImage, plan
from worker.errors import CorruptImage, DecompressionBomb, ImageError, TruncatedImage, UnsupportedImage

_RGB = 3  # torchvision.io.ImageReadMode.RGB.value: grey decodes to three equal channels
_CHUNK = 64  # images resized at once: bounds the float32 temporaries (64 x 1600 x 1200 x 3 x 4 = 1.5 GB)
_OTHER_SOF = frozenset({0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})  # progressive, lossless...
_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and the restart markers


@dataclass(frozen=True, slots=True)
class JpegHeader:
    width: int
    height: int
    components: int


ReadHeader = Callable[[bytes], JpegHeader | None]  # device_header, bound to a pixel limit


def baseline_header(data: bytes) -> JpegHeader | None:
    """The frame of a JPEG the device path takes, or None for anything else. Never raises."""
    if not data.startswith(b"\xff\xd8"):
        return None
    header, adobe_rgb, pos, end = None, False, 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = data[pos + 4 : pos + 2 + length]
        if length < 2 or pos + 2 + length > end:
            return None
        if marker in (0xC0, 0xC1):
            if header is not None or len(body) < 6:
                return None
            precision, height, width, components = struct.unpack(">BHHB", body[:6])
            ids = body[6 : 6 + 3 * components : 3]  # libjpeg reads ids R, G, B as RGB-coded, not YCbCr
            if precision != 8 or not height or not width or components not in (1, 3) or ids == b"RGB":
                return None
            if len(body) < 6 + 3 * components:  # the frame header is cut short
                return None
            header = JpegHeader(width, height, components)
        elif marker in _OTHER_SOF or marker == 0xD9:
            return None
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe_rgb = body[11] == 0  # transform 0: the three components are R, G, B, not YCbCr
        elif marker == 0xDA:
            single_scan = _first_marker(data, pos + 2 + length) == 0xD9
            return header if header is not None and single_scan and not (adobe_rgb and header.components == 3) else None
        pos += 2 + length
    return None


def device_header(data: bytes, *, max_pixels: int) -> JpegHeader | None:
    """The header of a JPEG that ``decode_batch`` will try (a baseline JPEG within the pixel limit), else
    None. Never raises. The fetch threads read it, and hand it on so that the device thread need not."""
    header = baseline_header(data)
    return header if header is not None and header.width * header.height <= max_pixels else None


def _first_marker(data: bytes, start: int) -> int | None:
    """The first marker after entropy-coded data that begins at `start`: EOI (0xD9) ends a single-scan JPEG,
    anything else (a second scan, its tables) means more scans; None for data cut before any marker. In
    entropy-coded data 0xFF is followed by 0x00 (stuffing), a restart marker or more 0xFF (fill), so this
    finds the scan's end; bytes after it (an MPO's second picture, say) are not read. In numpy: the
    fetch threads run this for every record, and ``bytes.find`` of two bytes holds the GIL for several
    times as long (measured in BENCHMARKS.md)."""
    body = np.frombuffer(data, dtype=np.uint8, offset=min(start, len(data)))
    after = body[1:][body[:-1] == 0xFF]  # the byte after each 0xFF
    markers = after[(after != 0x00) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]
    return int(markers[0]) if len(markers) else None


@dataclass(frozen=True, slots=True)
class DeviceBatch:
    """Model input for the images that decoded, in input order, and an error for each that did not."""

    pixels: torch.Tensor  # uint8 (len(rows), 3, H, W) on the device
    rows: tuple[int, ...]  # the input position of each row of pixels
    sizes: tuple[tuple[int, int], ...]  # each row's source (width, height), for the output record
    errors: dict[int, ImageError] = field(default_factory=dict)

    def prepared(self, row: int) -> PreparedImage:
        """Row `row` as fast mode's PreparedImage: uint8 (H, W, 3), a view of the batch on the device."""
        width, height = self.sizes[row]
        return PreparedImage(self.pixels[row].permute(1, 2, 0), width, height, "JPEG", 1)


def decode_batch(
    blobs: Sequence[bytes], cfg: PreprocessCfg, *, device: torch.device, max_pixels: int,
    headers: Sequence[JpegHeader | None] | None = None,
) -> DeviceBatch:
    """Decode, resize and crop a batch of baseline JPEGs. `headers`: each blob's ``baseline_header``,
    read already (the fetch threads read it, so the device thread is spared the parse)."""
    errors: dict[int, ImageError] = {}
    todo: list[int] = []
    for i, data in enumerate(blobs):
        header = headers[i] if headers is not None else baseline_header(data)
        if header is None:
            errors[i] = UnsupportedImage("not a baseline JPEG: the caller routes it to the CPU path")
        elif header.width * header.height > max_pixels:
            errors[i] = DecompressionBomb(f"{header.width}x{header.height} pixels, over the limit of {max_pixels}")
        else:
            todo.append(i)
    decoded = _decode_or_split([torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in todo], device)
    images: dict[int, torch.Tensor] = {}
    for i, result in zip(todo, decoded, strict=True):
        if isinstance(result, ImageError):
            errors[i] = result
        else:
            images[i] = result
    rows = tuple(images)
    target_h, target_w = (cfg.size, cfg.size) if isinstance(cfg.size, int) else cfg.size
    pixels = torch.empty((len(rows), 3, target_h, target_w), dtype=torch.uint8, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for row, i in enumerate(rows):
        by_size.setdefault((int(images[i].shape[1]), int(images[i].shape[2])), []).append(row)
    for (height, width), same in by_size.items():
        for start in range(0, len(same), _CHUNK):
            chunk = same[start : start + _CHUNK]
            _resize_into(pixels, chunk, torch.stack([images[rows[r]] for r in chunk]), plan(width, height, cfg))
    sizes = tuple((int(images[i].shape[2]), int(images[i].shape[1])) for i in rows)
    return DeviceBatch(pixels, rows, sizes, errors)


def _resize_into(out: torch.Tensor, rows: list[int], batch: torch.Tensor, p: Plan) -> None:
    """open_clip's resize, then crop or pad, of same-size decodes ``batch`` into ``out[rows]``."""
    height, width = batch.shape[2], batch.shape[3]
    resized = batch
    if p.resized != (width, height):  # torchvision's Resize leaves a same-size image alone
        mode = "bilinear" if p.resample == Image.Resampling.BILINEAR else "bicubic"
        size = (p.resized[1], p.resized[0])
        scaled = torch.nn.functional.interpolate(batch.float(), size=size, mode=mode, align_corners=False,
                                                 antialias=True)
        resized = scaled.round_().clamp_(0, 255).to(torch.uint8)
    left, top, crop_w, crop_h = p.region
    region = resized[:, :, top : top + crop_h, left : left + crop_w]
    index = torch.tensor(rows, device=out.device)
    if (crop_w, crop_h) == p.output:
        out.index_copy_(0, index, region)
        return
    canvas = torch.full((len(rows), *out.shape[1:]), p.fill, dtype=torch.uint8, device=out.device)
    x, y = p.offset
    canvas[:, :, y : y + crop_h, x : x + crop_w] = region
    out.index_copy_(0, index, canvas)


def _decode_or_split(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | ImageError]:
    if not tensors:
        return []
    try:
        return list(_decode(tensors, device))
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError):
            raise  # not the images' fault: the caller frees memory or splits the batch
        if len(tensors) == 1:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            message = re.sub(r"^.*\.(cpp|cu|h):\d+,\s*", "", lines[-1])[:300]  # torchvision's "fn, file:line, "
            error = TruncatedImage if "truncat" in message.lower() else CorruptImage
            return [error(f"device JPEG decoder: {message}")]
    half = len(tensors) // 2
    return _decode_or_split(tensors[:half], device) + _decode_or_split(tensors[half:], device)


def _decode(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    ops = cast(Any, torch.ops.image)
    if device.type == "cuda":
        # torchvision allocates the outputs on our stream but decodes on one of its own without waiting
        # for ours, so a block that kernels queued on ours still read can be overwritten (pytorch/vision
        # PR 9606, closed unmerged). Ours is idle after the previous batch's copy back; this makes sure.
        torch.cuda.current_stream(device).synchronize()
        return cast(list[torch.Tensor], ops.decode_jpegs_cuda(tensors, _RGB, device))
    return [cast(torch.Tensor, ops.decode_jpeg(t, _RGB, False)).to(device) for t in tensors]
