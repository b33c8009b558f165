"""Untrusted bytes to a decoded image, or a typed ImageError: the one place PIL's errors are translated.

Every object the worker fetches is hostile until decoded: it may be empty, cut short, damaged, a PDF,
an HTML error page, or a small file that claims billions of pixels. Pillow answers each of these with
a different exception (or a warning), some of them plain ``OSError``s told apart only by message; this
module turns all of them into the ``worker.errors`` classes once, so that no caller ever sees a PIL
exception and the dead-letter record says what was wrong with the image.

The decoded image keeps the mode Pillow gave it, because open_clip's transform resizes in that mode
and converts to RGB last; ``worker.engine.modes`` says why and what is changed (high bit depth is
scaled to 8 bits rather than clipped). With ``exif_orientation`` the EXIF orientation is applied
(``worker.engine.orientation``); open_clip does not apply it, so it is off by default.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from worker.engine.modes import for_transform
from worker.engine.orientation import oriented, upright
from worker.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyImage,
    ImageError,
    NotAnImage,
    TruncatedImage,
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

# libjpeg decodes these by reduced DCT (MPO: a phone's multi-picture JPEG). Their EXIF precedes the pixels.
_REDUCED_DCT_FORMATS = frozenset({"JPEG", "MPO"})


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An image in a mode open_clip's transform takes, plus what maps its pixels back to the file's geometry."""

    image: Image.Image
    width: int  # the file's own size (upright, with exif_orientation), before any reduced-DCT decode
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


def load_image(
    image: Image.Image,
    *,
    exif_orientation: bool = False,
    draft_for: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> DecodedImage:
    """Decode an opened image, upright if ``exif_orientation``, in a mode the transform takes.

    With ``draft_for`` (the upright file size to the size the image will be resized to), a JPEG is
    decoded by reduced DCT to no less than that. Animated images (GIF, WebP, APNG) give their first
    frame, as Pillow (and so open_clip) does.
    """
    fmt = image.format or "image"
    scale = 1
    try:
        if fmt not in _REDUCED_DCT_FORMATS:
            image.load()  # first: a PNG may keep its EXIF after the pixels
        turn = upright(image) if exif_orientation else None
        width, height = oriented(image.size, turn)
        if draft_for is not None and fmt in _REDUCED_DCT_FORMATS:
            want = oriented(draft_for((width, height)), turn)  # back to the file's axes
            # Pillow picks the largest libjpeg scale 1/8..1 that keeps both sides >= the request, and
            # answers with the box the whole file covers in decoded pixels: (0, 0, width/s, height/s).
            file_width = image.size[0]
            drafted = image.draft("RGB", (max(1, want[0]), max(1, want[1])))
            if drafted is not None:
                scale = round(file_width / drafted[1][2])
        image.load()
        ready = for_transform(image)
        if turn is not None:
            ready = ready.transpose(turn)
    except ImageError:
        raise
    except _PIL_ERRORS as exc:
        raise _translate(exc, data=None, fmt=fmt) from None
    return DecodedImage(image=ready, width=width, height=height, format=fmt, scale=scale)


def decode_image(data: bytes, *, max_pixels: int, exif_orientation: bool = False) -> DecodedImage:
    """Open, check and fully decode ``data`` at the file's own size."""
    return load_image(open_image(data, max_pixels=max_pixels), exif_orientation=exif_orientation)
