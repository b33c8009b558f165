"""The engine's GPU checks, in parts that each keep to a time budget and write every figure as
it is measured (bench/gpu_check.sh runs each part as its own process under a hard time limit):

  models     memory, fp16 vs fp32 cosine per photo, model-only img/s at batch 64..1024 (ViT-B-32,
             ViT-B-16, ViT-L-14), embed() on prepared images                 bench/gpu_parts/models.py
  attention  which attention kernels run (SDPA flags, profiler trace), img/s per SDPA backend
  compile    ViT-B-32 on a fixed batch bucket: eager vs CUDA graph vs torch.compile
  decode     fast-mode preprocessing in 1/4/8/16 processes, nvJPEG (gpu_decode) at batch 64/256,
             the device path's PSNR against exact mode, what hostile JPEGs do to nvJPEG
  e2e        `python -m worker` end to end (librdkafka mock cluster, gofakes3) with GPU busy %

Rows go to a JSON-lines file as they come (--jsonl); --summarize turns it into one JSON document
and a table, and exits 1 if a check failed or a part did not finish. --cpu-smoke runs every part
here on the CPU with the tiny model and small counts, in one process (the dry run `make test` runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

PARTS = ("models", "attention", "compile", "decode", "e2e")
# Seconds per part on the GPU machine (gpu_check.sh gives each this plus a margin as a hard limit),
# and in the CPU dry run. Together with the wheels' install the GPU run stays under 8 minutes.
GPU_BUDGET = {"models": 115, "attention": 25, "compile": 62, "decode": 56, "e2e": 165}  # e2e: five runs
SMOKE_BUDGET = {"models": 8, "attention": 4, "compile": 6, "decode": 10, "e2e": 120}  # e2e: two pods load first


def run_parts(args: argparse.Namespace) -> int:
    import importlib

    import torch

    from bench.gpu_parts import common

    files = {"models": "models", "attention": "attention", "compile": "compiled", "decode": "decode",
             "e2e": "end_to_end"}
    report = common.Report(args.jsonl)
    extra: dict[str, Any] = {}
    if args.cpu_smoke:
        from harness.models import model_config_dir, register_model_configs

        register_model_configs()
        device, extra = torch.device("cpu"), {"model_config_dir": model_config_dir()}
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        print("no CUDA device: run with --cpu-smoke for the CPU dry run")
        return 2
    corpus = common.load_corpus(args.corpus)
    corpus = corpus[::8] if args.cpu_smoke else corpus
    ctx = common.Context(device=device, smoke=args.cpu_smoke, corpus=corpus, wheels=args.wheels, model_extra=extra)
    report.part = "env"
    # The decode part forks its CPU processes, which is safe only before CUDA is initialised: it reads
    # no device name and creates no context up front (its device runs come after the forks).
    named = device.type == "cuda" and "decode" not in args.parts
    report.figure(kind="env", python=sys.version.split()[0], torch=torch.__version__, cuda=torch.version.cuda,
                  device=str(device), corpus=len(corpus), parts=args.parts,
                  name=torch.cuda.get_device_name(device) if named else str(device))
    report.status("done")
    for name in args.parts:
        budget = common.Budget(args.budget or (SMOKE_BUDGET if args.cpu_smoke else GPU_BUDGET)[name])
        report.part = name
        report.status("started", budget_s=round(budget.seconds))
        began = time.perf_counter()
        try:
            importlib.import_module(f"bench.gpu_parts.{files[name]}").run(ctx, report, budget)
            report.status("done", seconds=round(time.perf_counter() - began, 1))
        except Exception as exc:  # the next part's figures are still worth the device time
            traceback.print_exc()
            report.status(f"error: {type(exc).__name__}: {str(exc)[:300]}", seconds=round(time.perf_counter() - began))
    return 0


def summarize(jsonl: Path, out: Path | None) -> int:
    """One JSON document of the rows, grouped by part; a table; 1 if a check failed or a part did not finish."""
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.is_file() else []
    parts: dict[str, dict[str, Any]] = {}
    for row in rows:
        part = parts.setdefault(row.get("part", "?"), {"status": "not run", "figures": [], "checks": [], "notes": []})
        kind = row.get("kind")
        if kind == "status":
            part["status"], part["seconds"] = row["status"], row.get("seconds")
        elif kind in ("check", "note"):
            part[kind + "s"].append({k: v for k, v in row.items() if k not in ("part", "kind")})
        else:
            part["figures"].append({k: v for k, v in row.items() if k != "part"})
    print("\n# summary")
    for name, part in parts.items():
        print(f"## {name}: {part['status']}" + (f" ({part.get('seconds')} s)" if part.get("seconds") else ""))
        for figure in part["figures"]:
            print("   " + ", ".join(f"{k}={v}" for k, v in figure.items() if k not in ("per_photo", "kind")))
        for item in part["checks"]:
            print(f"   {'PASS' if item['ok'] else 'FAIL'} {item['check']}: {item['detail']}")
        for item in part["notes"]:
            print(f"   note: {item['note']}")
    failed = [c["check"] for p in parts.values() for c in p["checks"] if not c["ok"]]
    unfinished = [n for n in PARTS if n in parts and parts[n]["status"] != "done"]
    document = {"parts": parts, "failed_checks": failed, "unfinished_parts": unfinished}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=1, default=str))
    print(f"# {len(failed)} failed checks, unfinished parts: {unfinished or 'none'}")
    return 0 if rows and not failed and not unfinished else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="every part on the CPU, tiny model, small counts")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--budget", type=float, default=0.0, help="seconds per part (0: the part's default)")
    parser.add_argument("--wheels", type=Path, default=Path(".cache/gpu-wheels"))
    parser.add_argument("--corpus", type=Path, default=None, help="folder of *.jpg (default: WHEELS/corpus)")
    parser.add_argument("--jsonl", type=Path, default=Path("/tmp/gpu-check/gpu_check.jsonl"))
    parser.add_argument("--json", type=Path, default=None, help="the summary document (with --summarize)")
    parser.add_argument("--summarize", action="store_true", help="only summarise --jsonl into --json")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize(args.jsonl, args.json)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    args.corpus = args.corpus or args.wheels / "corpus"
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    status = run_parts(args)
    print(f"# parts {args.parts} ran in {time.perf_counter() - began:.0f} s", flush=True)
    if args.json is not None:  # in one process (the CPU dry run): summarise at once
        return summarize(args.jsonl, args.json) or status
    return status


if __name__ == "__main__":
    raise SystemExit(main())
