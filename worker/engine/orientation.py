"""EXIF orientation, read where and as ``PIL.ImageOps.exif_transpose`` reads it, but without Pillow's EXIF parser.

Cameras and phones store the sensor's pixels as they came and record in the EXIF Orientation tag how to
turn them upright. open_clip's transform never looks at it, so the worker applies it only when the
``exif_orientation`` setting is on (off by default, so that exact mode stays open_clip's, bit for bit).

Pillow's ``getexif()``, which ``exif_transpose`` uses, warns on damaged EXIF ("Possibly corrupt EXIF
data", "Tag data larger than file", "Metadata Warning") and raises SyntaxError on a bad TIFF header. A
warning must not leave a preprocessing thread, and ``warnings.catch_warnings`` is not thread-safe on
Python 3.11, so this module reads the one tag itself, with ``struct``, from the places Pillow looks
and in its order: the EXIF block (``info["exif"]``: JPEG APP1, PNG eXIf, WebP, AVIF), PNG's "Raw profile
type exif" text, and when neither has the tag, XMP's ``tiff:Orientation``. EXIF it cannot read counts
as no orientation. TIFF needs nothing here: Pillow's TIFF loader turns the image itself and drops the
tag (so open_clip sees TIFFs upright too, whatever the setting).
"""

from __future__ import annotations

import math
import re
import struct

from PIL import Image

ORIENTATION_TAG = 0x0112

# ImageOps.exif_transpose's table: orientation value to the transpose that makes the image upright.
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
                         Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90})

# The TIFF field types Pillow reads: (bytes per value, struct code). Pillow gives BYTE, ASCII and
# UNDEFINED (code None) as bytes or text, which equal no orientation; RATIONALs (two codes) and floats
# equal one when they are whole numbers. Types not listed here are skipped.
_FIELD_TYPES: dict[int, tuple[int, str | None]] = {
    1: (1, None), 2: (1, None), 3: (2, "H"), 4: (4, "L"), 5: (8, "LL"), 6: (1, "b"), 7: (1, None),
    8: (2, "h"), 9: (4, "l"), 10: (8, "ll"), 11: (4, "f"), 12: (8, "d"), 13: (4, "L"), 16: (8, "Q"),
}
_BYTE_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}


def _whole(values: tuple[float, ...]) -> int | None:
    """A field's first value (a number, or a numerator and denominator) if it is a whole number."""
    number = float(values[0]) if len(values) == 1 else values[0] / values[1] if values[1] else math.nan
    return int(number) if number.is_integer() else None


def _ifd0_orientation(tiff: bytes) -> int | None:
    """The Orientation tag of a TIFF structure's first IFD, as Pillow 13's IFD loader reads it.

    Its rules, followed here: the first stored entry of a tag wins; entries of an unknown type or with
    no data are skipped, and so is one after which all out-of-line data would outgrow the block; data
    that lies past the end, or an IFD cut short, ends the reading.
    """
    order = _BYTE_ORDERS.get(tiff[:4])
    if order is None:
        return None
    stored: set[int] = set()
    out_of_line = 0
    try:
        (offset,) = struct.unpack_from(order + "L", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for entry in range(offset + 2, offset + 2 + 12 * count, 12):
            tag, kind, n, values = struct.unpack_from(order + "HHL4s", tiff, entry)
            if tag in stored or kind not in _FIELD_TYPES:
                continue
            unit, code = _FIELD_TYPES[kind]
            if n * unit > 4:  # the values are elsewhere; the field holds their offset
                (at,) = struct.unpack_from(order + "L", values)
                out_of_line += n * unit
                if out_of_line > len(tiff):
                    continue
                if at + n * unit > len(tiff):
                    return None  # Pillow's read fails there and it stops reading the IFD
                values = tiff[at : at + n * unit]
            if n == 0:
                continue
            stored.add(tag)
            if tag == ORIENTATION_TAG:
                return _whole(struct.unpack_from(order + code, values)) if code else None
    except struct.error:  # an IFD cut short ends the reading too
        pass
    return None


def _exif_block(image: Image.Image) -> bytes | None:
    exif = image.info.get("exif")
    if isinstance(exif, bytes):
        return re.sub(b"^(Exif\x00\x00){1,2}", b"", exif)
    raw = image.info.get("Raw profile type exif")
    if isinstance(raw, str):
        try:
            return bytes.fromhex("".join(raw.split("\n")[3:]))
        except ValueError:
            return None
    return None


def _xmp_orientation(image: Image.Image) -> int | None:
    xmp = image.info.get("XML:com.adobe.xmp") or image.info.get("xmp")
    match: re.Match[str] | re.Match[bytes] | None = None
    if isinstance(xmp, str):
        match = re.search(r'tiff:Orientation(="|>)([0-9])', xmp)
    elif isinstance(xmp, bytes):
        match = re.search(rb'tiff:Orientation(="|>)([0-9])', xmp)
    return int(match[2]) if match else None


def upright(image: Image.Image) -> Image.Transpose | None:
    """The transpose ``exif_transpose`` would apply to ``image``, if any.

    For a PNG, call it after ``load()``: an eXIf chunk may follow the pixels, as Pillow's getexif knows.
    """
    block = _exif_block(image)
    value = _ifd0_orientation(block) if block else None
    if value is None:
        value = _xmp_orientation(image)
    return _UPRIGHT.get(value) if value is not None else None


def oriented(size: tuple[int, int], turn: Image.Transpose | None) -> tuple[int, int]:
    """``size`` (w, h) after ``turn``: swapped by the quarter turns and transposes."""
    return (size[1], size[0]) if turn in _SWAPS_AXES else size
