"""Part "models": what the engine has today, per tower (ViT-B-32, ViT-B-16, ViT-L-14; random weights, fixed seed).

1. memory: loading holds the vision tower only; the peak is compared with the original operator's load
   (full model to the device in fp32, keep .visual, then .half()) and must stay under vision + text bytes.
2. fidelity: per photo of the corpus, fp16 vs fp32 embedding cosine >= 0.999 (bf16 >= 0.99), the
   per-photo cosines written out; and one image embeds the same alone and in a batch of 64.
3. throughput: model-only img/s in fp16 at batch 64..1024 (fresh random inputs on the device, CUDA
   events, median of windows; a batch that runs out of memory ends the sweep), fp32 and bf16 at 256
   for the ratio, fp16 at 256 on channels-last input (the layout the engine's fast-mode collate gives),
   and embed() on prepared uint8 images at 256 (copy + normalise included); on CUDA, the host side of
   a batch's copy as collate stages it (stacked into pinned memory) against stack-then-pin_memory().
"""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import torch

from bench.gpu_parts.common import (
    MB,
    SEED,
    Budget,
    Context,
    Report,
    cosines,
    free,
    in_dtype,
    load_seeded,
    rate,
    settings_for,
    vectors,
)
from bench.model_bench import image_size, measure
from worker.engine import Embedder, PreparedImage
from worker.engine.preprocess import staged

# fp16 model-only sweep; ViT-L-14 tries 512 too (a batch that runs out of memory is a figure, not a failure)
BATCHES = {"ViT-B-32": [64, 128, 256, 512, 1024], "ViT-B-16": [64, 128, 256, 512, 1024],
           "ViT-L-14": [64, 128, 256, 512]}


