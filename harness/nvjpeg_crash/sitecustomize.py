"""A device JPEG decoder that crashes the process, as nvJPEG has on hostile JPEGs (a SIGSEGV in its header
parser: NVIDIA/CUDALibrarySamples#116), for tests/pipeline/test_device_crash.py.

Imported at start-up by every Python process that has this folder on PYTHONPATH, and active only where
CLIP_TEST_DECODER_CRASH_MARK is set: the decoder that the device path calls (torchvision's, reached through
torch.ops.image as worker/engine/gpu_decode.py reaches it) then kills its process with SIGSEGV when it is
handed a JPEG that contains those bytes. Pillow, the CPU path's decoder, reads the same JPEG as any other.
"""

from __future__ import annotations

import os

_MARK = os.environ.get("CLIP_TEST_DECODER_CRASH_MARK", "").encode()

if _MARK:
    import signal
    from typing import Any

    import torch
    import torchvision.io  # noqa: F401  # registers torch.ops.image

    _decode_jpeg = torch.ops.image.decode_jpeg

    def _crashing_decode_jpeg(data: torch.Tensor, *args: Any) -> Any:
        if _MARK in data.numpy().tobytes():
            os.kill(os.getpid(), signal.SIGSEGV)
        return _decode_jpeg(data, *args)

    torch.ops.image.decode_jpeg = _crashing_decode_jpeg
