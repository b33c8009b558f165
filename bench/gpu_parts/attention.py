"""Part "attention": which attention kernels the towers' forward runs, and what each SDPA backend gives.

open_clip's towers use nn.MultiheadAttention; in eval mode without grads it takes PyTorch's fast path
(aten::_native_multi_head_attention), which on CUDA calls a fused SDPA kernel (flash or memory-
efficient) when the shapes allow and the backend is enabled, and bmm + softmax otherwise. So:
1. the SDPA backend flags as they stand (torch.backends.cuda.*_sdp_enabled);
2. a profiler trace of one fp16 forward: the attention-related operators and kernels that ran;
3. model-only img/s with each backend forced (torch.nn.attention.sdpa_kernel), the fused kernels its
   trace shows (a backend the fast path cannot use falls back to bmm + softmax rather than failing),
   and the output's cosine against the math backend's. ViT-B-16 is used: all three towers have
   64-wide heads, so what runs for it runs for the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from bench.gpu_parts.common import Budget, Context, Report, cosines, free, random_tower, rate

PATTERNS = ("attention", "sdp", "flash", "fmha", "softmax", "bmm", "multi_head", "cudnn")
BACKENDS = (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION)


def flags() -> dict[str, bool]:
    cuda: Any = torch.backends.cuda
    names = ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled", "cudnn_sdp_enabled")
    return {name: bool(getattr(cuda, name)()) for name in names if hasattr(cuda, name)}


def traced(module: torch.nn.Module, x: torch.Tensor, device: torch.device) -> dict[str, dict[str, int]]:
    """Attention-related operator and kernel names of one forward, with how often each ran."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        module(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    found: dict[str, dict[str, int]] = {"operators": {}, "kernels": {}}
    for event in prof.events():
        if any(p in event.name.lower() for p in PATTERNS):
            where = "operators" if event.name.startswith("aten::") else "kernels"
            found[where][event.name[:120]] = found[where].get(event.name[:120], 0) + 1
    return found


def fused_names(found: dict[str, dict[str, int]]) -> list[str]:
    """The fused attention operators and kernels among those traced (none: bmm + softmax ran)."""
    names = [*found["operators"], *found["kernels"]]
    return [n for n in names if any(s in n.lower() for s in ("flash", "fmha", "efficient_attention", "cudnn"))]


def run(ctx: Context, report: Report, budget: Budget) -> None:
    model = ctx.models("ViT-B-16")[0]
    device, smoke = ctx.device, ctx.smoke
    module, dtype = random_tower(ctx, model)
    blocks = [type(m).__name__ for m in module.modules() if "Attention" in type(m).__name__]
    report.figure(model=model, kind="sdpa flags", dtype=str(dtype), attention_modules=sorted(set(blocks)),
                  count=len(blocks), **flags())
    batch = 4 if smoke else 256
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    found = traced(module, x, device)
    fused = fused_names(found)
    report.figure(model=model, kind="attention trace", **found)
    if device.type == "cuda":
        report.check(f"{model} fp16 forward runs a fused attention kernel", bool(fused),
                     f"fused: {fused[:4] or 'none'}; operators: {list(found['operators'])[:6]}")
    else:
        report.note(f"attention on the CPU runs {list(found['operators'])} (fused CUDA kernels are checked on the GPU)")
    reference: torch.Tensor | None = None
    for backend in BACKENDS:
        if not budget.enough(0.3 if smoke else 5.0):
            report.note(f"backend {backend.name} and the rest skipped: out of time")
            break
        try:
            with sdpa_kernel(backend):
                with torch.inference_mode():
                    out = module(x).float()
                ran = fused_names(traced(module, x, device))
                with torch.inference_mode():
                    value = rate(lambda: module(x), device, images=batch, seconds=0.05 if smoke else 0.3)
        except RuntimeError as exc:  # "No available kernel": this backend cannot take these inputs
            report.figure(model=model, kind="sdpa backend", backend=backend.name, batch=batch, img_per_s=None,
                          error=str(exc).splitlines()[0][:200])
            continue
        reference = out if reference is None else reference
        cos = cosines(out.double().cpu().numpy(), reference.double().cpu().numpy())
        report.figure(model=model, kind="sdpa backend", backend=backend.name, batch=batch, img_per_s=round(value, 1),
                      min_cosine_vs_math=round(float(np.min(cos)), 6), fused_kernels=ran[:3])
    free(device)