def tower_sizes(model: str) -> tuple[int, int]:
    """(vision, text) parameter counts, from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        full = open_clip.create_model(model, pretrained=None, device="meta")
    vision = sum(p.numel() for p in full.visual.parameters())
    return vision, sum(p.numel() for p in full.parameters()) - vision


def check_memory(report: Report, ctx: Context, model: str) -> Embedder | None:
    """Load the fp16 embedder, watching device memory; returns it (None off CUDA, where it is skipped)."""
    vision, text = tower_sizes(model)
    device = ctx.device
    if device.type != "cuda":
        report.check(f"{model} vision/text split", vision > 0 and text > 0, f"vision {vision:,} text {text:,}")
        return None
    # cuBLAS keeps workspaces for the life of the process: create them now, so the peaks are the weights.
    with torch.inference_mode():
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(64, 3, 64, 64, device=device, dtype=dtype)
            torch.nn.functional.conv2d(x, torch.randn(16, 3, 8, 8, device=device, dtype=dtype), stride=8)
            _ = x.flatten(1)[:, :256] @ torch.randn(256, 256, device=device, dtype=dtype)
    torch.cuda.synchronize(device)
    free(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    torch.manual_seed(SEED)  # the original operator: the full model on the device in fp32, .visual, .half()
    full = open_clip.create_model(model, pretrained=None, device=device)
    visual = full.visual
    del full
    visual.half()
    original_peak = torch.cuda.max_memory_allocated(device) - base
    del visual
    free(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    embedder = load_seeded(settings_for(ctx, model, half=True))
    peak = torch.cuda.max_memory_allocated(device) - base
    held = torch.cuda.memory_allocated(device) - base
    vision_bytes, text_bytes = vision * 2, text * 2
    report.figure(model=model, kind="memory", original_operator_load_peak_mb=round(original_peak / MB),
                  engine_load_peak_mb=round(peak / MB), engine_held_mb=round(held / MB),
                  vision_fp16_mb=round(vision_bytes / MB), text_fp16_mb=round(text_bytes / MB))
    report.check(f"{model} the loaded tower is the vision tower", embedder.tower.param_count == vision,
                 f"{embedder.tower.param_count:,} parameters, vision tower {vision:,}, text tower {text:,}")
    report.check(f"{model} device memory is the vision tower's", vision_bytes <= peak < vision_bytes + text_bytes,
                 f"peak {peak / MB:.0f} MB during load (vision {vision_bytes / MB:.0f} MB, text would add "
                 f"{text_bytes / MB:.0f} MB; the original operator's load peaked at {original_peak / MB:.0f} MB)")
    return embedder


def check_fidelity(report: Report, model: str, loaded: dict[str, Embedder], images: list[PreparedImage],
                   names: list[str]) -> None:
    reference = vectors(loaded["fp32"], images)
    for name, floor in (("fp16", 0.999), ("bf16", 0.99)):
        cos = cosines(vectors(loaded[name], images), reference)
        report.figure(model=model, kind="fidelity", dtype=name, min_cosine=round(float(cos.min()), 6),
                      mean_cosine=round(float(cos.mean()), 6), worst=names[int(cos.argmin())],
                      per_photo={n: round(float(c), 6) for n, c in zip(names, cos, strict=True)})
        report.check(f"{model} {name} vs fp32 cosine per photo >= {floor}", bool(cos.min() >= floor),
                     f"min {cos.min():.5f} ({names[int(cos.argmin())]}), mean {cos.mean():.5f} over {len(cos)} photos")
    settings = loaded["fp16"].settings.model_copy(update={"inference_batch_size": 64})
    big = Embedder(settings=settings, tower=loaded["fp16"].tower)
    batch = (images * (64 // len(images) + 1))[:64]
    in_batch = vectors(big, batch)
    alone = np.concatenate([vectors(big, [batch[i]]) for i in (0, 31, 63)])
    cos = cosines(alone, in_batch[[0, 31, 63]])
    report.check(f"{model} fp16 embedding alone vs in a batch of 64", bool(cos.min() >= 0.999),
                 f"min cosine {cos.min():.6f}")


def check_throughput(report: Report, ctx: Context, model: str, loaded: dict[str, Embedder],
                     images: list[PreparedImage], budget: Budget) -> None:
    size = image_size(loaded["fp32"])
    window, windows = (0.05, 2) if ctx.smoke else (0.3, 4)
    batches = [4] if ctx.smoke else BATCHES.get(model, [64, 128, 256])
    reference = batches[-1] if ctx.smoke else 256
    plan = [("fp16", b) for b in batches] + [("fp32", reference), ("bf16", reference)]
    for dtype_name, batch in plan:
        if not budget.enough(0.3 if ctx.smoke else 6.0):
            report.note(f"{model} {dtype_name} batch {batch} and the rest skipped: out of time")
            return
        embedder = loaded[dtype_name]
        try:
            m = measure(embedder.module, model=model, batch=batch, dtype=embedder.dtype, device=embedder.device,
                        image_size=size, window_seconds=window, windows=windows)
        except torch.OutOfMemoryError:
            free(ctx.device)
            report.figure(model=model, kind="model-only", dtype=dtype_name, batch=batch, img_per_s=None,
                          error="out of memory")
            continue
        report.figure(model=model, kind="model-only", dtype=dtype_name, batch=batch,
                      img_per_s=round(m.images_per_second, 1), ms_per_batch=round(m.ms_per_batch, 2))
    if budget.enough(0.3 if ctx.smoke else 6.0):  # the layout fast mode's collate hands the tower
        m = measure(loaded["fp16"].module, model=model, batch=reference, dtype=loaded["fp16"].dtype,
                    device=ctx.device, image_size=size, window_seconds=window, windows=windows, channels_last=True)
        report.figure(model=model, kind="model-only channels-last input", dtype="fp16", batch=reference,
                      img_per_s=round(m.images_per_second, 1), ms_per_batch=round(m.ms_per_batch, 2))
    batch = reference
    fast = Embedder(settings=loaded["fp16"].settings.model_copy(update={"inference_batch_size": batch}),
                    tower=loaded["fp16"].tower)
    repeated = (images * (batch // len(images) + 1))[:batch]
    value = rate(lambda: fast.embed(repeated), ctx.device, images=batch, seconds=window)
    report.figure(model=model, kind="embed() uint8 in, float32 out", dtype="fp16", batch=batch,
                  img_per_s=round(value, 1))
    if ctx.device.type == "cuda":  # the batch written once into pinned memory, or twice
        pixels = [image.pixels for image in repeated]
        for kind, stage in (("host staging: stack, then pin_memory()", lambda: torch.stack(pixels).pin_memory()),
                            ("host staging: stacked into pinned memory (collate)", lambda: staged(pixels, ctx.device))):
            value = rate(stage, ctx.device, images=batch, seconds=window)
            report.figure(model=model, kind=kind, batch=batch, img_per_s=round(value, 1),
                          ms_per_batch=round(batch / value * 1e3, 3))


def run_model(report: Report, ctx: Context, model: str, budget: Budget) -> None:
    loaded: dict[str, Embedder] = {}
    try:
        half = check_memory(report, ctx, model)
        loaded["fp32"] = load_seeded(settings_for(ctx, model, half=False))
        # Off CUDA the engine stays in fp32 (so does this stand-in); the comparison code still runs.
        loaded["fp16"] = half if half is not None else in_dtype(loaded["fp32"], torch.float32)
        loaded["bf16"] = in_dtype(loaded["fp32"], torch.bfloat16)
        if half is not None:  # same seed, same weights: the comparison is of precision alone
            first16, first32 = next(half.module.parameters()), next(loaded["fp32"].module.parameters())
            report.check(f"{model} fp16 and fp32 towers hold the same weights",
                         torch.equal(first16, first32.to(first16.dtype)), "first parameter compared")
        with ThreadPoolExecutor(max_workers=16) as pool:
            images = list(pool.map(loaded["fp32"].prepare, [data for _, data in ctx.corpus]))
        check_fidelity(report, model, loaded, images, [name for name, _ in ctx.corpus])
        check_throughput(report, ctx, model, loaded, images, budget)
    finally:
        loaded.clear()
        gc.collect()
        free(ctx.device)


def run(ctx: Context, report: Report, budget: Budget) -> None:
    models = ctx.models("ViT-B-32", "ViT-B-16", "ViT-L-14")
    for i, model in enumerate(models):
        share = budget.share(len(models) - i)
        if share.left() < (1.0 if ctx.smoke else 20.0):
            report.note(f"{model} skipped: out of time")
            continue
        try:
            run_model(report, ctx, model, share)
        except Exception as exc:  # the next tower's figures are still worth the device time
            report.check(f"{model} ran to the end", False, f"{type(exc).__name__}: {str(exc)[:300]}")
