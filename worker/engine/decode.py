"""Untrusted bytes to a decoded RGB image, or a typed ImageError: the one place PIL's errors are translated.

Every object the worker fetches is hostile until decoded: it may be empty, cut short, damaged, a PDF,
an HTML error page, or a small file that claims billions of pixels. Pillow answers each of these with
a different exception (or a warning), some of them plain ``OSError``s told apart only by message; this
module turns all of them into the ``worker.errors`` classes once, so that no caller ever sees a PIL
exception and the dead-letter record says what was wrong with the image.

Colour handling is open_clip's (and the original operator's): whatever Pillow decodes is converted
with ``convert("RGB")``, so alpha is dropped, not composited, and CMYK is converted naively. The one
exception is high-bit-depth greyscale (``I;16``, ``I``, ``F``): ``convert("RGB")`` clips it to white,
which would embed a blank picture, so it is refused instead. EXIF orientation is not applied, because
open_clip's transform does not apply it either.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from worker.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyImage,
    ImageError,
    NotAnImage,
    TruncatedImage,
    UnsupportedImage,
)

# Pillow registers its plugins lazily inside Image.open, mutating module globals; doing it once here,
# at import, keeps that out of the preprocessing threads.
Image.init()

# The formats a photo pipeline meets. The rest of Pillow's plugins (EPS runs Ghostscript, and there are
# dozens of rarely fuzzed parsers) are not offered hostile bytes at all.
ACCEPTED_FORMATS: tuple[str, ...] = tuple(
    name for name in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF") if name in Image.OPEN
)

# Signatures of the accepted formats: bytes that start like one of these but that Pillow cannot parse
# are a damaged image, not a non-image.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)

# What non-images usually are, so that the reason names it (matched against the lower-cased start).
_NON_IMAGE_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"%pdf", "a PDF document"),
    (b"<!doctype html", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"<?xml", "an XML document"),
    (b"<svg", "an SVG drawing (vector images are not rasterised)"),
    (b"pk\x03\x04", "a ZIP archive"),
    (b"{", "JSON or other text"),
)

# convert("RGB") clips these to 0..255 instead of scaling them: the picture would be lost.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An RGB image, plus what is needed to map its pixels back to the file's geometry."""

    image: Image.Image
    width: int  # the file's own size, before any reduced-DCT decode
    height: int
    format: str
    scale: int  # reduced-DCT factor: image.size is the file's size divided by this (1, 2, 4 or 8)


def sniff_format(data: bytes) -> str | None:
    """The accepted format these bytes claim to be by their signature, if any."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return None


def _not_an_image(data: bytes) -> ImageError:
    claimed = sniff_format(data)
    if claimed is not None:
        return CorruptImage(f"{claimed} signature, but the header cannot be parsed")
    head = data[:64].lstrip().lower()
    for magic, what in _NON_IMAGE_HINTS:
        if head.startswith(magic):
            return NotAnImage(f"not an image: {what}")
    return NotAnImage(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS)})")


def _translate(exc: Exception, *, data: bytes | None, fmt: str) -> ImageError:
    """Map whatever Pillow raised while parsing or decoding to the record's ImageError."""
    if isinstance(exc, UnidentifiedImageError) and data is not None:
        return _not_an_image(data)
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return DecompressionBomb(str(exc))
    message = str(exc) or type(exc).__name__
    # Pillow reports a short read as OSError("image file is truncated ...") or OSError("Truncated
    # File Read"); the message is all that tells it from a decoder's "broken data stream".
    if isinstance(exc, OSError) and "truncated" in message.lower():
        return TruncatedImage(f"{fmt} data ends early: {message}")
    return CorruptImage(f"{fmt} data is damaged: {message}")


# What Pillow's parsers and decoders raise on bad input. MemoryError is left out on purpose: the pixel
# limit is checked first, so running out of memory is the process's problem, not this record's.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error,
               ZeroDivisionError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def raise_pillow_limit(max_pixels: int) -> None:
    """Make Pillow's own bomb check (a warning past its limit, an error past twice it) no stricter than ours.

    Pillow's limit is process-wide; it is only ever raised here, at startup, so images the setting
    accepts are never refused by Pillow, and images past it are refused by ``open_image`` with our reason.
    """
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse empty data, non-images and images over ``max_pixels``."""
    if not data:
        raise EmptyImage("zero bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except _PIL_ERRORS as exc:
        raise _translate(exc, data=data, fmt=sniff_format(data) or "image") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"{image.format} header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DecompressionBomb(f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        raise UnsupportedImage(f"mode {image.mode} (high bit depth): converting it to RGB would clip it to white")
    if image.mode in ("L", "P", "RGB") and isinstance(image.info.get("transparency"), bytes):
        # convert("RGB") ignores per-palette-entry alpha anyway and only warns about it; drop it
        # first so the pixels are the same and no warning is raised from a worker thread.
        del image.info["transparency"]
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise UnsupportedImage(f"mode {image.mode} cannot be converted to RGB: {exc}") from None


def load_rgb(image: Image.Image, *, draft_size: tuple[int, int] | None = None) -> DecodedImage:
    """Decode an opened image to RGB; with ``draft_size``, a JPEG is decoded by reduced DCT to no less.

    Animated images (GIF, WebP, APNG) give their first frame, as Pillow (and so open_clip) does.
    """
    fmt = image.format or "image"
    width, height = image.size
    scale = 1
    try:
        if draft_size is not None and fmt in ("JPEG", "MPO"):  # MPO: a phone's multi-picture JPEG
            # Pillow picks the largest libjpeg scale 1/8..1 that keeps both sides >= the request, and
            # answers with the box the whole file covers in decoded pixels: (0, 0, width/s, height/s).
            drafted = image.draft("RGB", (max(1, draft_size[0]), max(1, draft_size[1])))
            if drafted is not None:
                scale = round(width / drafted[1][2])
        image.load()
        rgb = _to_rgb(image)
    except ImageError:
        raise
    except _PIL_ERRORS as exc:
        raise _translate(exc, data=None, fmt=fmt) from None
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, scale=scale)


def decode_rgb(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Open, check and fully decode ``data`` to RGB at the file's own size."""
    return load_rgb(open_image(data, max_pixels=max_pixels))
