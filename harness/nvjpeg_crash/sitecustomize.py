"""A device JPEG decoder that crashes the process, as nvJPEG has on hostile JPEGs (a SIGSEGV in its header
parser: NVIDIA/CUDALibrarySamples#116), for tests/pipeline/test_device_crash.py and the GPU script's
hostile-JPEG check (bench/tests/test_bench_scripts.py).

Imported at start-up by every Python process that has this folder on PYTHONPATH, and active only where
CLIP_TEST_DECODER_CRASH_MARK is set: the decoder that the device path calls (torchvision's, reached through
torch.ops.image as worker/engine/gpu_decode.py reaches it) then kills its process with SIGSEGV when it is
handed a JPEG that contains those bytes. Pillow, the CPU path's decoder, reads the same JPEG as any other.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Callable
from typing import Any


def crashing_decoder(mark: bytes) -> Callable[..., Any]:
    """torch.ops.image.decode_jpeg as it is now, except that a JPEG containing `mark` kills the process."""
    import torch
    import torchvision.io  # noqa: F401  # registers torch.ops.image

    decode_jpeg = torch.ops.image.decode_jpeg

    def decode(data: torch.Tensor, *args: Any) -> Any:
        if mark in data.numpy().tobytes():
            faulthandler.disable()  # a crash on purpose: no traceback dump (pytest's, inherited by a fork)
            os.kill(os.getpid(), signal.SIGSEGV)
        return decode_jpeg(data, *args)

    return decode


_MARK = os.environ.get("CLIP_TEST_DECODER_CRASH_MARK", "").encode()
if _MARK:
    import torch

    torch.ops.image.decode_jpeg = crashing_decoder(_MARK)
