"""What every part of the GPU check shares: the report (one JSON line per figure, written as measured),
time budgets, the corpus, and the engine's embedder loaded from a fixed seed.

A part may be killed at its time limit (bench/gpu_check.sh runs each under `timeout`), so nothing is
kept for the end: each figure and check is appended to the JSON-lines file the moment it exists.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from worker.config import ModelSettings
from worker.engine import Embedder, PreparedImage

SEED = 0
MB = 1024 * 1024


class Report:
    """Figures, checks and notes of the running part, printed and appended to ``jsonl`` one by one."""

    def __init__(self, jsonl: Path | None) -> None:
        self.jsonl = jsonl
        self.part = "setup"
        self.rows: list[dict[str, Any]] = []

    def _emit(self, row: dict[str, Any]) -> None:
        row = {"part": self.part, **row}
        self.rows.append(row)
        if self.jsonl is not None:
            with self.jsonl.open("a") as out:  # opened per row: a killed part loses nothing written
                out.write(json.dumps(row, default=str) + "\n")

    def figure(self, **row: Any) -> None:
        self._emit({"kind": "figure", **row})
        print("     " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "per_photo"), flush=True)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self._emit({"kind": "check", "check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def note(self, text: str) -> None:
        self._emit({"kind": "note", "note": text})
        print(f"     note: {text}", flush=True)

    def status(self, status: str, **extra: Any) -> None:
        self._emit({"kind": "status", "status": status, **extra})
        print(f"# part {self.part}: {status} {extra or ''}", flush=True)


class Budget:
    """A part's time: loops ask before each step whether enough is left, so a part ends on its own."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def enough(self, seconds: float) -> bool:
        return self.left() >= seconds

    def share(self, parts_left: int) -> Budget:
        """This budget split evenly among what is left to do (at least one share)."""
        return Budget(max(self.left(), 0.0) / max(parts_left, 1))


@dataclass
class Context:
    device: torch.device
    smoke: bool
    corpus: list[tuple[str, bytes]]
    wheels: Path  # the carried folder: gofakes3 is in its bin/
    model_extra: dict[str, Any] = field(default_factory=dict)  # ModelSettings fields (the tiny model's configs)

    def models(self, *names: str) -> list[str]:
        """The real towers on the GPU, the tiny model in the CPU dry run."""
        return ["tiny-vit"] if self.smoke else list(names)


def load_corpus(folder: Path) -> list[tuple[str, bytes]]:
    if folder.is_dir() and any(folder.glob("*.jpg")):
        return [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]
    from harness.photos import photo_corpus  # needs scikit-image: the carried corpus avoids it

    return photo_corpus()


def settings_for(ctx: Context, model: str, *, half: bool, **extra: Any) -> ModelSettings:
    return ModelSettings(model_name=model, pretrained="none", device=str(ctx.device), use_fp16=half,
                         **ctx.model_extra, **extra)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rate(run: Any, device: torch.device, *, images: int, seconds: float, windows: int = 3) -> float:
    """Median images/s of ``run()`` (``images`` per call) over ``windows`` windows of about ``seconds``."""
    run()
    sync(device)
    began = time.perf_counter()
    run()
    sync(device)
    once = max(time.perf_counter() - began, 1e-6)
    calls = max(1, round(seconds / once))
    rates = []
    for _ in range(windows):
        began = time.perf_counter()
        for _ in range(calls):
            run()
        sync(device)
        rates.append(images * calls / (time.perf_counter() - began))
    return float(np.median(rates))


def random_tower(ctx: Any, model: str) -> tuple[torch.nn.Module, torch.dtype]:
    """`model`'s vision tower with seeded random weights on ctx.device, fp16 on CUDA (fp32 on the CPU),
    in eval mode without gradients; and that dtype."""
    device = ctx.device
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    module = open_clip.create_model(model, pretrained=None, device=device, precision="fp32").visual
    return module.to(dtype=dtype).eval().requires_grad_(False), dtype
