"""The engine's face: bytes in (prepare, any thread), embeddings or per-record errors out (embed, one thread).

The streaming runtime and the batch CLI both use this class and nothing else of the engine. It keeps
the original operator's contract (parameters, field name, L2-normalised float32 vectors) but never
writes a fake vector: a record that cannot be embedded gets a typed error with a reason, and the rest
of its batch is embedded anyway. A batch that fails on the device (out of memory, or one input that
breaks the kernel) is split in halves and retried, down to single images, before any record fails.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from worker.config import ModelSettings
from worker.engine.decode import raise_pillow_limit
from worker.engine.gpu_decode import JpegHeader, decode_batch, device_header
from worker.engine.loading import VisionTower, forward, load_vision_tower
from worker.engine.preprocess import PreparedImage, PreprocessMode, Preprocessor
from worker.errors import DeviceFailed, EmbedError, ImageError

logger = logging.getLogger(__name__)

EmbedResult = np.ndarray | EmbedError


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """What `Embedder.prepare_batch` gives: one image or ImageError per input, in order."""

    images: list[PreparedImage | ImageError]
    on_cpu: int  # how many of them the device decoder refused, prepared (or failed) on the CPU instead


class Embedder:
    """A loaded vision tower and its preprocessing. Build it with ``Embedder.load(settings)``."""

    def __init__(self, *, settings: ModelSettings, tower: VisionTower) -> None:
        self.settings = settings
        self.tower = tower
        self.preprocessor = Preprocessor(
            tower.preprocess_cfg,
            mode=settings.preprocess_mode,
            max_pixels=settings.max_image_pixels,
            exif_orientation=settings.exif_orientation,
        )
        self._canary = self.preprocessor.prepare(_canary_png())

    @classmethod
    def load(cls, settings: ModelSettings) -> Embedder:
        """Build the model, keep its vision tower on the device. Raises ConfigError naming a bad setting."""
        raise_pillow_limit(settings.max_image_pixels)
        embedder = cls(settings=settings, tower=load_vision_tower(settings))
        logger.info(
            "embedder ready: field %s, dim %d, batch %d, %s preprocessing, JPEG decode on the %s, normalize=%s",
            embedder.field_name, embedder.dim, embedder.batch_size, embedder.mode,
            "device" if embedder.decodes_on_device else "CPU", settings.normalize,
        )
        return embedder

    @property
    def dim(self) -> int:
        return self.tower.dim

    @property
    def field_name(self) -> str:
        return self.settings.output_field

    @property
    def device(self) -> torch.device:
        return self.tower.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tower.dtype

    @property
    def batch_size(self) -> int:
        return self.settings.inference_batch_size

    @property
    def mode(self) -> PreprocessMode:
        return self.preprocessor.mode

    @property
    def module(self) -> torch.nn.Module:
        return self.tower.module

    @property
    def decodes_on_device(self) -> bool:
        """Whether baseline JPEGs go to `prepare_batch` on the device thread (settings.decode, auto resolved)."""
        decode = self.settings.decode
        if decode == "auto":
            return self.device.type == "cuda" and self.settings.device_decode_serves
        return decode == "gpu"

    def device_header(self, data: bytes) -> JpegHeader | None:
        """The header of a JPEG that `prepare_batch` decodes on the device, else None (`prepare` on the CPU
        takes it). Never raises."""
        return device_header(data, max_pixels=self.preprocessor.max_pixels)

    def prepare(self, data: bytes) -> PreparedImage:
        """Decode and preprocess one image on the CPU. Thread-safe; raises ImageError subclasses."""
        return self.preprocessor.prepare(data)

    def prepare_or_error(self, data: bytes) -> PreparedImage | ImageError:
        try:
            return self.prepare(data)
        except ImageError as exc:
            return exc

    def prepare_batch(
        self, blobs: Sequence[bytes], headers: Sequence[JpegHeader | None] | None = None
    ) -> PreparedBatch:
        """Decode a batch on the device (gpu_decode.py), for the device thread. An image the device path
        does not take, or whose decode fails there, is prepared on the CPU instead, and that verdict is
        the record's: an image nvJPEG refuses but Pillow reads is still embedded, and a bad one gets the
        CPU path's ImageError. A batch over the device's memory is split in halves, down to one image.
        `headers`: each blob's `device_header`, when the caller has read it already."""
        if not blobs:
            return PreparedBatch([], 0)
        try:
            batch = decode_batch(blobs, self.tower.preprocess_cfg, device=self.device,
                                 max_pixels=self.preprocessor.max_pixels, headers=headers)
        except torch.OutOfMemoryError:
            batch = None
        except Exception:  # a decoder's bug on hostile bytes must not stop the worker: the CPU path decides
            logger.warning("device JPEG decode of a batch of %d raised: preparing it on the CPU", len(blobs),
                           exc_info=True)
            return PreparedBatch([self.prepare_or_error(data) for data in blobs], len(blobs))
        if batch is None:  # outside the except block, as in _embed_or_split: the traceback holds tensors
            torch.cuda.empty_cache()
            if len(blobs) == 1:
                return PreparedBatch([self.prepare_or_error(blobs[0])], 1)
            half = len(blobs) // 2
            first = self.prepare_batch(blobs[:half], headers[:half] if headers is not None else None)
            second = self.prepare_batch(blobs[half:], headers[half:] if headers is not None else None)
            return PreparedBatch(first.images + second.images, first.on_cpu + second.on_cpu)
        out: dict[int, PreparedImage | ImageError] = {i: batch.prepared(row) for row, i in enumerate(batch.rows)}
        for index in batch.errors:
            out[index] = self.prepare_or_error(blobs[index])
        return PreparedBatch([out[index] for index in range(len(blobs))], len(batch.errors))

    def embed(self, images: Sequence[PreparedImage]) -> list[EmbedResult]:
        """One float32 (dim,) vector or one EmbedError per image, in order. Call from one thread."""
        results: list[EmbedResult] = []
        for start in range(0, len(images), self.batch_size):
            results.extend(self._embed_or_split(images[start : start + self.batch_size]))
        return results

    def _embed_or_split(self, images: Sequence[PreparedImage]) -> list[EmbedResult]:
        if not images:
            return []
        try:
            return self._embed_batch(images)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one; so are CUDA and kernel errors
            out_of_memory = isinstance(exc, torch.OutOfMemoryError)
            reason = "device out of memory" if out_of_memory else f"device error: {exc}"
        # Retry outside the except block: the traceback holds the failed batch's tensors, which must be
        # released before the halves can fit.
        if out_of_memory and self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(images) == 1:
            if not self._device_healthy():
                raise DeviceFailed(f"{reason}, and a known-good image fails too: the device is in a bad state")
            logger.warning("embedding failed for a single image: %s", reason)
            return [EmbedError(f"{reason} (single image)")]
        logger.warning("batch of %d failed (%s): retrying as two halves", len(images), reason)
        half = len(images) // 2
        return self._embed_or_split(images[:half]) + self._embed_or_split(images[half:])

    def _device_healthy(self) -> bool:
        """Whether a known-good image (mid-grey, prepared like any other) still embeds: told apart,
        an image that breaks the kernel alone is that record's failure, a broken device is not."""
        try:
            return all(isinstance(r, np.ndarray) for r in self._embed_batch([self._canary]))
        except RuntimeError:
            return False

    def _embed_batch(self, images: Sequence[PreparedImage]) -> list[EmbedResult]:
        with torch.inference_mode():
            inputs = self.preprocessor.collate(images, device=self.device, dtype=self.dtype)
            features = forward(self.module, inputs).float()  # everything after the tower in fp32
            norms = features.norm(dim=-1, keepdim=True)
            if self.settings.normalize:
                features = features / norms
            host = torch.cat((features, norms), dim=1).cpu().numpy()  # one copy back (and one sync) per batch
        vectors, norms_host = host[:, :-1], host[:, -1]
        results: list[EmbedResult] = []
        for vector, norm in zip(vectors, norms_host, strict=True):
            if norm == 0.0:
                results.append(EmbedError("zero embedding: it cannot be normalised"))
            elif not np.isfinite(norm) or not np.isfinite(vector).all():
                results.append(EmbedError(f"non-finite embedding (overflow in {self.dtype}?)"))
            else:
                results.append(vector.copy())  # an independent (dim,) array, not a view of the batch
        return results


def _canary_png() -> bytes:
    """A small gradient: an input every model embeds to a finite, non-zero vector."""
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "PNG")
    return out.getvalue()
