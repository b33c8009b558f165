"""Model-only throughput of a vision tower loaded by the engine: images per second by batch size and dtype.

Model-only means the forward pass on inputs already on the device, in the model's dtype; no decode,
no copy. Inputs are fresh random tensors (never zeros), rotated among several buffers; the first
iterations are warm-up; each figure is the median of several timed windows. On CUDA the windows are
timed with CUDA events; on the CPU with perf_counter (small counts: a CPU figure is for reference).

    python bench/model_bench.py --model ViT-B-32 --device cpu --batches 8,32 --dtypes fp32
    python bench/model_bench.py --model ViT-B-32 ViT-L-14 --device cuda --batches 32,64,128,256 --dtypes fp16,fp32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from worker.config import ModelSettings
from worker.engine import Embedder
from worker.engine.loading import forward

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Measurement:
    model: str
    dtype: str
    batch: int
    images_per_second: float
    ms_per_batch: float
    windows: int
    iterations: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_window(module: torch.nn.Module, inputs: list[torch.Tensor], iterations: int, device: torch.device) -> float:
    """Seconds for ``iterations`` forwards, rotating through ``inputs``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iterations):
            forward(module, inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000.0
    began = time.perf_counter()
    for i in range(iterations):
        forward(module, inputs[i % len(inputs)])
    return time.perf_counter() - began


def measure(
    module: torch.nn.Module,
    *,
    model: str,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    image_size: tuple[int, int],
    window_seconds: float = 0.5,
    windows: int = 5,
    warmup: int = 2,
    channels_last: bool = False,
) -> Measurement:
    """Median images/s over ``windows`` timed windows of about ``window_seconds`` each. With
    ``channels_last``, the inputs are laid out as the engine's fast-mode collate gives them."""
    generator = torch.Generator(device="cpu").manual_seed(batch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    inputs = [
        torch.randn((batch, 3, *image_size), generator=generator).to(device=device, dtype=dtype,
                                                                      memory_format=layout)
        for _ in range(2 if batch >= 128 else 3)
    ]
    with torch.inference_mode():
        _time_window(module, inputs, warmup, device)
        _sync(device)
        once = max(_time_window(module, inputs, 1, device), 1e-6)
        iterations = max(1, round(window_seconds / once))
        seconds = [_time_window(module, inputs, iterations, device) for _ in range(windows)]
    per_batch = statistics.median(seconds) / iterations
    name = next(key for key, value in DTYPES.items() if value == dtype)
    return Measurement(model, name, batch, batch / per_batch, per_batch * 1000.0, windows, iterations)


def half_copy(embedder: Embedder, dtype: torch.dtype) -> torch.nn.Module:
    """The embedder's tower in another dtype, the way the engine casts it (whole module)."""
    if dtype == embedder.dtype:
        return embedder.module
    module = copy.deepcopy(embedder.module)
    return module.to(dtype=dtype)


def load(model: str, device: str, *, seed: int = 0) -> Embedder:
    """The engine's fp32 tower with random weights from ``seed`` (no download)."""
    torch.manual_seed(seed)
    return Embedder.load(ModelSettings(model_name=model, pretrained="none", device=device, use_fp16=False))


def image_size(embedder: Embedder) -> tuple[int, int]:
    size = embedder.tower.preprocess_cfg.size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def print_table(rows: list[Measurement]) -> None:
    print(f"{'model':<12} {'dtype':<5} {'batch':>5} {'img/s':>10} {'ms/batch':>10}")
    for row in rows:
        print(f"{row.model:<12} {row.dtype:<5} {row.batch:>5} {row.images_per_second:>10.1f} {row.ms_per_batch:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["ViT-B-32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", default="32,64,128,256")
    parser.add_argument("--dtypes", default="fp16,fp32", help="fp16/bf16 are skipped off CUDA, as the engine does")
    parser.add_argument("--window-seconds", type=float, default=0.5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[Measurement] = []
    for model in args.model:
        embedder = load(model, args.device)
        print(f"# {model}: {embedder.tower.param_count / 1e6:.1f} M vision parameters on {embedder.device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads", flush=True)
        for dtype_name in args.dtypes.split(","):
            dtype = DTYPES[dtype_name]
            if dtype != torch.float32 and embedder.device.type != "cuda":
                print(f"# {dtype_name} skipped: half precision applies on CUDA only")
                continue
            module = half_copy(embedder, dtype)
            for batch in batches:
                rows.append(measure(module, model=model, batch=batch, dtype=dtype, device=embedder.device,
                                    image_size=image_size(embedder), window_seconds=args.window_seconds,
                                    windows=args.windows))
                print(f"#   {dtype_name} batch {batch}: {rows[-1].images_per_second:.1f} img/s", flush=True)
            del module
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
