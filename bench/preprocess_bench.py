"""Preprocessing throughput, exact vs fast, on the photo corpus: images per second per core.

Each mode runs the 48-photo corpus (8 scikit-image photos x 640/1024/1600 px x JPEG q85/q95) through
``Preprocessor.prepare`` on a pool of N threads, after a warm-up pass; the modes take turns within
each repeat, and each figure is the median over repeats ("vs exact": the median of the per-repeat
ratios). torch runs single-threaded, so one thread is one core. Rows:

    exact             open_clip's transform on a full decode (the original operator's cost)
    fast-no-draft     fast mode's resize/crop to uint8 on a full decode (what reduced DCT is worth)
    fast              reduced-DCT decode + resize/crop to uint8 (the default)
    device-route      only the header check a fetch thread runs with model.decode=gpu (gpu_decode.device_header)

With --cosine it also embeds the corpus in both modes with ViT-B-32 (random weights, seed 0, fp32,
CPU) and prints the fast/exact cosine, the quality guard's figure.

    python bench/preprocess_bench.py --threads 1,2 --repeats 9
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import PIL
import torch
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from PIL import features

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from harness.photos import photo_corpus
from worker.engine.decode import decode_image
from worker.engine.gpu_decode import device_header
from worker.engine.preprocess import Preprocessor, fast_pixels, plan

MAX_PIXELS = 64_000_000


def preprocess_cfg(model: str, pretrained: str) -> PreprocessCfg:
    """The model's preprocess config as open_clip builds it (tag config over defaults), without weights."""
    merged = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(model, pretrained))
    model_cfg = open_clip.get_model_config(model) or {}
    merged["size"] = model_cfg.get("vision_cfg", {}).get("image_size", merged["size"])
    return PreprocessCfg(**merged)


def modes(cfg: PreprocessCfg) -> dict[str, Callable[[bytes], object]]:
    exact = Preprocessor(cfg, mode="exact", max_pixels=MAX_PIXELS)
    fast = Preprocessor(cfg, mode="fast", max_pixels=MAX_PIXELS)

    def fast_no_draft(data: bytes) -> object:
        decoded = decode_image(data, max_pixels=MAX_PIXELS)
        return fast_pixels(decoded, plan(decoded.width, decoded.height, cfg))

    def device_route(data: bytes) -> object:
        return device_header(data, max_pixels=MAX_PIXELS)

    return {"exact": exact.prepare, "fast-no-draft": fast_no_draft, "fast": fast.prepare, "device-route": device_route}


def throughput(
    fns: dict[str, Callable[[bytes], object]], blobs: list[bytes], *, threads: int, repeats: int
) -> dict[str, list[float]]:
    """Images/s of each mode per repeat. The modes take turns within each repeat, so a noisy neighbour
    slows them alike and the per-repeat ratios stay meaningful on a shared machine."""
    rates: dict[str, list[float]] = {name: [] for name in fns}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for fn in fns.values():
            list(pool.map(fn, blobs))  # warm-up: page cache, allocator, lazy imports
        for _ in range(repeats):
            for name, fn in fns.items():
                began = time.perf_counter()
                list(pool.map(fn, blobs))
                rates[name].append(len(blobs) / (time.perf_counter() - began))
    return rates


def cosine_figures(corpus: list[tuple[str, bytes]]) -> tuple[float, float, str]:
    from harness.models import write_random_checkpoint
    from worker.config import ModelSettings
    from worker.engine import Embedder

    checkpoint = write_random_checkpoint("ViT-B-32", Path("/tmp/preprocess-bench/vit-b-32-seed0.pt"), seed=0)
    settings = ModelSettings(model_name="ViT-B-32", pretrained=str(checkpoint), device="cpu", preprocess_mode="exact")
    exact = Embedder.load(settings)
    fast = Embedder(settings=settings.model_copy(update={"preprocess_mode": "fast"}), tower=exact.tower)
    a = np.stack(exact.embed([exact.prepare(data) for _, data in corpus]))  # type: ignore[arg-type]
    b = np.stack(fast.embed([fast.prepare(data) for _, data in corpus]))  # type: ignore[arg-type]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(cos.mean()), corpus[int(cos.argmin())][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="openai", help="only its preprocess config is used")
    parser.add_argument("--threads", default="1", help="comma-separated pool sizes, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cosine", action="store_true", help="also embed both modes with ViT-B-32 (slow on CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # exact mode's ToTensor/Normalize: one thread per pool worker, one core each

    corpus = photo_corpus()
    blobs = [data for _, data in corpus]
    cfg = preprocess_cfg(args.model, args.pretrained)
    print(f"# {datetime.date.today()} {platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}), "
          f"Python {platform.python_version()}, Pillow {PIL.__version__} (libjpeg-turbo "
          f"{features.version('libjpeg_turbo')}), torch {torch.__version__}")
    print(f"# corpus: {len(blobs)} JPEGs, {sum(map(len, blobs)) / 1e6:.1f} MB; target {cfg.size} {cfg.interpolation}; "
          f"median of {args.repeats} interleaved repeats after a warm-up pass")
    print(f"{'mode':<14} {'threads':>7} {'img/s':>8} {'img/s/core':>10} {'ms/img/core':>11} {'vs exact':>8}  range")
    for threads in (int(t) for t in args.threads.split(",")):
        rates = throughput(modes(cfg), blobs, threads=threads, repeats=args.repeats)
        for name, values in rates.items():
            rate = statistics.median(values)
            ratio = statistics.median(v / e for v, e in zip(values, rates["exact"], strict=True))
            per_core = rate / threads
            print(f"{name:<14} {threads:>7} {rate:>8.1f} {per_core:>10.1f} {1000 / per_core:>11.2f} "
                  f"{ratio:>7.2f}x  {min(values):.0f}-{max(values):.0f}", flush=True)
    if args.cosine:
        low, mean, worst = cosine_figures(corpus)
        print(f"fast vs exact cosine (ViT-B-32, random weights seed 0, fp32): min {low:.5f} ({worst}), mean {mean:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
