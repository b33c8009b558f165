"""The engine's GPU checks, in one call (bench/gpu_check.sh runs it): memory, fp16 fidelity, throughput.

For ViT-B-32 and ViT-L-14, random weights from a fixed seed (no download on that machine):
  1. memory: loading holds the vision tower only; the peak is compared with the original operator's
     load (full model to the device in fp32, keep .visual, then .half()) and must stay under
     vision + text bytes.
  2. fidelity: on the photo corpus, per image, fp16 vs fp32 embedding cosine >= 0.999 (bf16 reported).
  3. throughput: model-only img/s at batch 32/64/128/256 in fp16, bf16 and fp32 (CUDA events, median
     of windows), and embed() end to end on prepared uint8 images at batch 256 (copy + normalise in).
Every check runs even if one fails; the summary comes last and the exit status is 1 on any failure.
--cpu-smoke runs the same code on the CPU with the tiny model and small counts (no GPU needed).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root
sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_bench

from model_bench import image_size, measure

from worker.config import ModelSettings
from worker.engine import Embedder, PreparedImage

SEED = 0
MB = 1024 * 1024


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.figures: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": ok, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def figure(self, **row: Any) -> None:
        self.figures.append(row)
        print("     " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)


def tower_sizes(model: str) -> tuple[int, int]:
    """(vision, text) parameter counts, from a model built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        full = open_clip.create_model(model, pretrained=None, device="meta")
    vision = sum(p.numel() for p in full.visual.parameters())
    return vision, sum(p.numel() for p in full.parameters()) - vision


def settings_for(model: str, device: str, *, half: bool, extra: dict[str, Any]) -> ModelSettings:
    return ModelSettings(model_name=model, pretrained="none", device=device, use_fp16=half, **extra)


def load_seeded(settings: ModelSettings) -> Embedder:
    torch.manual_seed(SEED)  # the model is built on the CPU: the same seed gives the same weights
    return Embedder.load(settings)


def in_dtype(embedder: Embedder, dtype: torch.dtype) -> Embedder:
    """The embedder with its tower cast to ``dtype`` the engine's way (whole module), on its device."""
    module = copy.deepcopy(embedder.module).to(dtype=dtype)
    tower = dataclasses.replace(embedder.tower, module=module, dtype=dtype)
    return Embedder(settings=embedder.settings, tower=tower)


def vectors(embedder: Embedder, images: list[PreparedImage]) -> np.ndarray:
    results = embedder.embed(images)
    bad = [r for r in results if not isinstance(r, np.ndarray)]
    if bad:
        raise RuntimeError(f"{len(bad)} images failed to embed: {bad[0]!r}")
    return np.stack(results).astype(np.float64)  # type: ignore[arg-type]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    result: np.ndarray = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return result


def check_memory(report: Report, model: str, device: torch.device, cfg: dict[str, Any]) -> Embedder | None:
    """Load the fp16 embedder, watching device memory; returns it (None off CUDA, where it is skipped)."""
    vision, text = tower_sizes(model)
    if device.type != "cuda":
        report.check(f"{model} vision/text split", vision > 0 and text > 0, f"vision {vision:,} text {text:,}")
        return None
    # cuBLAS/cuDNN keep workspaces for the life of the process; create them now, so that the peaks
    # below are the weights (and one image's activations), not a library's first-use allocations.
    with torch.inference_mode():
        for dtype in (torch.float16, torch.float32):
            x = torch.randn(64, 3, 64, 64, device=device, dtype=dtype)
            torch.nn.functional.conv2d(x, torch.randn(16, 3, 8, 8, device=device, dtype=dtype), stride=8)
            _ = x.flatten(1)[:, :256] @ torch.randn(256, 256, device=device, dtype=dtype)
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    # The original operator: create_model_and_transforms(..., device=cuda) in fp32, keep .visual, .half().
    torch.manual_seed(SEED)
    full = open_clip.create_model(model, pretrained=None, device=device)
    visual = full.visual
    del full
    visual.half()
    original_peak = torch.cuda.max_memory_allocated(device) - base
    del visual
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    embedder = load_seeded(settings_for(model, str(device), half=True, extra=cfg))
    peak = torch.cuda.max_memory_allocated(device) - base
    held = torch.cuda.memory_allocated(device) - base
    vision_bytes, text_bytes = vision * 2, text * 2
    report.figure(model=model, original_operator_load_peak_mb=round(original_peak / MB),
                  engine_load_peak_mb=round(peak / MB), engine_held_mb=round(held / MB),
                  vision_fp16_mb=round(vision_bytes / MB), text_fp16_mb=round(text_bytes / MB))
    report.check(f"{model} the loaded tower is the vision tower", embedder.tower.param_count == vision,
                 f"{embedder.tower.param_count:,} parameters, vision tower {vision:,}, text tower {text:,}")
    report.check(f"{model} device memory is the vision tower's", vision_bytes <= peak < vision_bytes + text_bytes,
                 f"peak {peak / MB:.0f} MB during load (vision {vision_bytes / MB:.0f} MB, text would add "
                 f"{text_bytes / MB:.0f} MB; the original operator's load peaked at {original_peak / MB:.0f} MB)")
    return embedder


