"""Part "decode": images per second prepared by the CPU's fast path in processes, and by nvJPEG on the device.

- CPU: fast mode's Preprocessor.prepare (reduced-DCT decode, resize, crop to uint8) in 1/4/8/16
  processes, each looping over the corpus (640-1600 px photos) for a fixed window; the results are
  counted, not sent back, so this is the decode rate without any hand-off. Exact mode in one process
  for reference. CPU seconds per image are reported too.
- device: worker.engine.gpu_decode.decode_batch at batch 64 and 256: JPEG bytes on the host in, uint8
  model input on the device out (the bytes' copy to the device included), synchronised.
- quality: per photo, the device path's pixels against exact mode's (PSNR, >= 30 dB: fast mode's own
  guard), with fast mode's PSNR beside it. nvJPEG is not libjpeg-turbo, so this is its real measure.
- isolation: a broken JPEG in a batch fails alone, and its batch's good images decode as they do alone.
- mixed batch: crops the device decoded and crops prepared on the host, collated into one batch (as
  model.decode=gpu feeds the batcher from both), give bitwise the input of the same crops all from the host.
- hostile JPEGs (hostile.py): whether mutated JPEGs that the device path takes crash the decoder's
  process or poison its context.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg

from bench.gpu_parts import hostile
from bench.gpu_parts.common import Budget, Context, Report, free, rate
from worker.engine.gpu_decode import baseline_header, decode_batch
from worker.engine.preprocess import PreparedImage, Preprocessor, preprocess_cfg_from

_worker: dict[str, Any] = {}


def _init(cfg: PreprocessCfg, blobs: list[bytes], mode: str) -> None:
    torch.set_num_threads(1)
    _worker.update(preprocessor=Preprocessor(cfg, mode=mode, max_pixels=10**9), blobs=blobs)  # type: ignore[arg-type]


def _prepare_for(seconds: float, offset: int) -> tuple[int, float]:
    """Prepare corpus images one after another for ``seconds``: (how many, CPU seconds spent)."""
    preprocessor, blobs = _worker["preprocessor"], _worker["blobs"]
    count, cpu, began = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - began < seconds:
        preprocessor.prepare(blobs[(offset + count) % len(blobs)])
        count += 1
    return count, time.process_time() - cpu


def model_cfg(model: str) -> PreprocessCfg:
    with torch.device("meta"):
        built = open_clip.create_model(model, pretrained=None, device="meta")
    return preprocess_cfg_from(dict(open_clip.get_model_preprocess_cfg(built)))


def cpu_rates(ctx: Context, report: Report, budget: Budget, cfg: PreprocessCfg, blobs: list[bytes]) -> None:
    counts, window = ([1, 2], 0.25) if ctx.smoke else ([1, 4, 8, 16], 3.0)
    # fork is cheap and safe while this process has not touched CUDA (the device runs come after)
    method = "spawn" if torch.cuda.is_initialized() else "fork"
    for mode, sizes in (("fast", counts), ("exact", counts[:1])):
        with multiprocessing.get_context(method).Pool(max(sizes), _init, (cfg, blobs, mode)) as pool:
            pool.starmap(_prepare_for, [(0.05, i) for i in range(max(sizes))])  # every process has started
            for processes in sizes:
                if not budget.enough(window + (0.2 if ctx.smoke else 2.0)):
                    report.note(f"CPU {mode} in {processes} processes and the rest skipped: out of time")
                    return
                began = time.perf_counter()
                done = pool.starmap(_prepare_for, [(window, i * 7) for i in range(processes)])
                seconds = time.perf_counter() - began
                images, cpu = sum(n for n, _ in done), sum(c for _, c in done)
                report.figure(kind="cpu decode", mode=mode, processes=processes, img_per_s=round(images / seconds, 1),
                              cpu_ms_per_image=round(1000 * cpu / max(images, 1), 2), images=images)


def device_rates(ctx: Context, report: Report, budget: Budget, cfg: PreprocessCfg, blobs: list[bytes]) -> None:
    batches = [4, 8] if ctx.smoke else [64, 256]
    for batch in batches:
        if not budget.enough(0.5 if ctx.smoke else 8.0):
            report.note(f"device decode at batch {batch} and the rest skipped: out of time")
            return
        chunk = (blobs * (batch // len(blobs) + 1))[:batch]
        value = rate(lambda c=chunk: decode_batch(c, cfg, device=ctx.device, max_pixels=10**9), ctx.device,
                     images=batch, seconds=0.1 if ctx.smoke else 1.0, windows=2 if ctx.smoke else 3)
        report.figure(kind="device decode", decoder="nvJPEG" if ctx.device.type == "cuda" else "libjpeg-turbo (CPU)",
                      batch=batch, img_per_s=round(value, 1))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


def quality(ctx: Context, report: Report, cfg: PreprocessCfg) -> None:
    names, blobs = [n for n, _ in ctx.corpus], [d for _, d in ctx.corpus]
    batch = decode_batch(blobs, cfg, device=ctx.device, max_pixels=10**9)
    exact = Preprocessor(cfg, mode="exact", max_pixels=10**9)
    fast = Preprocessor(cfg, mode="fast", max_pixels=10**9)
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    device_db, fast_db = {}, {}
    for row, i in enumerate(batch.rows):
        reference = (exact.prepare(blobs[i]).pixels * std + mean).mul(255).clamp(0, 255)
        device_db[names[i]] = round(psnr(batch.pixels[row].cpu(), reference), 2)
        fast_db[names[i]] = round(psnr(fast.prepare(blobs[i]).pixels.permute(2, 0, 1), reference), 2)
    worst = min(device_db, key=device_db.__getitem__) if device_db else "none"
    report.figure(kind="device decode quality", min_psnr_db=device_db.get(worst), worst=worst,
                  median_psnr_db=float(np.median(list(device_db.values()))) if device_db else None,
                  fast_mode_min_psnr_db=min(fast_db.values(), default=None), per_photo=device_db)
    report.check("device decode + resize vs exact mode PSNR per photo >= 30 dB (fast mode's guard)",
                 not batch.errors and bool(device_db) and min(device_db.values()) >= 30.0,
                 f"min {device_db.get(worst)} dB ({worst}), fast mode's min {min(fast_db.values(), default=None)} dB, "
                 f"errors {len(batch.errors)}")


def isolation(ctx: Context, report: Report, cfg: PreprocessCfg, blobs: list[bytes]) -> None:
    """A JPEG whose header passes but whose scan names an undefined Huffman table, between two good
    ones: the batched decoder fails the list, decode_batch must split it and fail that one alone."""
    broken = bytearray(blobs[0])
    broken[blobs[0].find(b"\xff\xda") + 6] = 0x33
    batch = decode_batch([blobs[0], bytes(broken), blobs[1]], cfg, device=ctx.device, max_pixels=10**9)
    alone = decode_batch([blobs[0], blobs[1]], cfg, device=ctx.device, max_pixels=10**9)
    same = batch.pixels.shape == alone.pixels.shape and bool(torch.equal(batch.pixels, alone.pixels))
    report.check("a broken JPEG fails alone on the device, its batch decodes",
                 batch.rows == (0, 2) and 1 in batch.errors and same,
                 f"rows {batch.rows}, errors {[type(e).__name__ + ': ' + str(e)[:80] for e in batch.errors.values()]}, "
                 f"good rows as decoded alone: {same}")


def mixed_batch(ctx: Context, report: Report, cfg: PreprocessCfg, blobs: list[bytes]) -> None:
    fast = Preprocessor(cfg, mode="fast", max_pixels=10**9)
    half = min(len(blobs) // 2, 8)
    decoded = decode_batch(blobs[:half], cfg, device=ctx.device, max_pixels=10**9)
    on_device = [decoded.prepared(row) for row in range(len(decoded.rows))]
    on_host = [fast.prepare(data) for data in blobs[half : 2 * half]]
    mixed = [image for pair in zip(on_device, on_host, strict=True) for image in pair]
    host = [PreparedImage(image.pixels.cpu(), image.width, image.height, image.format, image.scale) for image in mixed]
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    same = torch.equal(fast.collate(mixed, device=ctx.device, dtype=dtype),
                       fast.collate(host, device=ctx.device, dtype=dtype))
    report.check("a batch of device-decoded and host-prepared crops collates as the same crops from the host",
                 len(mixed) == 2 * half > 0 and same, f"{len(mixed)} crops, bitwise equal: {same}")


def run(ctx: Context, report: Report, budget: Budget) -> None:
    cfg = model_cfg(ctx.models("ViT-B-32")[0])
    blobs = [data for _, data in ctx.corpus]
    baseline = sum(baseline_header(b) is not None for b in blobs)
    report.figure(kind="corpus", photos=len(blobs), baseline_jpegs=baseline, mb=round(sum(map(len, blobs)) / 1e6, 1))
    cpu_rates(ctx, report, budget, cfg, blobs)
    device_rates(ctx, report, budget, cfg, blobs)
    if budget.enough(0.5 if ctx.smoke else 10.0):
        quality(ctx, report, cfg)
        isolation(ctx, report, cfg, blobs)
        mixed_batch(ctx, report, cfg, blobs)
    else:
        report.note("device decode quality and error isolation skipped: out of time")
    if budget.enough(0.5 if ctx.smoke else 6.0):
        hostile.run(ctx, report, budget, cfg, blobs)
    else:
        report.note("hostile JPEGs skipped: out of time")
    free(ctx.device)
