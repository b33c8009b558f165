"""A decoded image in a mode open_clip's transform can take, with the pixels it would get from open_clip.

open_clip's eval transform resizes and crops the image in whatever mode Pillow decoded it to and only
then calls ``convert("RGB")`` (``MaybeConvertMode`` comes after ``Resize``/``CenterCrop``). So the mode
is part of the result: Pillow resizes ``P`` and ``1`` images with NEAREST whatever filter is asked for,
``LA``/``RGBA`` with premultiplied alpha (fully transparent pixels come out black), and ``CMYK`` per ink
channel before the naive conversion. Converting to RGB first, as this worker once did, gives other
pixels (cosine 0.76 to 0.99 on the test variants). So images keep their mode here, and both modes
resize, crop and pad in it and convert last.

Three things are changed before the transform, none of which open_clip handles:

* ``info["transparency"]`` is dropped. ``convert("RGB")`` never uses it for the pixels, but for a
  palette image with per-entry alpha (PNG tRNS, GIF) it warns, and a warning must not leave a worker
  thread (``warnings.catch_warnings`` is not thread-safe on Python 3.11). Same pixels, no warning.
* High bit depth greyscale (16-bit PNG and TIFF: ``I;16``, ``I;16B``, ...; 32-bit TIFF: ``I``, ``F``)
  is scaled to 8 bits. ``convert("RGB")`` clips it (65535 to 255, 0.5 to 0), which embeds a white or
  black picture. ``I;16*``: its full range, v * 255 / 65535 rounded. ``I``: the same when every value
  is in 0..65535 (16-bit data decoded as 32-bit), otherwise the image's own min..max to 0..255.
  ``F``: v * 255 rounded when every finite value is in 0..1 (the float-image convention), otherwise
  the image's own finite min..max; NaN and infinities become 0. A constant image outside those ranges
  becomes 0. The result is mode ``L``, so open_clip sees an ordinary greyscale image.
* Modes no decoder of an accepted format produces and ``convert("RGB")`` may not handle (``La``,
  ``RGBa``, anything new) are refused, so that the transform itself cannot fail on a mode.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from worker.errors import UnsupportedImage

# What the transform takes as it is: Pillow converts each of these to RGB.
TRANSFORM_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
HIGH_DEPTH_MODES = SIXTEEN_BIT_MODES | {"I", "F"}

_SIXTEEN_BIT_MAX = 65535
# v * 255 / 65535 rounded, for every 16-bit value: one byte per pixel out, no wide temporaries.
_SIXTEEN_TO_EIGHT = ((np.arange(_SIXTEEN_BIT_MAX + 1, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretched(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low..high`` to 0..255, rounded; a constant image (high == low) gives 0."""
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def eight_bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth greyscale image (``HIGH_DEPTH_MODES``) scaled to mode ``L`` by its mode's range."""
    values = np.asarray(image)
    if image.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(_SIXTEEN_TO_EIGHT[values])
    if image.mode == "I":
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= _SIXTEEN_BIT_MAX:
            return Image.fromarray(_SIXTEEN_TO_EIGHT[values])
        return Image.fromarray(_stretched(values, low, high))
    if image.mode == "F":
        finite = np.isfinite(values)
        known = values[finite]
        lowest, highest = (float(known.min()), float(known.max())) if known.size else (0.0, 0.0)
        if lowest >= 0.0 and highest <= 1.0:
            lowest, highest = 0.0, 1.0
        out = _stretched(np.where(finite, values, lowest), lowest, highest)
        out[~finite] = 0
        return Image.fromarray(out)
    raise UnsupportedImage(f"mode {image.mode} is not a high bit depth greyscale mode")


def for_transform(image: Image.Image) -> Image.Image:
    """The loaded ``image`` in a mode open_clip's transform takes, pixels as open_clip would see them.

    Raises UnsupportedImage for a mode it cannot take. May drop ``image.info["transparency"]``.
    """
    # Only the conversion to RGB reads it, and only to carry it over (or to warn).
    image.info.pop("transparency", None)
    if image.mode in TRANSFORM_MODES:
        return image
    if image.mode in HIGH_DEPTH_MODES:
        return eight_bit(image)
    raise UnsupportedImage(f"mode {image.mode} cannot be converted to RGB")
