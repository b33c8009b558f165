"""The input message's decode on the main thread: what a faster JSON parser could save.

``decode_request`` (JSON parse, field checks, the S3 URI) runs once per record on the main thread, whose
target is 50 µs per record. This measures it on typical requests, and next to it the JSON parse inside it
with the standard library and with the C parsers a worker could take instead (orjson, msgspec: measured
only where installed; neither is a dependency). CPU µs per message on one thread, taking turns, median
of the repeats.

    .venv/bin/python bench/decode_bench.py
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.encode_bench import cpu_per_call
from bench.header import run_header
from worker.formats.messages import ImageRequest, S3Uri, decode_request, encode_request_json

MESSAGES = {
    "plain": ImageRequest(id="m123456", uri=S3Uri("bench", "photos/photo-1024.jpg"), metadata={}),
    "with metadata": ImageRequest(
        id="img-2026-11-30-000123", uri=S3Uri("bench-images", "raw/2026/11/30/motorcycle-1600px-q85.jpg"),
        metadata={"source": "crawler-7", "license": "cc-by", "caption": "a red motorcycle by a wall"}),
}


def parsers() -> dict[str, Callable[[bytes], object]]:
    found: dict[str, Callable[[bytes], object]] = {"json.loads": json.loads}
    for module, attribute in (("orjson", "loads"), ("msgspec.json", "decode")):
        try:
            found[f"{module}.{attribute}"] = getattr(importlib.import_module(module), attribute)
        except ImportError:
            continue
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    parse = parsers()
    header = "| message | bytes | decode_request µs | " + " | ".join(f"{name} µs" for name in parse) + " |"
    rows = [header, "| --- | ---: | ---: | " + " | ".join("---:" for _ in parse) + " |"]
    for label, request in MESSAGES.items():
        value = encode_request_json(request)
        whole = cpu_per_call(lambda value=value: decode_request(value), calls=args.calls, repeats=args.repeats)
        parts = [cpu_per_call(lambda fn=fn, value=value: fn(value), calls=args.calls, repeats=args.repeats)
                 for fn in parse.values()]
        cells = [label, str(len(value)), *(f"{seconds * 1e6:.2f}" for seconds in (whole, *parts))]
        rows.append("| " + " | ".join(cells) + " |")
    print("\n".join([*run_header("decode_bench.py", (load_start, os.getloadavg()[0])), *rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
