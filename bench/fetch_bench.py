"""CPU per S3 GET and GET/s: boto3's get_object next to the worker's signed GET (worker/s3/get.py), in one run.

Why: with boto3 the fetch threads cost ~0.5-1 ms of pure Python per object under the GIL, most of
it botocore's. Both paths fetch the same photos (harness.photos at 1024 px, ~190 KB each) from s3proxy
(harness/s3proxy.py: moto would cost more CPU than either client) with 1, 2 and 4 threads:
- boto3: ``client.get_object`` and the body read a socket read at a time, as S3Reader did before;
- signed: ``S3Reader.fetch``, the worker's path (allowlist, retry loop, a GET signed by botocore and sent
  by libcurl).
CPU per GET is this process's CPU time (all its threads; s3proxy is another process) over the GETs.
The paths take turns, in alternating order, for every thread count and repeat, so that drift on a
shared box hits both alike; each figure is the median over the repeats. First, both paths fetch keys
with characters that need quoting: s3proxy checks SigV4 signatures, so a wrong one fails here.

Last, what each benchmark S3 server costs the box per GET (its process tree's CPU), serving the
worker's signed GETs from two threads, s3proxy and gofakes3 (harness/gofakes3.py) taking turns: on a
2-core box the server's CPU is taken from the worker, so the benchmarks of the worker's CPU use the
cheaper one.

    .venv/bin/python bench/fetch_bench.py --gets 480 --repeats 5 --threads 1,2,4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run as a script

from bench.cpu_bench import S3_SERVERS
from bench.header import run_header
from harness.cpu_time import tree_cpu
from harness.photos import photo_corpus
from harness.s3_process import S3Process
from harness.s3_server import REGION, fill_bucket
from harness.s3proxy import S3Proxy
from worker.config import S3Settings
from worker.formats.messages import S3Uri
from worker.s3.reader import S3Reader, make_s3_client

BUCKET = "fetch-bench"
LONG_SIDE = 1024
ODD_KEYS = ("odd/a b+c%d~e.jpg", "odd/ünï cödé/(1)!*'.jpg", "odd/x=y&z;@$,.jpg")
Get = Callable[[str], bytes]


def boto3_get(client: Any) -> Get:
    """get_object and a read1 loop over the body: what S3Reader._get did before the signed GET."""

    def get(key: str) -> bytes:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        chunks = []
        try:
            while chunk := body._raw_stream.read1(1 << 20):
                chunks.append(chunk)
        finally:
            body.close()
        return b"".join(chunks)

    return get


def signed_get(source: S3Reader) -> Get:
    return lambda key: source.fetch(S3Uri(BUCKET, key))[0]


def measure(get: Get, keys: list[str], *, gets: int, threads: int) -> tuple[float, float]:
    """(CPU seconds per GET, GETs per second) for ``gets`` GETs spread over ``threads`` threads."""
    share = gets // threads
    start = threading.Barrier(threads + 1)

    def run(offset: int) -> None:
        start.wait()
        for i in range(share):
            get(keys[(offset + i) % len(keys)])

    pool = [threading.Thread(target=run, args=(n * 7,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    cpu, wall = time.process_time(), time.perf_counter()
    start.wait()
    for thread in pool:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu / (share * threads), share * threads / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gets", type=int, default=480, help="GETs per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per path and thread count")
    parser.add_argument("--threads", default="1,2,4", help="comma-separated thread counts")
    args = parser.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]
    load_start = os.getloadavg()[0]
    photos = photo_corpus(long_sides=(LONG_SIDE,))
    keys = [name for name, _ in photos]
    with S3Proxy() as proxy:
        os.environ.update(proxy.env())  # the standard chain finds s3proxy's keys, as the worker would
        fill_bucket(proxy, BUCKET, [*photos, *((key, key.encode()) for key in ODD_KEYS)])
        settings = S3Settings(endpoint_url=proxy.endpoint_url, region=REGION, fetch_workers=max(counts),
                              allowed_sources=(BUCKET,))
        client = make_s3_client(settings)
        paths = {"boto3": boto3_get(client), "signed": signed_get(S3Reader(client=client, settings=settings))}
        for name, get in paths.items():
            for key in ODD_KEYS:  # s3proxy verifies the signature: a wrongly signed key fails here
                if get(key) != key.encode():
                    raise SystemExit(f"{name} read the wrong bytes for {key!r}")
            measure(get, keys, gets=args.gets, threads=max(counts))  # warm-up: connections, s3proxy's JIT
        figures: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for repeat in range(args.repeats):
            for threads in counts:
                order = list(paths) if repeat % 2 == 0 else list(reversed(paths))
                for name in order:
                    figures.setdefault((name, threads), []).append(
                        measure(paths[name], keys, gets=args.gets, threads=threads))
            print(f"# repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        client.close()
    servers = server_costs(photos, gets=args.gets, repeats=args.repeats)
    mean_size = statistics.mean(len(data) for _, data in photos)
    print(report(args, figures, counts, mean_size, (load_start, os.getloadavg()[0])))
    print("\nThe S3 servers, serving the signed GETs from two threads (medians of the repeats):\n")
    print("| server | server CPU µs/GET | GET/s |\n| --- | ---: | ---: |")
    for name, (cpu, rate) in servers.items():
        print(f"| {name} | {cpu * 1e6:.0f} | {rate:.0f} |")
    return 0


def server_costs(photos: list[tuple[str, bytes]], *, gets: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(CPU seconds per GET of the server's process tree, GET/s) of each benchmark S3 server, median of
    `repeats` measurements each, the servers taking turns."""
    servers: dict[str, S3Process] = {name: make() for name, make in S3_SERVERS.items()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    keys = [name for name, _ in photos]
    gets_of: dict[str, Get] = {}
    try:
        for name, server in servers.items():
            server.start()
            fill_bucket(server, BUCKET, photos)
            settings = S3Settings(endpoint_url=server.endpoint_url, region=REGION, allowed_sources=(BUCKET,))
            gets_of[name] = signed_get(S3Reader(client=make_s3_client(settings), settings=settings))
            measure(gets_of[name], keys, gets=gets, threads=2)  # warm-up: connections, s3proxy's JIT
        for _ in range(repeats):
            for name, server in servers.items():
                assert server.pid is not None
                before = tree_cpu(server.pid)
                _, rate = measure(gets_of[name], keys, gets=gets, threads=2)
                figures[name].append(((tree_cpu(server.pid) - before) / gets, rate))
    finally:
        for server in servers.values():
            server.stop()
    return {name: (statistics.median(c for c, _ in runs), statistics.median(r for _, r in runs))
            for name, runs in figures.items()}


def report(args: argparse.Namespace, figures: dict[tuple[str, int], list[tuple[float, float]]],
           counts: list[int], mean_size: float, loads: tuple[float, float]) -> str:
    cpu = {k: statistics.median(c for c, _ in v) for k, v in figures.items()}
    rate = {k: statistics.median(r for _, r in v) for k, v in figures.items()}
    lines = [
        *run_header("fetch_bench.py", loads),
        f"{args.gets} GETs per measurement of {len(set(k for k in figures))} path/thread pairs, median of "
        f"{args.repeats}; objects {mean_size / 1e3:.0f} KB on average, from s3proxy on the same box.",
        "",
        "| threads | boto3 CPU µs/GET | signed CPU µs/GET | CPU saved | boto3 GET/s | signed GET/s | GET/s ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in counts:
        b, s = ("boto3", n), ("signed", n)
        lines.append(f"| {n} | {cpu[b] * 1e6:.0f} | {cpu[s] * 1e6:.0f} | {1 - cpu[s] / cpu[b]:.0%} "
                     f"| {rate[b]:.0f} | {rate[s]:.0f} | {rate[s] / rate[b]:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
