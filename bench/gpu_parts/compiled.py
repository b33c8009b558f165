"""Part "compile": ViT-B-32 fp16 on one fixed batch bucket, eager against a CUDA graph and torch.compile.

ViT-B-32 has 50 tokens, so its forward is hundreds of short kernels and launch overhead matters.
For one bucket (256 images) this measures model-only img/s of:
- eager (what the engine runs today);
- a CUDA graph captured by hand (torch.cuda.graph): a static input buffer is filled, the graph is
  replayed; a partial batch (200) is padded to the bucket and the padding's outputs dropped, and its
  embeddings are compared with eager's on the same 200 images;
- torch.compile(mode="reduce-overhead") (inductor + CUDA graphs), then torch.compile (inductor, default
  mode), with their compile time. Compiling can take minutes: these run last, each only if the part's
  budget allows, and gpu_check.sh's hard time limit kills the part if one overruns.
Every variant's output is compared with eager's (cosine >= 0.999). In the CPU dry run the graph is
skipped and torch.compile uses the aot_eager backend (no code generation), to exercise the code.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from bench.gpu_parts.common import Budget, Context, Report, cosines, free, random_tower, rate, sync

Forward = Callable[[torch.Tensor], torch.Tensor]


def cuda_graph(module: torch.nn.Module, bucket: torch.Tensor) -> Forward:
    """``module`` captured for inputs shaped like ``bucket``; returns a function that pads a smaller
    batch into the static input, replays, and returns the outputs of the real rows (a copy)."""
    static_in = torch.zeros_like(bucket)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):  # warm-up off the capture stream, as torch.cuda.graph requires
            module(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = module(static_in)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_in[: len(x)].copy_(x)
        if len(x) < len(static_in):
            static_in[len(x) :].zero_()
        graph.replay()
        return static_out[: len(x)].clone()

    return replay


def compiled(module: torch.nn.Module, bucket: int, *, mode: str | None, backend: str) -> Forward:
    """``module`` compiled for one static batch size; a smaller batch is padded to it, the padding dropped."""
    torch._dynamo.reset()  # else the module's frame keeps the previous variant's compiled code
    fn = torch.compile(module, mode=mode, backend=backend, dynamic=False)

    def forward(x: torch.Tensor) -> torch.Tensor:
        real = len(x)
        if real < bucket:
            x = torch.cat([x, x.new_zeros((bucket - real, *x.shape[1:]))])
        with torch.no_grad():
            out: torch.Tensor = fn(x)
            return out[:real].clone() if real < bucket else out

    return forward


def run(ctx: Context, report: Report, budget: Budget) -> None:
    model = ctx.models("ViT-B-32")[0]
    device, smoke = ctx.device, ctx.smoke
    module, dtype = random_tower(ctx, model)
    bucket, partial, seconds = (8, 5, 0.05) if smoke else (256, 200, 0.4)
    inputs = [torch.randn(bucket, 3, 224, 224, device=device, dtype=dtype) for _ in range(3)]
    turn = iter(range(10**9))

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = module(x)
            return out

    reference = eager(inputs[0]).float().cpu().numpy()
    reference_partial = eager(inputs[1][:partial]).float().cpu().numpy()
    variants: list[tuple[str, Callable[[], Forward]]] = [("eager", lambda: eager)]
    if device.type == "cuda":
        variants += [
            ("cuda graph", lambda: cuda_graph(module, inputs[0])),
            ("torch.compile reduce-overhead",
             lambda: compiled(module, bucket, mode="reduce-overhead", backend="inductor")),
            ("torch.compile inductor", lambda: compiled(module, bucket, mode=None, backend="inductor")),
        ]
    else:
        report.note("cuda graph: needs CUDA (skipped in the CPU dry run)")
        variants += [("torch.compile aot_eager (CPU dry run)",
                      lambda: compiled(module, bucket, mode=None, backend="aot_eager"))]
    for name, build in variants:
        if not budget.enough(0.5 if smoke else 30.0):
            report.note(f"{name} and the rest skipped: out of time")
            break
        try:
            began = time.perf_counter()
            forward = build()
            first = forward(inputs[0])
            sync(device)
            setup_s = time.perf_counter() - began
            cos = cosines(first.float().cpu().numpy(), reference)
            cos_partial = cosines(forward(inputs[1][:partial]).float().cpu().numpy(), reference_partial)
            value = rate(lambda f=forward: f(inputs[next(turn) % 3]), device, images=bucket, seconds=seconds)
        except Exception as exc:  # a compiler error is a figure too: the next variant still runs
            report.figure(model=model, kind="fixed bucket", variant=name, batch=bucket, img_per_s=None,
                          error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            free(device)
            continue
        report.figure(model=model, kind="fixed bucket", variant=name, batch=bucket, img_per_s=round(value, 1),
                      setup_s=round(setup_s, 1), min_cosine_vs_eager=round(float(np.min(cos)), 6),
                      padded_partial=partial, min_cosine_padded_vs_eager=round(float(np.min(cos_partial)), 6))
        if name == "eager":
            continue
        report.check(f"{model} {name} matches eager (padded partial batch too)",
                     bool(min(cos.min(), cos_partial.min()) >= 0.999),
                     f"min cosine {cos.min():.6f}, padded {partial} of {bucket}: {cos_partial.min():.6f}")
    free(device)
