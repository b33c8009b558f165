"""Part of "decode": what the device's JPEG decoder does with hostile JPEGs, the ones the worker hands it.

Why: nvJPEG runs inside the worker's CUDA context, where a crash cannot be contained. The device
journal (worker/images/device/journal.py) turns such a crash into one restart. Whether hostile JPEGs
crash nvJPEG on this driver and torchvision at all decides whether decode=auto can be the default.
Failures known from elsewhere: a SIGSEGV in its Exif parser (NVIDIA/CUDALibrarySamples#116), and an
illegal address that poisons the context for every later call (NVIDIA/nvImageCodec#25).

How: seeded mutations of corpus photos: bytes changed in the header or in the scan, a scan cut short,
a broken Exif segment, other dimensions in the frame header, broken Huffman tables. Only those that
`device_header` accepts are kept, since the rest never reach the device. A child process decodes them
one at a time through `decode_batch`, each followed by a known-good JPEG; a good one that fails means
the context is poisoned. The child reports each outcome as it goes, so a crash names the JPEG behind it.
"""

from __future__ import annotations

import multiprocessing
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch
from open_clip.transform import PreprocessCfg

from bench.gpu_parts.common import Budget, Context, Report, sync
from worker.engine.gpu_decode import decode_batch, device_header

MAX_PIXELS = 64_000_000  # model.max_image_pixels' default: what the worker lets through to the device


def _flip(data: bytes, rng: random.Random, start: int, end: int, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        out[rng.randrange(start, max(start + 1, end))] = rng.randrange(256)
    return bytes(out)


def _segment(marker: int, body: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(body) + 2) + body


def _header_bytes(data: bytes, rng: random.Random) -> bytes:
    return _flip(data, rng, 2, data.find(b"\xff\xda") + 2, rng.randint(1, 4))


def _scan_bytes(data: bytes, rng: random.Random) -> bytes:
    return _flip(data, rng, data.find(b"\xff\xda") + 12, len(data) - 2, rng.randint(1, 64))


def _cut_scan(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(data.find(b"\xff\xda") + 12, len(data) - 2)] + b"\xff\xd9"


def _broken_exif(data: bytes, rng: random.Random) -> bytes:
    ifd = b"II*\x00\x08\x00\x00\x00" + struct.pack("<H", rng.randrange(65536)) + rng.randbytes(rng.randint(0, 240))
    return data[:2] + _segment(0xE1, b"Exif\x00\x00" + ifd) + data[2:]


def _dimensions(data: bytes, rng: random.Random) -> bytes:
    frame = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc1"))
    size = struct.pack(">HH", rng.choice((1, 7, 8, 9, 4095, 7999)), rng.choice((1, 7, 8, 9, 4095, 7999)))
    return data[: frame + 5] + size + data[frame + 9 :]


def _huffman(data: bytes, rng: random.Random) -> bytes:
    table = data.find(b"\xff\xc4")
    if table < 0:  # the standard tables, implied: nothing to break here
        return data
    length = struct.unpack(">H", data[table + 2 : table + 4])[0]
    return _flip(data, rng, table + 4, table + 2 + length, rng.randint(1, 8))


KINDS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "header bytes": _header_bytes, "scan bytes": _scan_bytes, "cut scan": _cut_scan,
    "broken exif": _broken_exif, "dimensions": _dimensions, "huffman tables": _huffman,
}


def hostile_jpegs(blobs: list[bytes], *, per_kind: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(kind, bytes) of the mutations that the device path would take: device_header accepts them."""
    rng = random.Random(seed)
    baseline = [data for data in blobs if device_header(data, max_pixels=MAX_PIXELS) is not None]
    made = [(kind, mutate(rng.choice(baseline), rng)) for kind, mutate in KINDS.items() for _ in range(per_kind)]
    return [(kind, data) for kind, data in made if device_header(data, max_pixels=MAX_PIXELS) is not None]


def _decode_each(conn: Connection, blobs: list[bytes], good: bytes, cfg: PreprocessCfg, device_name: str) -> None:
    """The child: (index, outcome, poisoned) per JPEG, then None; it stops at a poisoned context."""
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool: it would hang
    device = torch.device(device_name)
    for index, data in enumerate(blobs):
        try:
            batch = decode_batch([data], cfg, device=device, max_pixels=MAX_PIXELS)
            sync(device)
            outcome = "decoded" if batch.rows else f"error: {type(batch.errors[0]).__name__}"
        except Exception as exc:  # what the worker's prepare_batch would catch and send to the CPU path
            outcome = f"raised: {type(exc).__name__}"
        try:
            poisoned = not decode_batch([good], cfg, device=device, max_pixels=MAX_PIXELS).rows
            sync(device)
        except Exception:
            poisoned = True
        conn.send((index, outcome, poisoned))
        if poisoned:
            break
    conn.send(None)


def run(ctx: Context, report: Report, budget: Budget, cfg: PreprocessCfg, blobs: list[bytes]) -> None:
    made = hostile_jpegs(blobs, per_kind=6 if ctx.smoke else 30)
    good = next(data for data in blobs if device_header(data, max_pixels=MAX_PIXELS) is not None)
    method = "spawn" if torch.cuda.is_initialized() else "fork"  # a CUDA context does not survive a fork
    mp = multiprocessing.get_context(method)
    receive, send = mp.Pipe(duplex=False)
    child = mp.Process(target=_decode_each, args=(send, [d for _, d in made], good, cfg, str(ctx.device)),
                       daemon=True)
    began = time.perf_counter()
    child.start()
    send.close()
    outcomes: Counter[str] = Counter()
    crashed: dict[str, object] | None = None
    poisoned: dict[str, object] | None = None
    last = -1
    while True:
        if not receive.poll(max(0.0, budget.left() - 1.0)):
            report.note(f"hostile JPEGs: out of time after {last + 1} of {len(made)}")
            break
        try:
            message = receive.recv()
        except EOFError:  # the child died without a word: the JPEG it was on took it down
            child.join(5.0)
            crashed = {"index": last + 1, "kind": made[last + 1][0] if last + 1 < len(made) else None,
                       "exit_code": child.exitcode}
            break
        if message is None:
            break
        last, outcome, bad = message
        outcomes[outcome] += 1
        if bad:
            poisoned = {"index": last, "kind": made[last][0], "outcome": outcome}
    if crashed is None:
        child.kill()  # out of time, or done (then this changes nothing)
    child.join(5.0)
    report.figure(kind="hostile jpegs", decoder="nvJPEG" if ctx.device.type == "cuda" else "libjpeg-turbo (CPU)",
                  to_device=len(made), by_kind=dict(Counter(kind for kind, _ in made)), outcomes=dict(outcomes),
                  crashed=crashed, poisoned=poisoned, seconds=round(time.perf_counter() - began, 1))
    if crashed or poisoned:
        report.note("a hostile JPEG took the device decoder down: without the device journal, a crash loop")
