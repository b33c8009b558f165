"""A corpus of real photos as JPEG bytes, built from scikit-image's bundled images; no download, no files.

Fidelity and throughput must be judged on photographs (smooth gradients, texture, noise, real JPEG
artefacts), not on synthetic patterns. scikit-image ships a handful inside its wheel; each is resized
to 640, 1024 and 1600 px on its long side (a typical spread for web and phone images) and encoded at
quality 85 and 95. The same inputs give the same bytes on every call (same Pillow and libjpeg).
Functions whose data needs a download (skimage's pooch fetches) are not used.
"""

from __future__ import annotations

import functools
import io
import itertools
import struct
import zlib

import numpy as np
from PIL import Image

from worker.errors import (
    CorruptImage,
    DecompressionBomb,
    EmptyImage,
    ImageError,
    NotAnImage,
    TruncatedImage,
    UnsupportedImage,
)

PHOTO_NAMES: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "motorcycle",
    "retina",
    "immunohistochemistry",
)
LONG_SIDES: tuple[int, ...] = (640, 1024, 1600)
QUALITIES: tuple[int, ...] = (85, 95)


def source_photo(name: str) -> np.ndarray:
    """One bundled photo as an (H, W, 3) uint8 array."""
    import skimage.data  # imported here: only the corpus needs scikit-image

    if name == "motorcycle":
        left, _right, _disparity = skimage.data.stereo_motorcycle()
        return np.asarray(left)
    array = np.asarray(getattr(skimage.data, name)())
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is not an RGB uint8 photo")
    return array


def encode_jpeg(image: Image.Image, *, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)  # Pillow's defaults otherwise: baseline, 4:2:0 chroma
    return out.getvalue()


def resize_long_side(image: Image.Image, long_side: int) -> Image.Image:
    width, height = image.size
    factor = long_side / max(width, height)
    return image.resize((round(width * factor), round(height * factor)), Image.Resampling.LANCZOS)


@functools.cache
def _corpus(names: tuple[str, ...], long_sides: tuple[int, ...], qualities: tuple[int, ...]) -> tuple[
    tuple[str, bytes], ...
]:
    items = []
    for name in names:
        source = Image.fromarray(source_photo(name))
        for long_side in long_sides:
            resized = resize_long_side(source, long_side)
            for quality in qualities:
                items.append((f"{name}-{long_side}px-q{quality}.jpg", encode_jpeg(resized, quality=quality)))
    return tuple(items)


def photo_corpus(
    *,
    names: tuple[str, ...] = PHOTO_NAMES,
    long_sides: tuple[int, ...] = LONG_SIDES,
    qualities: tuple[int, ...] = QUALITIES,
) -> list[tuple[str, bytes]]:
    """[(file name, JPEG bytes)]: every photo at every size and quality (48 by default, ~5 MB)."""
    return list(_corpus(names, long_sides, qualities))


def photo_jpegs(n: int) -> list[bytes]:
    """``n`` JPEGs from the corpus, cycling through it (for streaming tests and demos)."""
    return [data for _name, data in itertools.islice(itertools.cycle(photo_corpus()), n)]


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, followed by almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0) patched to claim width x height: a bomb with a tiny body."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


@functools.cache
def _variants() -> tuple[tuple[str, bytes], ...]:
    photo = resize_long_side(Image.fromarray(source_photo("chelsea")), 400)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = bytes(range(0, 256, 4))  # per-entry alpha: the case Pillow warns about
    frames = [photo.rotate(angle) for angle in (0, 90, 180)]
    animated = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return (
        ("progressive.jpg", _encode(photo, "JPEG", quality=90, progressive=True)),
        ("multi-picture.mpo", _encode(photo, "MPO", save_all=True, append_images=[frames[1]], quality=90)),
        ("grey.jpg", _encode(photo.convert("L"), "JPEG", quality=90)),
        ("cmyk.jpg", _encode(photo.convert("CMYK"), "JPEG", quality=90)),
        ("rgb.png", _encode(photo, "PNG")),
        ("rgba.png", _encode(rgba, "PNG")),
        ("grey-alpha.png", _encode(rgba.convert("LA"), "PNG")),
        ("palette-transparency.png", _encode(palette, "PNG")),
        ("bilevel.png", _encode(photo.convert("1"), "PNG")),
        ("animated.gif", animated),
        ("lossy.webp", _encode(photo, "WEBP", quality=90)),
        ("image.bmp", _encode(photo, "BMP")),
        ("image.tiff", _encode(photo, "TIFF")),
        ("portrait.png", _encode(photo.transpose(Image.Transpose.ROTATE_90), "PNG")),
        ("small.png", _encode(photo.resize((150, 100)), "PNG")),  # upscaled by the transform
        ("tall-strip.png", _encode(photo.resize((40, 400)), "PNG")),
    )


def variant_images() -> dict[str, bytes]:
    """Valid images in other formats, modes and shapes than the photo corpus (all decodable)."""
    return dict(_variants())


def bad_images() -> dict[str, tuple[bytes, type[ImageError]]]:
    """Bytes that must fail to decode, each with the ImageError it must give (and nothing else)."""
    jpeg = encode_jpeg(resize_long_side(Image.fromarray(source_photo("coffee")), 300), quality=90)
    dht = jpeg.index(b"\xff\xc4")
    grey16 = Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16))
    return {
        "empty": (b"", EmptyImage),
        "jpeg-cut-in-half": (jpeg[: len(jpeg) // 2], TruncatedImage),
        "jpeg-cut-in-header": (jpeg[:120], TruncatedImage),
        "jpeg-bad-huffman-table": (jpeg[: dht + 4] + b"\xff" * 40 + jpeg[dht + 44 :], CorruptImage),
        "png-bad-checksum": (_flip_byte(_encode(Image.open(io.BytesIO(jpeg)), "PNG"), 60), CorruptImage),
        "pdf": (b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n", NotAnImage),
        "html": (b"<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n", NotAnImage),
        "random-bytes": (np.random.default_rng(0).bytes(4096), NotAnImage),
        "grey-16-bit.png": (_encode(grey16, "PNG"), UnsupportedImage),
        "bomb-png-400mp": (_png_header_only(20_000, 20_000), DecompressionBomb),
        "bomb-jpeg-72mp": (_jpeg_claiming(jpeg, 9_000, 8_000), DecompressionBomb),
    }


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
