"""The output record's Avro encoding: fastavro writing the whole record against the worker's encode
(fastavro for the fields around the embedding, the float array from the vector's bytes), by embedding
size, taking turns in one run. CPU µs per record on one thread; the two give the same bytes (tests).

    .venv/bin/python bench/encode_bench.py --dims 32,512,768,1024
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fastavro
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.header import run_header
from worker.formats.encoding import EmbeddingEncoder, embedding_schema
from worker.formats.messages import ImageRequest, S3Uri
from worker.formats.positions import KafkaPosition

FIELD = "image_clip_emb_bench"
REQUEST = ImageRequest(id="m123456", uri=S3Uri("bench", "photos/photo-1024.jpg"), metadata={"camera": "7"})
POSITION = KafkaPosition("images", 3, 1_234_567)


def cpu_per_call(fn: Callable[[], object], *, calls: int, repeats: int) -> float:
    """Median over `repeats` of this thread's CPU seconds per call."""
    fn()
    per_call = []
    for _ in range(repeats):
        began = time.thread_time()
        for _ in range(calls):
            fn()
        per_call.append((time.thread_time() - began) / calls)
    return statistics.median(per_call)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="32,512,768,1024")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    load_start = os.getloadavg()[0]
    encoder = EmbeddingEncoder(field_name=FIELD, model_name="ViT-B-32", pretrained="openai", normalized=True)
    whole = fastavro.parse_schema(embedding_schema(FIELD))
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        vector = np.random.default_rng(dim).standard_normal(dim).astype(np.float32)
        kwargs = {"request": REQUEST, "embedding": vector, "position": POSITION, "sha256": "ab" * 32,
                  "width": 1024, "height": 768}

        def fastavro_whole(kwargs: dict[str, object] = kwargs) -> bytes:
            buffer = io.BytesIO()
            fastavro.schemaless_writer(buffer, whole, encoder.record(**kwargs))  # type: ignore[arg-type]
            return buffer.getvalue()

        def worker_encode(kwargs: dict[str, object] = kwargs) -> bytes:
            return encoder.encode(topic="out", **kwargs)  # type: ignore[arg-type]

        before = cpu_per_call(fastavro_whole, calls=args.calls, repeats=args.repeats)
        after = cpu_per_call(worker_encode, calls=args.calls, repeats=args.repeats)
        rows.append(f"| {dim} | {before * 1e6:.1f} | {after * 1e6:.1f} | {before / after:.1f}x |")
    print("\n".join([
        *run_header("encode_bench.py", (load_start, os.getloadavg()[0])),
        "| dim | fastavro, whole record µs | worker encode µs | faster |", "| ---: | ---: | ---: | ---: |", *rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