def check_fidelity(report: Report, model: str, loaded: dict[str, Embedder], images: list[PreparedImage]) -> None:
    reference = vectors(loaded["fp32"], images)
    for name, floor in (("fp16", 0.999), ("bf16", 0.99)):
        cos = cosines(vectors(loaded[name], images), reference)
        report.check(f"{model} {name} vs fp32 cosine per image >= {floor}", bool(cos.min() >= floor),
                     f"min {cos.min():.5f}, mean {cos.mean():.5f} over {len(cos)} photos")
    settings = loaded["fp16"].settings.model_copy(update={"inference_batch_size": 64})
    big = Embedder(settings=settings, tower=loaded["fp16"].tower)
    batch = (images * (64 // len(images) + 1))[:64]
    in_batch = vectors(big, batch)
    alone = np.concatenate([vectors(big, [batch[i]]) for i in (0, 31, 63)])
    cos = cosines(alone, in_batch[[0, 31, 63]])
    report.check(f"{model} fp16 embedding alone vs in a batch of 64", bool(cos.min() >= 0.999),
                 f"min cosine {cos.min():.6f}")


def check_throughput(report: Report, model: str, loaded: dict[str, Embedder], images: list[PreparedImage],
                     batches: list[int], window: float, windows: int) -> None:
    size = image_size(loaded["fp32"])
    for name in ("fp16", "bf16", "fp32"):
        embedder = loaded[name]
        for batch in batches:
            m = measure(embedder.module, model=model, batch=batch, dtype=embedder.dtype, device=embedder.device,
                        image_size=size, window_seconds=window, windows=windows)
            report.figure(model=model, kind="model-only", dtype=name, batch=batch,
                          img_per_s=round(m.images_per_second, 1), ms_per_batch=round(m.ms_per_batch, 2))
    end_to_end = max(batches)
    fast = Embedder(settings=loaded["fp16"].settings.model_copy(update={"inference_batch_size": end_to_end}),
                    tower=loaded["fp16"].tower)
    repeated = (images * (end_to_end // len(images) + 1))[:end_to_end]
    fast.embed(repeated)  # warm-up
    seconds = []
    for _ in range(max(3, windows)):
        began = time.perf_counter()
        fast.embed(repeated)
        seconds.append(time.perf_counter() - began)
    report.figure(model=model, kind="embed() uint8 in, float32 out", dtype="fp16", batch=end_to_end,
                  img_per_s=round(end_to_end / statistics.median(seconds), 1))


def run_model(report: Report, model: str, device: torch.device, corpus: list[bytes], args: argparse.Namespace,
              cfg: dict[str, Any]) -> None:
    loaded: dict[str, Embedder] = {}
    try:
        half = check_memory(report, model, device, cfg)
        loaded["fp32"] = load_seeded(settings_for(model, str(device), half=False, extra=cfg))
        # Off CUDA the engine stays in fp32 (so does this stand-in); the comparison code still runs.
        loaded["fp16"] = half if half is not None else in_dtype(loaded["fp32"], torch.float32)
        loaded["bf16"] = in_dtype(loaded["fp32"], torch.bfloat16)
        if half is not None:  # same seed, same weights: the comparison is of precision alone
            first16, first32 = next(half.module.parameters()), next(loaded["fp32"].module.parameters())
            report.check(f"{model} fp16 and fp32 towers hold the same weights",
                         torch.equal(first16, first32.to(first16.dtype)), "first parameter compared")
        with ThreadPoolExecutor(max_workers=16) as pool:
            images = list(pool.map(loaded["fp32"].prepare, corpus))
        check_fidelity(report, model, loaded, images)
        check_throughput(report, model, loaded, images, args.batches, args.window_seconds, args.windows)
    except Exception as exc:  # keep going: the other model's checks are still worth the device time
        traceback.print_exc()
        report.check(f"{model} ran to the end", False, f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        loaded.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="the same code on the CPU, tiny model, small counts")
    parser.add_argument("--corpus", type=Path, default=Path(".cache/gpu-wheels/corpus"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--models", default="ViT-B-32,ViT-L-14")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    if args.cpu_smoke:
        from harness.models import TINY_MODEL_NAME, model_config_dir, register_model_configs

        register_model_configs()
        device, models, cfg = torch.device("cpu"), [TINY_MODEL_NAME], {"model_config_dir": model_config_dir()}
        args.batches, args.window_seconds, args.windows = [2, 4], 0.05, 2
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-smoke for the CPU dry run")
            return 2
        device, models, cfg = torch.device("cuda", 0), args.models.split(","), {}
        args.batches, args.window_seconds, args.windows = [32, 64, 128, 256], 0.4, 5
        torch.zeros(1, device=device)  # create the context before any memory statistics are read
    if args.corpus.is_dir():
        corpus = [path.read_bytes() for path in sorted(args.corpus.glob("*.jpg"))]
    else:
        from harness.photos import photo_corpus

        corpus = [data for _, data in photo_corpus()]
    if args.cpu_smoke:
        corpus = corpus[::8]
    env = {"torch": torch.__version__, "open_clip": open_clip.__version__, "device": str(device),
           "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "corpus": len(corpus)}
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()), flush=True)

    report = Report()
    for model in models:
        run_model(report, model, device, corpus, args, cfg)
    print(f"\n# summary ({time.perf_counter() - began:.0f} s)")
    for row in report.figures:
        if row.get("kind") == "model-only":
            print(f"{row['model']:<10} {row['dtype']:<5} batch {row['batch']:>4}: {row['img_per_s']:>9.1f} img/s")
    for row in report.figures:
        if row.get("kind", "").startswith("embed()"):
            print(f"{row['model']:<10} embed() fp16 batch {row['batch']}: {row['img_per_s']:.1f} img/s end to end")
    for item in report.checks:
        print(f"{'PASS' if item['ok'] else 'FAIL'} {item['check']}: {item['detail']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "checks": report.checks, "figures": report.figures}, indent=1))
    return 0 if report.checks and all(item["ok"] for item in report.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
