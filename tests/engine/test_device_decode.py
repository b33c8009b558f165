"""Embedder.prepare_batch, the device thread's decode (model.decode): run here on the CPU through the
same calls as on CUDA (gpu_decode.py). Whatever the device decoder cannot take or read goes to the CPU
path, whose verdict is the record's: the batch always gives an image or an ImageError per input."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.engine.test_gpu_decode import MUTATION, encoded, mutated, small_jpegs, thumbnail_jpeg
from worker.engine import Embedder, PreparedImage, gpu_decode
from worker.engine import embedder as embedder_module
from worker.engine.gpu_decode import DeviceBatch, decode_batch
from worker.errors import CorruptImage, ImageError, NotAnImage, TruncatedImage


def with_decode(embedder: Embedder, decode: str, **model: object) -> Embedder:
    return Embedder(settings=embedder.settings.model_copy(update={"decode": decode, **model}), tower=embedder.tower)


def test_auto_decodes_on_the_cpu_unless_the_model_is_on_cuda(tiny_fast: Embedder) -> None:
    assert tiny_fast.device.type == "cpu"
    assert not with_decode(tiny_fast, "auto").decodes_on_device
    assert not with_decode(tiny_fast, "cpu").decodes_on_device
    assert with_decode(tiny_fast, "gpu").decodes_on_device  # on a CPU model: libjpeg-turbo, on the device thread


def test_baseline_jpegs_decode_on_the_device_and_the_rest_on_the_cpu(tiny_fast: Embedder) -> None:
    photos = small_jpegs()[:3]
    image = Image.open(io.BytesIO(photos[0]))
    png = io.BytesIO()
    image.save(png, "PNG")
    progressive = encoded(image, progressive=True)
    blobs = [photos[0], png.getvalue(), photos[1], progressive, photos[0][:-2000], b"%PDF-1.7", photos[2]]
    gpu = with_decode(tiny_fast, "gpu")
    assert [gpu.device_header(b) is not None for b in blobs] == [True, False, True, False, False, False, True]
    prepared = gpu.prepare_batch(blobs)
    assert len(prepared.images) == len(blobs) and prepared.on_cpu == 4
    device = decode_batch([photos[0], photos[1], photos[2]], tiny_fast.tower.preprocess_cfg,
                          device=tiny_fast.device, max_pixels=10**9)
    for index, row in ((0, 0), (2, 1), (6, 2)):
        image_ = prepared.images[index]
        assert isinstance(image_, PreparedImage) and (image_.format, image_.scale) == ("JPEG", 1)
        assert torch.equal(image_.pixels, device.prepared(row).pixels)
        assert (image_.width, image_.height) == Image.open(io.BytesIO(blobs[index])).size
    for index in (1, 3):  # the PNG and the progressive JPEG: fast mode's own crops, from the CPU
        image_ = prepared.images[index]
        assert isinstance(image_, PreparedImage) and torch.equal(image_.pixels, tiny_fast.prepare(blobs[index]).pixels)
    assert isinstance(prepared.images[4], TruncatedImage) and isinstance(prepared.images[5], NotAnImage)
    embedded = tiny_fast.embed([image_ for image_ in prepared.images if isinstance(image_, PreparedImage)])
    assert all(not isinstance(vector, Exception) for vector in embedded)


def test_an_image_the_device_decoder_refuses_but_pillow_reads_is_still_prepared(
    tiny_fast: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = small_jpegs()[:3]

    def refuses_all(blobs: list[bytes], *args: object, **kwargs: object) -> DeviceBatch:
        return DeviceBatch(torch.empty((0, 3, 224, 224), dtype=torch.uint8), (), (),
                           {i: CorruptImage("nvJPEG: unsupported") for i in range(len(blobs))})

    monkeypatch.setattr(embedder_module, "decode_batch", refuses_all)
    prepared = with_decode(tiny_fast, "gpu").prepare_batch(photos)
    assert prepared.on_cpu == 3
    for data, image_ in zip(photos, prepared.images, strict=True):
        assert isinstance(image_, PreparedImage) and torch.equal(image_.pixels, tiny_fast.prepare(data).pixels)


def test_a_batch_over_the_devices_memory_is_split_and_a_single_image_over_it_goes_to_the_cpu(
    tiny_fast: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = small_jpegs()[:5]
    calls: list[int] = []

    def short_of_memory(blobs: list[bytes], *args: object, **kwargs: object) -> DeviceBatch:
        calls.append(len(blobs))
        if len(blobs) > 2 or any(data is photos[4] for data in blobs):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return decode_batch(blobs, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embedder_module, "decode_batch", short_of_memory)
    prepared = with_decode(tiny_fast, "gpu").prepare_batch(photos)
    assert calls == [5, 2, 3, 1, 2, 1, 1]  # halves, down to the one image that alone is too much
    assert prepared.on_cpu == 1 and all(isinstance(image_, PreparedImage) for image_ in prepared.images)
    last = prepared.images[4]
    assert isinstance(last, PreparedImage) and torch.equal(last.pixels, tiny_fast.prepare(photos[4]).pixels)


def test_a_device_decoder_that_raises_anything_else_leaves_the_batch_to_the_cpu(
    tiny_fast: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = [*small_jpegs()[:2], b"not an image"]

    def broken(*args: object, **kwargs: object) -> DeviceBatch:
        raise ValueError("a bug in the decoder's bindings")

    monkeypatch.setattr(embedder_module, "decode_batch", broken)
    prepared = with_decode(tiny_fast, "gpu").prepare_batch(photos)
    assert prepared.on_cpu == 3 and isinstance(prepared.images[2], NotAnImage)
    for data, image_ in zip(photos[:2], prepared.images, strict=False):
        assert isinstance(image_, PreparedImage) and torch.equal(image_.pixels, tiny_fast.prepare(data).pixels)


def test_headers_the_fetch_read_spare_the_device_thread_a_second_read(
    tiny_fast: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = small_jpegs()[:2]
    gpu = with_decode(tiny_fast, "gpu")
    headers = [gpu.device_header(data) for data in photos]
    cut = photos[1][:-300]  # its header, read before the bytes were cut: the decoder still refuses them

    def no_second_read(data: bytes) -> None:
        raise AssertionError("the device thread read a header again")

    monkeypatch.setattr(gpu_decode, "baseline_header", no_second_read)
    prepared = gpu.prepare_batch([photos[0], cut], headers)
    first, second = prepared.images
    assert isinstance(first, PreparedImage) and (first.format, first.scale) == ("JPEG", 1)
    assert isinstance(second, TruncatedImage) and prepared.on_cpu == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(MUTATION, min_size=1, max_size=4), min_size=1, max_size=3), st.data())
def test_prepare_batch_gives_an_image_or_an_image_error_for_any_bytes(
    tiny_fast: Embedder, mutations: list[list[tuple[str, int, bytes]]], data: st.DataObject
) -> None:
    good = thumbnail_jpeg()
    blobs = [good, *(mutated(good, m) for m in mutations), good]
    capped = with_decode(tiny_fast, "gpu", max_image_pixels=2000 * 2000)  # as decode_batch's own property
    read = [capped.device_header(data) for data in blobs]  # as the fetch threads hand them on
    assert read[0] is not None and read[-1] is not None
    prepared = capped.prepare_batch(blobs, read if data.draw(st.booleans()) else None)
    assert len(prepared.images) == len(blobs) and 0 <= prepared.on_cpu <= len(mutations)
    assert all(isinstance(image_, PreparedImage | ImageError) for image_ in prepared.images)
    assert isinstance(prepared.images[0], PreparedImage) and isinstance(prepared.images[-1], PreparedImage)
