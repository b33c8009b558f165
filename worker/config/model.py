"""The model section: the embedding engine, with the original operator's names and defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from worker.config import rules
from worker.config.rules import Section

# The device path gives fast mode's uint8 crops to the device thread of this process, upright as the
# file stores them: it cannot serve exact mode, decoder processes, or EXIF orientation.
_DEVICE_DECODE_NEEDS: dict[str, object] = {
    "preprocess_mode": "fast", "preprocess_in": "threads", "exif_orientation": False,
}


# A bucket name as S3 allows it (3-63 lower-case letters, digits, dots, dashes), then the key of an object
# (no control characters; not a prefix ending in /).
_WEIGHTS_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f/])")


def parse_weights_uri(value: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://bucket/key`` model.pretrained, or None when it is not one."""
    match = _WEIGHTS_URI.fullmatch(value)
    return None if match is None else (match["bucket"], match["key"])


def _device_decode_clashes(values: Mapping[str, object]) -> list[str]:
    """The settings among `values` that keep the device from decoding JPEGs, as name=value."""
    return [f"{name}={values[name]}" for name, needed in _DEVICE_DECODE_NEEDS.items()
            if values.get(name, needed) != needed]


class ModelSettings(Section):
    """The embedding engine. Names and defaults are those of the original operator."""

    model_name: str = Field("ViT-B-32", description="OpenCLIP model name, or an hf-hub: name.")
    pretrained: str = Field(
        "openai",
        description='OpenCLIP pretrained tag, a local checkpoint path, an s3://bucket/key checkpoint (read with '
        'the s3 settings\' endpoint, region and credentials, cached under cache_dir), or "none" (random weights).',
    )
    weights_sha256: str | None = Field(
        None,
        description="SHA-256 (64 hex digits) the checkpoint file must have; checked before loading. With an s3:// "
        "pretrained it also lets a start reuse the cached copy without asking S3.",
    )
    device: str = Field("auto", description='"auto" (CUDA, then MPS, then CPU), "cuda", "cuda:N", "mps" or "cpu".')
    normalize: bool = Field(True, description="L2-normalise each embedding to unit length.")
    feature_field_name: str | None = Field(
        None, description="Name of the embedding field in the output record; derived from model_name when unset."
    )
    inference_batch_size: int = Field(32, ge=1, le=4096, description="Images per device batch.")
    use_fp16: bool = Field(True, description="Half precision weights and inputs; applies on CUDA devices only.")
    half_dtype: Literal["float16", "bfloat16"] = Field(
        "float16", description="Which half precision use_fp16 selects on CUDA."
    )
    preprocess_workers: int = Field(
        4, ge=1, le=256, description="Threads (or, with preprocess_in=processes, processes) that decode and preprocess."
    )
    preprocess_in: Literal["threads", "processes"] = Field(
        "threads",
        description="threads: fetch and preprocess on threads of the worker process (one GIL). processes: "
        "preprocess_workers decoder processes fetch and preprocess, s3.fetch_workers threads shared among them.",
    )
    preprocess_mode: Literal["fast", "exact"] = Field(
        "fast",
        description="exact: open_clip's own eval transform, bit for bit. "
        "fast: reduced-DCT JPEG decode, uint8 crop on the CPU, normalisation on the device.",
    )
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Images with more pixels are rejected before the full decode."
    )
    exif_orientation: bool = Field(
        False,
        description="Turn each image upright by its EXIF orientation first (as PIL's exif_transpose). "
        "open_clip does not, so exact mode is open_clip's only while this is off.",
    )
    decode: Literal["cpu", "gpu", "auto"] = Field(
        "cpu",
        description="Where JPEGs are decoded. cpu: the preprocess threads or processes. gpu: baseline JPEGs in "
        "batches on the model's device (nvJPEG on CUDA), resized and cropped there; other images, and any the "
        "device decoder refuses, on the CPU. Needs preprocess_mode=fast, preprocess_in=threads and "
        "exif_orientation off. auto: gpu where the device is CUDA and those hold, else cpu.",
    )
    decode_journal_dir: Annotated[Path, AfterValidator(rules.folder_to_be)] = Field(
        Path("/tmp/clip-worker-device-journal"),
        description="While JPEGs are decoded on the device: where the worker notes which records the device "
        "is decoding, so that records that were there when a worker crashed are decoded on the CPU when they "
        "come again, not crash it again. Must outlive a restart of the worker (the chart's /tmp does).",
    )
    model_config_dir: Annotated[Path, AfterValidator(rules.existing_folder)] | None = Field(
        None, description="A folder (or file) of extra OpenCLIP model configs (JSON) to register before loading."
    )
    cache_dir: Annotated[Path, AfterValidator(rules.folder_to_be)] | None = Field(
        None,
        description="Where pretrained weights are downloaded and looked for: OpenCLIP tags (Hugging Face hub cache "
        "layout; unset: the hub's default) and s3:// checkpoints (under weights/; unset: ~/.cache/clip-worker).",
    )

    @field_validator("pretrained")
    @classmethod
    def _where_the_weights_are(cls, value: str) -> str:
        if value.strip().lower().startswith("s3:") and parse_weights_uri(value.strip()) is None:
            raise ValueError("an s3 checkpoint must look like s3://bucket/key (a bucket name, then a key)")
        return rules.checkpoint_file(value)

    @field_validator("weights_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
            raise ValueError("must be a SHA-256 digest: 64 hexadecimal digits")
        return value.strip().lower()

    @field_validator("feature_field_name")
    @classmethod
    def _legal_avro_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("must be a legal Avro field name: [A-Za-z_][A-Za-z0-9_]*")
        return value

    @field_validator("decode")
    @classmethod
    def _device_decode_possible(cls, value: str, info: ValidationInfo) -> str:
        wrong = _device_decode_clashes(info.data)
        if value == "gpu" and wrong:
            raise ValueError(f"gpu decodes fast mode's crops on the device thread: not with {', '.join(wrong)}")
        return value

    @property
    def device_decode_serves(self) -> bool:
        """Whether the other settings let the device decode JPEGs (what decode=auto asks besides CUDA)."""
        return not _device_decode_clashes({name: getattr(self, name) for name in _DEVICE_DECODE_NEEDS})

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError('must be "auto", "cpu", "mps", "cuda" or "cuda:N"')
        return value

    @property
    def output_field(self) -> str:
        """The embedding field's name: set, or ``image_clip_emb_`` + the model name made Avro-legal."""
        if self.feature_field_name:
            return self.feature_field_name
        return "image_clip_emb_" + re.sub(r"[^a-z0-9_]", "_", self.model_name.lower())
